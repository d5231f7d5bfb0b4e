"""Forward-Forward layer objectives on positive and negative goodness: the torch twins of :mod:`ffedge.ff.losses`.

Every loss is defined in numpy in the registry of :mod:`ffedge.ff.losses` (its name, summary and gradient; what
on-device fine-tuning computes); this module registers, with :func:`torch_twin`, the torch function that
training differentiates, under the same name. A name the numpy registry lacks is refused at registration, and
training refuses a registered loss without a twin (:func:`torch_loss`). ``tests/test_ff_definitions.py`` checks
every pair for equal values and gradients.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ffedge.errors import FFEdgeError, quoted
from ffedge.ff import DEFAULT_ALPHA, DEFAULT_THRESHOLD, LOSS_NAMES, loss_names, loss_spec  # noqa: F401  (LOSS_NAMES: API)

TorchLoss = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]
TORCH_LOSSES: dict[str, TorchLoss] = {}


def torch_twin(name: str) -> Callable[[TorchLoss], TorchLoss]:
    """Decorator: register the torch twin of the numpy loss ``name`` (which must be in :mod:`ffedge.ff.losses`)."""

    def add(fn: TorchLoss) -> TorchLoss:
        if name not in loss_names():
            raise ValueError(
                f"torch loss {name!r} has no numpy definition in ffedge.ff.losses (registered: {', '.join(loss_names())})"
            )
        if name in TORCH_LOSSES:
            raise ValueError(f"torch loss {name!r} is registered twice")
        TORCH_LOSSES[name] = fn
        return fn

    return add


def torch_loss(name: str) -> TorchLoss:
    """The torch twin of the registered loss ``name``; an unknown name, or one without a twin, is a one-line error."""
    loss_spec(name)  # unknown names: the registry's error
    if name not in TORCH_LOSSES:
        raise FFEdgeError(f"loss {quoted(name)} has no torch implementation: this ffedge cannot train with it")
    return TORCH_LOSSES[name]


@torch_twin("symba")
def symba(g_pos: torch.Tensor, g_neg: torch.Tensor, alpha: float, threshold: float) -> torch.Tensor:
    """softplus(-alpha * (g_pos - g_neg)), the symmetric loss of SymBa: it only asks positive goodness to
    exceed negative goodness of the same image (no threshold). With n > 1 wrong labels (``g_neg`` [n*B]) it is
    the softmax cross-entropy of the right label among the n + 1 hypotheses, logits alpha * goodness (for n = 1
    the same loss)."""
    b = g_pos.shape[0]
    if g_neg.shape[0] == b:
        return F.softplus(-alpha * (g_pos - g_neg)).mean()
    margins = alpha * (g_neg.view(-1, b) - g_pos.unsqueeze(0))  # [n, B]
    return torch.logsumexp(torch.cat([torch.zeros_like(g_pos).unsqueeze(0), margins]), dim=0).mean()


@torch_twin("bce")
def bce(g_pos: torch.Tensor, g_neg: torch.Tensor, alpha: float, threshold: float) -> torch.Tensor:
    """The paper's (loeweX) binary cross-entropy with a threshold:
    softplus(-(g_pos - threshold)) + softplus(g_neg - threshold), scaled by ``alpha``."""
    return 0.5 * (F.softplus(-alpha * (g_pos - threshold)).mean() + F.softplus(alpha * (g_neg - threshold)).mean())


def ff_loss(
    name: str,
    g_pos: torch.Tensor,
    g_neg: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """Layer-local FF loss ``name`` (a name of :data:`LOSS_NAMES`).

    ``g_pos`` is [B]; ``g_neg`` is [n*B]: n wrong labels per image, in n blocks of B.
    """
    return torch_loss(name)(g_pos, g_neg, alpha, threshold)
