"""Dataset loaders for the device side (numpy + pillow only, never torch).

``load_dataset(spec)`` returns a :class:`Dataset` of uint8 NHWC images:

- ``mnist-5k``: embedded in the package (the offline default);
- ``mnist``, ``fashion-mnist``: gzipped IDX files in ``DATA_DIR/<name>/``;
- ``cifar10``, ``cifar100``: the official binary tarballs in ``DATA_DIR/<name>/``;
- ``folder:PATH``: one sub-folder of images per class;
- ``npz:PATH``: arrays x_train, y_train, x_test, y_test (+ optional class_names).

Standard datasets are checked against their published md5s and downloaded
from the canonical sources when missing (if allowed). Every file is read as
untrusted input: regular files only, images up to ``MAX_IMAGE_PIXELS``, arrays
up to ``MAX_ARRAY_BYTES`` checked before allocating, any damage one FFEdgeError.
"""

from __future__ import annotations

import os
from pathlib import Path

from ffedge.datasets.base import Dataset, resize_images
from ffedge.datasets.cifar import load_cifar
from ffedge.datasets.embedded import load_mnist_5k
from ffedge.datasets.files import MAX_ARRAY_BYTES
from ffedge.datasets.folder import load_folder, load_images
from ffedge.datasets.idx import load_idx_dataset
from ffedge.datasets.images import MAX_IMAGE_PIXELS
from ffedge.datasets.npzfile import load_npz
from ffedge.errors import FFEdgeError

__all__ = [
    "Dataset", "DATASET_NAMES", "DATASET_PREFIXES", "MAX_ARRAY_BYTES", "MAX_IMAGE_PIXELS",
    "default_data_dir", "load_dataset", "load_images",
]

DATASET_NAMES: tuple[str, ...] = ("mnist-5k", "mnist", "fashion-mnist", "cifar10", "cifar100")
DATASET_PREFIXES: tuple[str, ...] = ("folder:", "npz:")


def default_data_dir() -> Path:
    """Where standard datasets live: $FFEDGE_DATA, else the user cache dir (~/.cache/ffedge/data)."""
    env = os.environ.get("FFEDGE_DATA", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "ffedge" / "data"
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "ffedge" / "data"
    return Path.home() / ".cache" / "ffedge" / "data"


def _valid_specs() -> str:
    return ", ".join((*DATASET_NAMES, *(p + "PATH" for p in DATASET_PREFIXES)))


def _parse_size(image_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise FFEdgeError(f"image size must be two integers (H, W), got {image_size!r}") from None
    if h < 1 or w < 1:
        raise FFEdgeError(f"image size must be positive, got {h}x{w}")
    return h, w


def _resized(ds: Dataset, size: tuple[int, int] | None) -> Dataset:
    if size is None or ds.x_train.shape[1:3] == size:
        return ds
    return Dataset(ds.name, resize_images(ds.x_train, size), ds.y_train, resize_images(ds.x_test, size), ds.y_test, ds.classes)


def load_dataset(
    spec: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    image_size: tuple[int, int] | None = None,
) -> Dataset:
    """Load a dataset by name or ``folder:PATH`` / ``npz:PATH``.

    ``data_dir`` (default :func:`default_data_dir`) holds one sub-folder per
    standard dataset. ``download`` allows fetching missing files. ``image_size``
    (H, W) resizes the images (for folders: the size all images are brought to).
    """
    size = _parse_size(image_size)
    text = str(spec).strip()
    for prefix in DATASET_PREFIXES:
        if text.lower().startswith(prefix):
            rest = text[len(prefix):].strip()
            if not rest:
                raise FFEdgeError(f"dataset {text!r}: give a path after {prefix!r}, e.g. {prefix}./my_data")
            path = Path(rest).expanduser()
            if prefix == "folder:":
                return load_folder(path, size)
            return _resized(load_npz(path), size)
    name = text.lower().replace("_", "-")
    if name not in DATASET_NAMES:
        raise FFEdgeError(f"unknown dataset {text!r}: choose one of {_valid_specs()}")
    if name == "mnist-5k":
        return _resized(load_mnist_5k(), size)
    root = Path(data_dir).expanduser() if data_dir not in (None, "") else default_data_dir()
    if name in ("mnist", "fashion-mnist"):
        ds = load_idx_dataset(name, root / name, download)
    else:
        ds = load_cifar(name, root / name, download)
    return _resized(ds, size)
