"""Image folders: one sub-folder per class, any format Pillow reads.

Layouts: ``PATH/<class>/<image>`` (split here, 20% of each class to test) or
``PATH/train/<class>/...`` plus ``PATH/test/<class>/...`` (used as given).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ffedge.datasets.base import Dataset
from ffedge.errors import FFEdgeError

TEST_FRACTION = 0.2
SPLIT_SEED = 0
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _is_image_name(path: Path) -> bool:
    """True for non-hidden files whose extension Pillow knows (skips README.txt, .DS_Store...)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in Image.registered_extensions()


def _subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files, for each class sub-folder of ``root``."""
    classes = {d.name: sorted((p for p in d.iterdir() if _is_image_name(p)), key=lambda p: p.name) for d in _subdirs(root)}
    for name, files in classes.items():
        if not files:
            raise FFEdgeError(f"folder: class folder {root / name} has no images")
    return classes


def _first_mode(path: Path) -> str:
    """'L' if the first image is grayscale, else 'RGB': every image is converted to it. Reads the header only."""
    with _open(path) as im:
        gray = im.mode in _GRAY_MODES or (im.mode == "P" and _palette_is_gray(im))
    return "L" if gray else "RGB"


def _palette_is_gray(im: Image.Image) -> bool:
    rgb = np.asarray(im.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise FFEdgeError(f"cannot read image {path}: {e}") from e


def load_images(paths: list[Path], size: tuple[int, int] | None = None, mode: str | None = None) -> np.ndarray:
    """Read image files into uint8 NHWC.

    ``size`` (H, W) resizes (bilinear); without it all images must share the first
    one's size. ``mode`` 'L' or 'RGB'; by default the first image's mode ('L' if it is
    grayscale, else 'RGB').
    EXIF orientation is applied.
    """
    if not paths:
        raise FFEdgeError("no images to load")
    mode = mode or _first_mode(paths[0])
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    out: np.ndarray | None = None
    first: Path = paths[0]
    for i, p in enumerate(paths):
        try:
            with _open(p) as im:
                img = ImageOps.exif_transpose(im).convert(mode)
        except FFEdgeError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise FFEdgeError(f"cannot read image {p}: {e}") from e
        if size is not None:
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        if out is None:
            out = np.empty((len(paths), img.height, img.width, 1 if mode == "L" else 3), dtype=np.uint8)
        elif (img.height, img.width) != out.shape[1:3]:
            raise FFEdgeError(
                f"folder: {p} is {img.height}x{img.width} but {first} is {out.shape[1]}x{out.shape[2]} (HxW): "
                f"pass an image size to resize all images"
            )
        out[i] = np.asarray(img).reshape(out.shape[1:])
    assert out is not None
    return out


def _split_class(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test positions within one class; depends only on the class name and size."""
    rng = np.random.default_rng([SPLIT_SEED, zlib.crc32(name.encode("utf-8"))])
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * TEST_FRACTION))) if n >= 2 else 0
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _flatten(classes: list[str], files: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
    paths = [p for c in classes for p in files.get(c, [])]
    labels = np.array([i for i, c in enumerate(classes) for _ in files.get(c, [])], dtype=np.int64)
    return paths, labels


def load_folder(root: Path, image_size: tuple[int, int] | None = None) -> Dataset:
    """Load an image-folder dataset (see the module docstring for layouts)."""
    if not root.is_dir():
        raise FFEdgeError(f"folder: {root} is not a directory")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        have, lack = ("train", "test") if train_dir.is_dir() else ("test", "train")
        raise FFEdgeError(
            f"folder: {root} has {have}/ but no {lack}/: add {lack}/<class>/ images, "
            f"or put the class folders directly in {root} to have 20% of each class split off for testing"
        )
    if train_dir.is_dir() and test_dir.is_dir():
        train_files, test_files = _class_files(train_dir), _class_files(test_dir)
        extra = sorted(set(test_files) - set(train_files))
        if extra:
            raise FFEdgeError(f"folder: {test_dir} has classes not in {train_dir}: {', '.join(extra)}")
    else:
        all_files = _class_files(root)
        train_files, test_files = {}, {}
        for name, files in all_files.items():
            tr, te = _split_class(name, len(files))
            train_files[name] = [files[i] for i in tr]
            test_files[name] = [files[i] for i in te]
        train_dir = root
    classes = sorted(train_files)
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise FFEdgeError(f"folder: {train_dir} needs at least 2 class sub-folders (one per class), found {found}")
    train_paths, y_train = _flatten(classes, train_files)
    test_paths, y_test = _flatten(classes, test_files)
    # One call for both splits: one colour mode, one size rule, one size check.
    x_all = load_images(train_paths + test_paths, image_size)
    n = len(train_paths)
    return Dataset(f"folder:{root}", x_all[:n], y_train, x_all[n:], y_test, classes)
