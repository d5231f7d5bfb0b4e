"""Defaults of the Forward-Forward objective, shared by training (``TrainConfig``, ``ffedge train``) and fine-tuning.

Fine-tuning uses the objective a bundle records (``manifest["objective"]``) and these for what it leaves out.
"""

from __future__ import annotations

DEFAULT_LOSS = "symba"  # a name of the loss registry (ffedge.ff.losses)
DEFAULT_ALPHA = 4.0  # sharpness: the losses' logits are alpha * goodness differences
DEFAULT_THRESHOLD = 1.0  # goodness threshold of the bce loss (mean square of a unit-rms activity)
HEAD_NORM_EPS = 1e-6  # added to the L2 norm of a head feature before dividing by it (an all-zero feature stays finite)
