"""Datasets stored as .npz: x_train, y_train, x_test, y_test, optional class_names.

Images are uint8 NHW or NHWC (C = 1 or 3). Labels: any integer dtype, values
0..K-1; without class_names every value up to the largest must occur for training
(a set with gaps such as {0, 200} is refused there: it would silently make 201
classes; scoring or fine-tuning a bundle on a subset of its classes is fine), with
class_names (K names) they must lie in 0..K-1. Read by
:class:`~ffedge.untrusted.NpzArchive`: sizes bounded before allocating, CRCs
checked, object arrays refused (never unpickled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ffedge.datasets.base import Dataset, as_labels, as_nhwc, resized
from ffedge.untrusted import NpzArchive
from ffedge.datasets.registry import register_path_kind
from ffedge.errors import FFEdgeError

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _check_images(x: np.ndarray, key: str, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise FFEdgeError(
            f"{where}: {key} must be uint8 (0..255), got {x.dtype}: scale and cast it with .astype(np.uint8)"
        )
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise FFEdgeError(f"{where}: {key} must be NHW or NHWC with C = 1 or 3, got shape {x.shape}")
    return np.ascontiguousarray(as_nhwc(x))


def _check_labels(y: np.ndarray, key: str, n: int, where: str) -> np.ndarray:
    """Integer labels, one per image, none negative (still in their stored dtype)."""
    if y.dtype.kind not in "iu":
        raise FFEdgeError(f"{where}: {key} must hold integer labels 0..K-1, got {y.dtype}")
    if y.ndim != 1:
        raise FFEdgeError(f"{where}: {key} must be 1-D, got shape {y.shape}")
    if y.shape[0] != n:
        raise FFEdgeError(f"{where}: {key} has {y.shape[0]} labels but x_{key[2:]} has {n} images")
    if y.size and int(y.min()) < 0:
        raise FFEdgeError(f"{where}: {key} has negative label {int(y.min())}")
    return y


def _shown(labels: np.ndarray, limit: int = 6) -> str:
    """A sorted label set for a message: its first values and its largest."""
    items = [str(int(v)) for v in labels[:limit]]
    if labels.size > limit:
        items[-1:] = ["...", str(int(labels[-1]))]
    return "{" + ", ".join(items) + "}"


MAX_IMPLIED_CLASSES = 100_000


def _gaps(used: np.ndarray, where: str) -> str | None:
    """Without class_names: why labels with gaps would make a wrong class count (None when 0..K-1 all occur)."""
    top = int(used[-1]) if used.size else -1
    if used.size == top + 1:
        return None
    return (
        f"{where}: labels {_shown(used)} are {used.size} distinct values but go up to {top}, which would make "
        f"{top + 1} classes: number the classes 0..{used.size - 1}, or store class_names ({top + 1} names) if the gaps are meant"
    )


def _class_names(npz: NpzArchive, used: np.ndarray, where: str) -> list[str]:
    """Class names: the stored class_names (covering every label), else 0..max label."""
    top = int(used[-1]) if used.size else -1
    if "class_names" not in npz:
        gaps = _gaps(used, where)
        if gaps and top >= MAX_IMPLIED_CLASSES:  # far too many classes to even list
            raise FFEdgeError(gaps)
        return [str(i) for i in range(top + 1)]
    names = npz.array("class_names")
    if names.dtype.kind not in "US" or names.ndim != 1:
        raise FFEdgeError(f"{where}: class_names must be a 1-D string array, got {names.dtype} {names.shape}")
    out = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    if top >= len(out):
        raise FFEdgeError(
            f"{where}: class_names has {len(out)} names but labels go up to {top} (labels must be 0..{len(out) - 1})"
        )
    return out


def load_npz(path: Path) -> Dataset:
    """Load and validate a .npz dataset file."""
    where = str(path)
    if not path.exists():
        raise FFEdgeError(f"npz: {path} does not exist")
    with NpzArchive(path) as npz:
        missing = [k for k in REQUIRED_KEYS if k not in npz]
        if missing:
            raise FFEdgeError(
                f"{where}: missing key(s) {', '.join(missing)} (has: {', '.join(npz.files) or 'nothing'})"
            )
        x_tr = _check_images(npz.array("x_train"), "x_train", where)
        x_te = _check_images(npz.array("x_test"), "x_test", where)
        for key, x in (("x_train", x_tr), ("x_test", x_te)):
            if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] == 0:
                raise FFEdgeError(f"{where}: {key} is empty (shape {x.shape}): it needs at least one image")
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise FFEdgeError(
                f"{where}: x_train images are {x_tr.shape[1:]} but x_test images are {x_te.shape[1:]} (HWC)"
            )
        y_tr = _check_labels(npz.array("y_train"), "y_train", len(x_tr), where)
        y_te = _check_labels(npz.array("y_test"), "y_test", len(x_te), where)
        used = np.union1d(y_tr.astype(np.uint64), y_te.astype(np.uint64))
        classes = _class_names(npz, used, where)
        gaps = None if "class_names" in npz else _gaps(used, where)
    if len(classes) < 2:
        raise FFEdgeError(f"{where}: needs at least 2 classes, found {len(classes)}")
    return Dataset(f"npz:{path}", x_tr, as_labels(y_tr), x_te, as_labels(y_te), classes, label_gaps=gaps)


register_path_kind(
    "npz:", lambda path, image_size: resized(load_npz(path), image_size), note="x_train, y_train, x_test, y_test"
)
