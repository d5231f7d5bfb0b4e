"""Negative data of Forward-Forward training: each image with wrong labels (numpy)."""

from __future__ import annotations

import numpy as np


def wrong_labels(y: np.ndarray, num_classes: int, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """``n`` different wrong labels per image, uniform over the other classes: [n, B] (n=1: [B]).

    The negatives of FF training; every trainer (torch and on-device) draws them here.
    """
    if n == 1:
        return (y + rng.integers(1, num_classes, size=len(y))) % num_classes
    offsets = rng.random((len(y), num_classes - 1)).argsort(1)[:, :n].T + 1
    return (y[None, :] + offsets) % num_classes
