"""Dataset loaders for the device side (numpy + pillow only, never torch).

``load_dataset(spec)`` returns a :class:`Dataset` of uint8 NHWC images:

- ``mnist-5k``: embedded in the package (the offline default);
- ``mnist``, ``fashion-mnist``: gzipped IDX files in ``DATA_DIR/<name>/``;
- ``cifar10``, ``cifar100``: the official binary tarballs in ``DATA_DIR/<name>/``;
- ``folder:PATH``: one sub-folder of images per class;
- ``npz:PATH``: arrays x_train, y_train, x_test, y_test (+ optional class_names).

Each loader module registers the names or the path prefix it loads
(:mod:`ffedge.datasets.registry`); ``DATASET_NAMES``, the error messages and the
CLI help are read from there.

Standard datasets are checked against their published md5s and downloaded
from the canonical sources when missing (if allowed). Every file is read as
untrusted input: regular files only, images up to ``MAX_IMAGE_PIXELS``, arrays
up to ``MAX_ARRAY_BYTES`` checked before allocating, any damage one FFEdgeError.
"""

from __future__ import annotations

import os
from pathlib import Path

from ffedge.datasets.base import Dataset, resized
from ffedge.untrusted import MAX_ARRAY_BYTES
from ffedge.datasets.images import MAX_IMAGE_PIXELS
from ffedge.datasets.registry import dataset_choices, dataset_names, dataset_prefixes, named_dataset, path_kind
from ffedge.errors import FFEdgeError

# The loader modules register their datasets on import, in this order (the order names are listed in).
from ffedge.datasets import embedded, idx, cifar, folder, npzfile  # noqa: E402,F401,I001
from ffedge.datasets.folder import load_images  # noqa: E402

__all__ = [
    "Dataset",
    "DATASET_NAMES",
    "DATASET_PREFIXES",
    "MAX_ARRAY_BYTES",
    "MAX_IMAGE_PIXELS",
    "dataset_choices",
    "default_data_dir",
    "load_dataset",
    "load_images",
]

DATASET_NAMES: tuple[str, ...] = dataset_names()
DATASET_PREFIXES: tuple[str, ...] = dataset_prefixes()


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


def load_dataset(
    spec: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    image_size: tuple[int, int] | None = None,
) -> Dataset:
    """Load a dataset by name or ``folder:PATH`` / ``npz:PATH`` (the kinds of :mod:`ffedge.datasets.registry`).

    ``data_dir`` (default :func:`default_data_dir`) holds one sub-folder per
    standard dataset. ``download`` allows fetching missing files. ``image_size``
    (H, W) resizes the images (for folders: the size all images are brought to).
    """
    size = _parse_size(image_size)
    text = str(spec).strip()
    kind = path_kind(text)
    if kind is not None:
        rest = text[len(kind.prefix) :].strip()
        if not rest:
            raise FFEdgeError(f"dataset {text!r}: give a path after {kind.prefix!r}, e.g. {kind.prefix}./my_data")
        return kind.load(Path(rest).expanduser(), size)
    name = text.lower().replace("_", "-")
    entry = named_dataset(name)
    if entry is None:
        raise FFEdgeError(f"unknown dataset {text!r}: choose one of {', '.join(dataset_choices())}")
    directory = None
    if entry.stored:
        directory = (Path(data_dir).expanduser() if data_dir not in (None, "") else default_data_dir()) / name
    return resized(entry.load(name, directory, download), size)
