"""Datasets stored as .npz: x_train, y_train, x_test, y_test, optional class_names.

Images are uint8 NHW or NHWC (C = 1 or 3); labels any integer dtype. Loaded
with ``allow_pickle=False``: object arrays are refused, never unpickled.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ffedge.datasets.base import Dataset, as_labels, as_nhwc
from ffedge.errors import FFEdgeError

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _get(npz: np.lib.npyio.NpzFile, key: str, where: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as e:  # object arrays need pickle
        raise FFEdgeError(f"{where}: array {key!r} is an object array (needs pickle, refused): store plain arrays") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise FFEdgeError(f"{where}: cannot read array {key!r}: {e}") from e


def _check_images(x: np.ndarray, key: str, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise FFEdgeError(f"{where}: {key} must be uint8 (0..255), got {x.dtype}: scale and cast it with .astype(np.uint8)")
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise FFEdgeError(f"{where}: {key} must be NHW or NHWC with C = 1 or 3, got shape {x.shape}")
    return np.ascontiguousarray(as_nhwc(x))


def _check_labels(y: np.ndarray, key: str, n: int, where: str) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise FFEdgeError(f"{where}: {key} must hold integer labels, got {y.dtype}")
    if y.ndim != 1:
        raise FFEdgeError(f"{where}: {key} must be 1-D, got shape {y.shape}")
    if y.shape[0] != n:
        raise FFEdgeError(f"{where}: {key} has {y.shape[0]} labels but x_{key[2:]} has {n} images")
    if y.size and int(y.min()) < 0:
        raise FFEdgeError(f"{where}: {key} has negative label {int(y.min())}")
    return as_labels(y)


def _class_names(npz: np.lib.npyio.NpzFile, num_labels: int, where: str) -> list[str]:
    if "class_names" not in npz.files:
        return [str(i) for i in range(num_labels)]
    names = _get(npz, "class_names", where)
    if names.dtype.kind not in "US" or names.ndim != 1:
        raise FFEdgeError(f"{where}: class_names must be a 1-D string array, got {names.dtype} {names.shape}")
    out = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if len(out) < num_labels:
        raise FFEdgeError(f"{where}: class_names has {len(out)} names but labels go up to {num_labels - 1}")
    return out


def load_npz(path: Path) -> Dataset:
    """Load and validate a .npz dataset file."""
    where = str(path)
    if not path.is_file():
        raise FFEdgeError(f"npz: {path} does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FFEdgeError(f"npz: cannot read {path} as a .npz file: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise FFEdgeError(f"npz: {path} is a single .npy array, expected a .npz with keys {', '.join(REQUIRED_KEYS)}")
    with npz:
        missing = [k for k in REQUIRED_KEYS if k not in npz.files]
        if missing:
            raise FFEdgeError(f"{where}: missing key(s) {', '.join(missing)} (has: {', '.join(npz.files) or 'nothing'})")
        x_tr = _check_images(_get(npz, "x_train", where), "x_train", where)
        x_te = _check_images(_get(npz, "x_test", where), "x_test", where)
        for key, x in (("x_train", x_tr), ("x_test", x_te)):
            if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
                raise FFEdgeError(f"{where}: {key} is empty (shape {x.shape}): it needs at least one image")
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise FFEdgeError(f"{where}: x_train images are {x_tr.shape[1:]} but x_test images are {x_te.shape[1:]} (HWC)")
        y_tr = _check_labels(_get(npz, "y_train", where), "y_train", len(x_tr), where)
        y_te = _check_labels(_get(npz, "y_test", where), "y_test", len(x_te), where)
        top = max([int(y.max()) for y in (y_tr, y_te) if y.size], default=-1)
        classes = _class_names(npz, top + 1, where)
    if len(classes) < 2:
        raise FFEdgeError(f"{where}: needs at least 2 classes, found {len(classes)}")
    return Dataset(f"npz:{path}", x_tr, y_tr, x_te, y_te, classes)
