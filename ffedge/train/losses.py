"""Forward-Forward layer objectives on positive and negative goodness."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ffedge.errors import FFEdgeError

LOSS_NAMES = ("symba", "bce")


def ff_loss(name: str, g_pos: torch.Tensor, g_neg: torch.Tensor, alpha: float = 4.0, threshold: float = 1.0) -> torch.Tensor:
    """Layer-local FF loss.

    - ``symba``: softplus(-alpha * (g_pos - g_neg)), the symmetric loss of SymBa: it
      only asks positive goodness to exceed negative goodness of the same image.
    - ``bce``: the paper's (loeweX) binary cross-entropy with a threshold:
      softplus(-(g_pos - threshold)) + softplus(g_neg - threshold), scaled by ``alpha``.
    """
    if name == "symba":
        return F.softplus(-alpha * (g_pos - g_neg)).mean()
    if name == "bce":
        return 0.5 * (F.softplus(-alpha * (g_pos - threshold)) + F.softplus(alpha * (g_neg - threshold))).mean()
    raise FFEdgeError(f"unknown loss '{name}': choose one of {', '.join(LOSS_NAMES)}")
