"""Goodness and the head-feature normalization, in numpy.

Torch twins: ``ffedge.train.model.goodness`` and ``ffedge.train.model.normalize_features`` (what training and
the exported ONNX graphs compute); ``tests/test_ff_definitions.py`` holds them equal to these.
"""

from __future__ import annotations

import numpy as np

from ffedge.ff.defaults import HEAD_NORM_EPS


def goodness(h: np.ndarray) -> np.ndarray:
    """A layer's goodness: the mean of squared activities over C, H, W per sample, [N, C, H, W] -> [N] (h's dtype)."""
    return np.square(h).reshape(h.shape[0], -1).mean(axis=1)


def normalize_features(f: np.ndarray) -> np.ndarray:
    """Head features [N, C] divided by their L2 norm + ``HEAD_NORM_EPS`` per sample, in float32."""
    f = np.asarray(f, dtype=np.float32)
    return f / (np.sqrt(np.square(f).sum(axis=1, keepdims=True)) + np.float32(HEAD_NORM_EPS))
