"""``mnist-5k``: 5,000 real MNIST training digits shipped inside the package.

See ``ffedge/data/MNIST_5K_PROVENANCE.md`` for source and licence. The split is
fixed: 400 train / 100 test per class from ``default_rng(0)``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ffedge.datasets.base import Dataset, as_labels, as_nhwc, stratified_split
from ffedge.datasets.registry import register_dataset
from ffedge.errors import FFEdgeError
from ffedge.fsutil import sha256

NAME = "mnist-5k"
RESOURCE = "mnist_5k.npz"
PATH = Path(__file__).resolve().parent.parent / "data" / RESOURCE
SHA256 = "f814240cf7e0d3cbaacc1a898905819a40ab46fb317a600d2a4b91a5c184c810"
SPLIT_SEED = 0
TEST_FRACTION = 0.2  # 100 of 500 per class


def _read_resource() -> bytes:
    try:
        return PATH.read_bytes()
    except OSError as e:
        raise FFEdgeError(f"{NAME}: cannot read the embedded file {PATH} ({e.strerror or e}): reinstall ffedge") from e


def load_mnist_5k() -> Dataset:
    """The embedded dataset, sha256-verified, with its fixed stratified 4,000/1,000 split."""
    raw = _read_resource()
    got = sha256(raw).hexdigest()
    if got != SHA256:
        raise FFEdgeError(f"{NAME}: embedded {PATH} has sha256 {got}, expected {SHA256}: reinstall ffedge")
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        x, y = as_nhwc(npz["x"]), as_labels(npz["y"])
    train, test = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    return Dataset(NAME, x[train], y[train], x[test], y[test], [str(i) for i in range(10)])


register_dataset(NAME, lambda name, directory, download: load_mnist_5k(), note="embedded", stored=False)
