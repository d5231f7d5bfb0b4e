"""The Forward-Forward definitions, once, in numpy (no torch): what the training and the device wing share.

- :mod:`ffedge.ff.defaults`: the objective's defaults (loss, ``alpha``, ``threshold``) and the eps of the head features;
- :mod:`ffedge.ff.measures`: goodness (mean of squares over C, H, W) and the head-feature normalization;
- :mod:`ffedge.ff.negatives`: negative data: wrong labels drawn per image;
- :mod:`ffedge.ff.losses`: the registry of FF layer losses, name -> numpy loss and its gradient w.r.t. goodness.

The torch side has one twin of each (``ffedge.train.model.goodness`` and ``normalize_features``, the losses of
``ffedge.train.losses``, registered under the names of this registry); ``tests/test_ff_definitions.py`` holds
each twin equal to its numpy definition.
"""

from __future__ import annotations

from ffedge.ff.defaults import DEFAULT_ALPHA, DEFAULT_LOSS, DEFAULT_THRESHOLD, HEAD_NORM_EPS
from ffedge.ff.losses import LOSS_NAMES, FFLoss, ff_loss, loss_names, loss_spec, register_loss, registered_losses
from ffedge.ff.measures import goodness, normalize_features
from ffedge.ff.negatives import wrong_labels

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_LOSS",
    "DEFAULT_THRESHOLD",
    "HEAD_NORM_EPS",
    "LOSS_NAMES",
    "FFLoss",
    "ff_loss",
    "goodness",
    "loss_names",
    "loss_spec",
    "normalize_features",
    "register_loss",
    "registered_losses",
    "wrong_labels",
]
