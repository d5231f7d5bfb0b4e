"""On-device Forward-Forward fine-tuning of a bundle: numpy and onnxruntime, no torch.

- :mod:`ffedge.finetuning.loop`: :func:`finetune` and :class:`FinetuneConfig` (``ffedge finetune``): data, training
  loop, re-quantization, scoring and the commit of a new bundle version;
- :mod:`ffedge.finetuning.numerics`: the numpy Forward-Forward layer in fake-quant mode, its FF step, Adam,
  the im2col convolution and the softmax head (numpy only: no onnxruntime either); the FF definitions it
  uses (goodness, losses, negatives) are :mod:`ffedge.ff`'s.

``from ffedge.finetuning import finetune, FinetuneConfig`` works; the loop module, and with it onnxruntime,
is imported on first use of such a name, so ``ffedge.finetuning.numerics`` stays numpy-only. (The package
is not called ``finetune``: that is the function :func:`ffedge.finetune`.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ffedge.lazy import lazy_names

if TYPE_CHECKING:
    from ffedge.finetuning.loop import EVAL_BATCH, FinetuneConfig, HybridNet, accuracy, finetune, trainable_layers  # noqa: F401

# The names of ffedge.finetuning.loop that ``from ffedge.finetuning import ...`` gives.
__all__ = ["EVAL_BATCH", "FinetuneConfig", "HybridNet", "accuracy", "finetune", "trainable_layers"]


__getattr__, __dir__ = lazy_names(globals(), "ffedge.finetuning.loop", __all__)
