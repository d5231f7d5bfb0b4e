"""The Forward-Forward definitions, once, in numpy (no torch): what the training and the device wing share.

- :mod:`ffedge.ff.defaults`: the objective's defaults (loss, ``alpha``, ``threshold``) and the eps of the head features;
- :mod:`ffedge.ff.measures`: goodness (mean of squares over C, H, W), the head's grid pooling and feature normalization;
- :mod:`ffedge.ff.negatives`: negative data: wrong labels drawn per image, uniformly or from the margins of confused
  class pairs (:class:`ConfusionMemory`);
- :mod:`ffedge.ff.losses`: the registry of FF layer losses, name -> numpy loss and its gradient w.r.t. goodness.

The torch side has one twin of each (``ffedge.train.model.goodness``, ``head_pool`` and ``normalize_features``, the losses of
``ffedge.train.losses``, registered under the names of this registry); ``tests/test_ff_definitions.py`` holds
each twin equal to its numpy definition.
"""

from __future__ import annotations

from ffedge.ff.defaults import DEFAULT_ALPHA, DEFAULT_LOSS, DEFAULT_THRESHOLD, HEAD_NORM_EPS
from ffedge.ff.losses import LOSS_NAMES, FFLoss, ff_loss, loss_names, loss_spec, register_loss, registered_losses
from ffedge.ff.measures import MAX_HEAD_GRID, goodness, head_pool, normalize_features, pool_matrix
from ffedge.ff.negatives import ConfusionMemory, wrong_labels

__all__ = [
    "ConfusionMemory",
    "DEFAULT_ALPHA",
    "DEFAULT_LOSS",
    "DEFAULT_THRESHOLD",
    "HEAD_NORM_EPS",
    "LOSS_NAMES",
    "MAX_HEAD_GRID",
    "FFLoss",
    "ff_loss",
    "goodness",
    "head_pool",
    "loss_names",
    "loss_spec",
    "normalize_features",
    "pool_matrix",
    "register_loss",
    "registered_losses",
    "wrong_labels",
]
