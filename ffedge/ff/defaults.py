"""Defaults of the Forward-Forward objective, shared by training (``TrainConfig``, ``ffedge train``) and fine-tuning.

Fine-tuning uses the objective a bundle records (``manifest["objective"]``) and these for what it leaves out.
"""

from __future__ import annotations

DEFAULT_LOSS = "symba"  # a name of the loss registry (ffedge.ff.losses)
DEFAULT_ALPHA = 4.0  # sharpness: the losses' logits are alpha * goodness differences
DEFAULT_THRESHOLD = 1.0  # goodness threshold of the bce loss (mean square of a unit-rms activity)
HEAD_NORM_EPS = 1e-6  # added to the L2 norm of a head feature before dividing by it (an all-zero feature stays finite)
# The choices of the training objective (``TrainConfig``, ``ffedge train``): here, without torch, so the CLI lists them.
LOCAL_MODES = ("pair", "layer")  # what a layer's loss updates: it and the layer before it, or only itself (pure FF)
NEGATIVE_MODES = ("random", "hard", "confused")  # how the wrong labels are drawn
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")  # arithmetic of the float epochs (QAT is always fp32)
