"""Input normalization shared by the trainer and the on-device runtime, and the check of user pixels.

Both sides must turn uint8 pixels into network inputs identically, so the
arithmetic lives here once: ``(x / 255 - mean) / std`` per channel, NHWC uint8
in, NCHW float32 out. :func:`check_pixels` turns pixel arrays a user hands in
(``Runtime.predict``, ``.npy`` files) into uint8, or says what is wrong.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ffedge.errors import FFEdgeError

# A constant channel would give std 0 and divide by zero; one grey level is the floor.
MIN_STD = 1.0 / 255.0
_CHUNK = 4096  # images per step when accumulating statistics (bounds memory)


def _check_nhwc(x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"expected a 4-D NHWC array, got shape {getattr(x, 'shape', None)}")
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {x.dtype}")


def check_pixels(x: np.ndarray, where: str) -> np.ndarray:
    """Pixel values 0..255 in any numeric dtype -> uint8 (rounded half to even); uint8 passes unchanged.

    Refuses non-numeric dtypes, NaN or infinite values and values outside 0..255 with one line
    starting with ``where`` (what the pixels are: a file name, "images"). The shape is the caller's.
    """
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iuf":
        raise FFEdgeError(f"{where}: expected numeric pixels, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise FFEdgeError(f"{where}: contains NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise FFEdgeError(f"{where}: pixel values must lie in 0..255, got {x.min():g}..{x.max():g}")
    return np.rint(x).astype(np.uint8)


def compute_normalization(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images, in [0, 1] units.

    Sums are exact integers accumulated in chunks, so the result does not depend
    on chunking and memory stays small even for CIFAR-sized arrays. Each std is
    at least ``MIN_STD``.
    """
    _check_nhwc(x)
    n, h, w, c = x.shape
    if n == 0 or h * w == 0:
        raise ValueError("cannot compute normalization of an empty array")
    s1 = np.zeros(c, dtype=np.uint64)
    s2 = np.zeros(c, dtype=np.uint64)
    for start in range(0, n, _CHUNK):
        block = x[start : start + _CHUNK].reshape(-1, c)
        s1 += block.sum(axis=0, dtype=np.uint64)
        wide = block.astype(np.uint32)
        s2 += (wide * wide).sum(axis=0, dtype=np.uint64)
    count = float(n * h * w)
    mean = s1.astype(np.float64) / count
    var = np.maximum(s2.astype(np.float64) / count - mean * mean, 0.0)
    std = np.maximum(np.sqrt(var) / 255.0, MIN_STD)
    return [float(m) for m in mean / 255.0], [float(s) for s in std]


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC -> C-contiguous float32 NCHW, ``(x / 255 - mean) / std`` per channel.

    Single images (HW or HWC) must be given a batch axis by the caller.
    """
    _check_nhwc(x)
    c = x.shape[3]
    mean_a = np.asarray(mean, dtype=np.float64).reshape(-1)
    std_a = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean_a.size != c or std_a.size != c:
        raise ValueError(f"mean/std have {mean_a.size}/{std_a.size} values for {c} channel(s)")
    if np.any(~np.isfinite(std_a)) or np.any(std_a <= 0):
        raise ValueError(f"std must be positive and finite, got {std_a.tolist()}")
    out = np.empty((x.shape[0], c, x.shape[1], x.shape[2]), dtype=np.float32)
    for ch in range(c):
        # One multiply-add per pixel: x * (1 / (255 std)) - mean / std.
        scale = np.float32(1.0 / (255.0 * std_a[ch]))
        shift = np.float32(mean_a[ch] / std_a[ch])
        np.multiply(x[..., ch], scale, out=out[:, ch], dtype=np.float32)
        out[:, ch] -= shift
    return out
