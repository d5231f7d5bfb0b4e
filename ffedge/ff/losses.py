"""The registry of Forward-Forward layer losses: name -> the loss on goodness and its gradient, in numpy.

A loss is a function ``(g_pos, g_neg, alpha, threshold) -> (loss, dL/dg_pos, dL/dg_neg)`` on float64 goodness
[N] (one negative per positive), registered with :func:`register_loss` under its name and a one-line summary
(``ffedge train --help`` lists them). The registry is the one list of loss names (:data:`LOSS_NAMES`): on-device
fine-tuning computes the numpy loss; training computes its torch twin, which ``ffedge.train.losses`` registers
under the same name and refuses for a name not registered here. A new loss is one function here and its torch
twin there; ``tests/test_ff_definitions.py`` checks values and gradients of every pair.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ffedge.errors import FFEdgeError, quoted
from ffedge.ff.defaults import DEFAULT_ALPHA, DEFAULT_THRESHOLD

LossFn = Callable[[np.ndarray, np.ndarray, float, float], "tuple[float, np.ndarray, np.ndarray]"]


class FFLoss(NamedTuple):
    """A registered loss: its name, a one-line summary for help texts, and the numpy function."""

    name: str
    summary: str
    fn: LossFn


_REGISTRY: dict[str, FFLoss] = {}


def register_loss(name: str, summary: str) -> Callable[[LossFn], LossFn]:
    """Decorator: register a numpy loss under ``name`` (lowercase, unique) with a one-line ``summary``."""

    def add(fn: LossFn) -> LossFn:
        if not name or name != name.strip().lower():
            raise ValueError(f"a loss needs a lowercase name, got {name!r}")
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is registered twice")
        _REGISTRY[name] = FFLoss(name, summary, fn)
        return fn

    return add


def loss_names() -> tuple[str, ...]:
    """The registered losses' names, in registration order (the first is the default)."""
    return tuple(_REGISTRY)


def registered_losses() -> tuple[FFLoss, ...]:
    """The registered losses, in registration order."""
    return tuple(_REGISTRY.values())


def loss_spec(name: str) -> FFLoss:
    """The registered loss ``name``; any other name is a one-line error listing the registered ones."""
    if name not in _REGISTRY:
        raise FFEdgeError(f"unknown loss {quoted(name)}: choose one of {', '.join(loss_names())}")
    return _REGISTRY[name]


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@register_loss("symba", "softplus(-alpha*(g+ - g-))")
def symba(gp: np.ndarray, gn: np.ndarray, alpha: float, threshold: float) -> tuple[float, np.ndarray, np.ndarray]:
    """SymBa's symmetric loss, mean softplus(-alpha (g_pos - g_neg)) over the pairs (no threshold)."""
    d = -alpha * (gp - gn)
    s = alpha * _sigmoid(d) / gp.size
    return float(_softplus(d).mean()), -s, s


@register_loss("bce", "threshold, as in the paper")
def bce(gp: np.ndarray, gn: np.ndarray, alpha: float, threshold: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Binary cross-entropy with a threshold (loeweX): 0.5 mean(softplus(-alpha (g_pos - t)) + softplus(alpha (g_neg - t)))."""
    up, un = -alpha * (gp - threshold), alpha * (gn - threshold)
    loss = 0.5 * (_softplus(up) + _softplus(un)).mean()
    return float(loss), -0.5 * alpha * _sigmoid(up) / gp.size, 0.5 * alpha * _sigmoid(un) / gp.size


LOSS_NAMES = loss_names()


def ff_loss(
    name: str, g_pos: np.ndarray, g_neg: np.ndarray, alpha: float = DEFAULT_ALPHA, threshold: float = DEFAULT_THRESHOLD
) -> tuple[float, np.ndarray, np.ndarray]:
    """The registered loss ``name`` on goodness pairs; returns (loss, dL/dg_pos, dL/dg_neg).

    g_pos and g_neg are [N] (one negative per positive), computed in float64; the gradients come back in
    g_pos's float dtype (float32 at least). Same values as ``ffedge.train.losses.ff_loss`` (its torch twin).
    """
    spec = loss_spec(name)
    gp, gn = np.asarray(g_pos, np.float64), np.asarray(g_neg, np.float64)
    if gp.shape != gn.shape or gp.ndim != 1 or gp.size == 0:
        raise FFEdgeError(
            f"ff_loss needs g_pos and g_neg of the same non-empty shape [N], got {gp.shape} and {gn.shape}"
        )
    loss, dp, dn = spec.fn(gp, gn, alpha, threshold)
    dt = np.result_type(np.asarray(g_pos).dtype, np.float32)
    return float(loss), dp.astype(dt), dn.astype(dt)
