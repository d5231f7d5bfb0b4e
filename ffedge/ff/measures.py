"""Goodness, the head's spatial pooling and the head-feature normalization, in numpy.

Torch twins: ``ffedge.train.model.goodness``, ``head_pool`` and ``normalize_features`` (what training and
the exported ONNX graphs compute); ``tests/device/test_ff_definitions.py`` holds them equal to these.

The head reads each head layer's activity (before pooling) averaged over a ``grid`` x ``grid`` grid of
spatial cells (``grid`` 1: the global mean), as ``[N, C * grid * grid]`` (channel-major: index
``c * grid * grid + cell``, cells row by row), and normalizes each cell's C-vector to unit length.
"""

from __future__ import annotations

import numpy as np

from ffedge.ff.defaults import HEAD_NORM_EPS

MAX_HEAD_GRID = 16


def goodness(h: np.ndarray) -> np.ndarray:
    """A layer's goodness: the mean of squared activities over C, H, W per sample, [N, C, H, W] -> [N] (h's dtype)."""
    return np.square(h).reshape(h.shape[0], -1).mean(axis=1)


def _bins(size: int, grid: int) -> list[tuple[int, int]]:
    """Adaptive-pooling bins of ``size`` positions into ``grid`` cells: [floor(i*size/grid), ceil((i+1)*size/grid))."""
    return [(i * size // grid, -(-(i + 1) * size // grid)) for i in range(grid)]


def pool_matrix(height: int, width: int, grid: int) -> np.ndarray:
    """[H*W, grid*grid] float32: column j averages the positions of cell j (row-major cells).

    The cells are those of adaptive average pooling (they overlap by one row or column
    when ``grid`` does not divide the size). ``grid`` 1 is one column of 1/(H*W): the global mean.
    """
    if not 1 <= grid <= min(height, width, MAX_HEAD_GRID):
        raise ValueError(f"head grid {grid} does not fit a {height}x{width} activity (1..{MAX_HEAD_GRID})")
    p = np.zeros((height, width, grid * grid), np.float64)
    for r, (r0, r1) in enumerate(_bins(height, grid)):
        for c, (c0, c1) in enumerate(_bins(width, grid)):
            p[r0:r1, c0:c1, r * grid + c] = 1.0 / ((r1 - r0) * (c1 - c0))
    return p.reshape(height * width, grid * grid).astype(np.float32)


def head_pool(h: np.ndarray, grid: int = 1) -> np.ndarray:
    """A layer's head feature: its activity [N, C, H, W] averaged per cell of a grid x grid grid, [N, C*grid*grid]."""
    h = np.asarray(h, dtype=np.float32)
    n, c, hh, ww = h.shape
    if grid == 1:
        return h.mean(axis=(2, 3))
    return (h.reshape(n, c, hh * ww) @ pool_matrix(hh, ww, grid)).reshape(n, c * grid * grid)


def normalize_features(f: np.ndarray, cells: int = 1) -> np.ndarray:
    """Head features [N, C * cells], each cell's C-vector divided by its L2 norm + ``HEAD_NORM_EPS``, in float32.

    ``cells`` 1 (a global-mean feature [N, C]): the whole vector is normalized.
    """
    f = np.asarray(f, dtype=np.float32)
    n = f.shape[0]
    g = f.reshape(n, -1, cells)
    g = g / (np.sqrt(np.square(g).sum(axis=1, keepdims=True)) + np.float32(HEAD_NORM_EPS))
    return g.reshape(f.shape)
