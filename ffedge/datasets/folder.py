"""Image folders: one sub-folder per class of PNG/JPEG/GIF/TIFF/BMP/WebP/PPM images (see ``images``).

Layouts: ``PATH/<class>/<image>`` (split here, 20% of each class to test) or
``PATH/train/<class>/...`` plus ``PATH/test/<class>/...`` (used as given).
"""

from __future__ import annotations

import stat
import zlib
from pathlib import Path

import numpy as np

from ffedge.datasets.base import Dataset
from ffedge.datasets.images import image_extensions, load_images
from ffedge.datasets.registry import register_path_kind
from ffedge.errors import FFEdgeError

__all__ = ["TEST_FRACTION", "SPLIT_SEED", "load_folder", "load_images"]

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _is_image_name(path: Path, extensions: set[str]) -> bool:
    """True for non-hidden regular files of a format read (skips README.txt, .DS_Store, sub-folders...).

    An entry with an image name that is a pipe, socket or device is refused (reading it could hang).
    """
    if path.name.startswith(".") or path.suffix.lower() not in extensions:
        return False
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise FFEdgeError(f"folder: cannot read {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        return False
    if not stat.S_ISREG(mode):
        raise FFEdgeError(f"folder: {path} is not a regular file (a pipe, socket or device): remove it")
    return True


def _entries(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir(), key=lambda p: p.name)
    except OSError as e:
        raise FFEdgeError(f"folder: cannot list {path}: {e.strerror or e}") from None


def _subdirs(path: Path) -> list[Path]:
    return [p for p in _entries(path) if p.is_dir() and not p.name.startswith(".")]


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files, for each class sub-folder of ``root``."""
    ext = image_extensions()
    classes = {d.name: [p for p in _entries(d) if _is_image_name(p, ext)] for d in _subdirs(root)}
    for name, files in classes.items():
        if not files:
            raise FFEdgeError(f"folder: class folder {root / name} has no images")
    return classes


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


register_path_kind("folder:", load_folder, note="one sub-folder of images per class")
