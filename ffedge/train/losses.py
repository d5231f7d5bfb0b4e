"""Forward-Forward layer objectives on positive and negative goodness."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ffedge.errors import FFEdgeError

LOSS_NAMES = ("symba", "bce")


def ff_loss(name: str, g_pos: torch.Tensor, g_neg: torch.Tensor, alpha: float = 4.0, threshold: float = 1.0) -> torch.Tensor:
    """Layer-local FF loss.

    ``g_pos`` is [B]; ``g_neg`` is [n*B]: n wrong labels per image, in n blocks of B.

    - ``symba``: softplus(-alpha * (g_pos - g_neg)), the symmetric loss of SymBa: it
      only asks positive goodness to exceed negative goodness of the same image. With
      n > 1 wrong labels it is the softmax cross-entropy of the right label among the
      n + 1 hypotheses, logits alpha * goodness (for n = 1 the same loss).
    - ``bce``: the paper's (loeweX) binary cross-entropy with a threshold:
      softplus(-(g_pos - threshold)) + softplus(g_neg - threshold), scaled by ``alpha``.
    """
    b = g_pos.shape[0]
    if name == "symba":
        if g_neg.shape[0] == b:
            return F.softplus(-alpha * (g_pos - g_neg)).mean()
        margins = alpha * (g_neg.view(-1, b) - g_pos.unsqueeze(0))  # [n, B]
        return torch.logsumexp(torch.cat([torch.zeros_like(g_pos).unsqueeze(0), margins]), dim=0).mean()
    if name == "bce":
        return 0.5 * (F.softplus(-alpha * (g_pos - threshold)).mean() + F.softplus(alpha * (g_neg - threshold)).mean())
    raise FFEdgeError(f"unknown loss '{name}': choose one of {', '.join(LOSS_NAMES)}")
