"""MNIST and Fashion-MNIST: a strict reader for gzipped IDX files.

IDX layout: two zero bytes, a type byte (0x08 = unsigned byte), the number of
dimensions, then each dimension as a big-endian uint32, then the raw data.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ffedge.datasets.base import Dataset, as_labels, as_nhwc
from ffedge.untrusted import DECODE_ERRORS, MAX_ARRAY_BYTES, open_regular, read_upto, reason
from ffedge.datasets.registry import register_dataset
from ffedge.datasets.remote import ensure_files
from ffedge.errors import FFEdgeError

_UBYTE = 0x08

CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}

# (images file, labels file) for each split, as published.
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(f: BinaryIO, where: str) -> np.ndarray:
    """Decode an uncompressed IDX stream of unsigned bytes; the size the header declares is bounded first."""
    head = read_upto(f, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise FFEdgeError(f"{where}: not an IDX file (bad magic number)")
    if head[2] != _UBYTE:
        raise FFEdgeError(f"{where}: IDX data type 0x{head[2]:02x} is not supported (expected 0x08, unsigned byte)")
    ndim = head[3]
    raw_dims = read_upto(f, 4 * ndim)
    if ndim == 0 or len(raw_dims) < 4 * ndim:
        raise FFEdgeError(f"{where}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    header, size = 4 + 4 * ndim, int(np.prod(dims, dtype=object))
    if size > MAX_ARRAY_BYTES:
        raise FFEdgeError(f"{where}: IDX header says {dims} ({size:,} bytes), above the {MAX_ARRAY_BYTES:,}-byte limit")
    data = read_upto(f, size)
    if len(data) != size or f.read(1):
        have = f"{header + len(data)}" if len(data) != size else f"more than {header + size}"
        raise FFEdgeError(f"{where}: IDX header says {dims} ({header + size} bytes) but the file has {have} bytes")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """Decode an uncompressed IDX byte string holding unsigned bytes; ``where`` names it in errors."""
    return _read_idx(io.BytesIO(data), where)


def read_idx_gz(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (regular files only); a corrupt or truncated file raises FFEdgeError naming it."""
    with open_regular(path) as raw:
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _read_idx(f, str(path))
        except DECODE_ERRORS as e:
            raise FFEdgeError(
                f"cannot read {path}: corrupt or truncated gzip ({reason(e)}); delete it and download it again"
            ) from None


def read_idx_split(images_path: Path, labels_path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHW1) and labels (int64) of one split, cross-checked."""
    x = read_idx_gz(images_path)
    y = read_idx_gz(labels_path)
    if x.ndim != 3:
        raise FFEdgeError(f"{images_path}: expected 3 IDX dimensions (count, rows, cols), got {x.shape}")
    if y.ndim != 1:
        raise FFEdgeError(f"{labels_path}: expected 1 IDX dimension (count), got {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise FFEdgeError(f"{images_path} has {x.shape[0]} images but {labels_path} has {y.shape[0]} labels")
    if y.size and int(y.max()) >= num_classes:
        raise FFEdgeError(f"{labels_path}: label {int(y.max())} out of range 0..{num_classes - 1}")
    return as_nhwc(x), as_labels(y)


def load_idx_dataset(name: str, directory: Path, download: bool) -> Dataset:
    """Load ``mnist`` or ``fashion-mnist`` from ``directory`` (verified, downloaded if allowed)."""
    paths = ensure_files(name, directory, download)
    classes = CLASSES[name]
    x_tr, y_tr = read_idx_split(*(paths[f] for f in FILES["train"]), num_classes=len(classes))
    x_te, y_te = read_idx_split(*(paths[f] for f in FILES["test"]), num_classes=len(classes))
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise FFEdgeError(f"{name}: train images are {x_tr.shape[1:3]} but test images are {x_te.shape[1:3]}")
    return Dataset(name, x_tr, y_tr, x_te, y_te, list(classes))


for _name in CLASSES:
    register_dataset(_name, load_idx_dataset)
del _name
