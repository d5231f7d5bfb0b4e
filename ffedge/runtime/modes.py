"""The registry of prediction modes of a bundle (``ffedge eval/predict/finetune --mode``): numpy-free, onnxruntime-free.

Each :class:`Mode` says what it does (the CLI help lists them from here), whether it needs the bundle's
softmax head, whether it takes ``k`` candidates, and what its scores are. :class:`ffedge.runtime.Runtime`
predicts with the method :data:`Mode.method` names (its ``predict_<name>``). A new mode is one entry here and
that one method.
"""

from __future__ import annotations

from typing import NamedTuple

from ffedge.errors import FFEdgeError, quoted


class Mode(NamedTuple):
    """A prediction mode: name, one-line help, needs the head, takes ``--k``, and the name of its scores."""

    name: str
    help: str
    needs_head: bool
    uses_k: bool
    score: str  # "goodness" or "probability"

    @property
    def method(self) -> str:
        """The :class:`~ffedge.runtime.Runtime` method that predicts in this mode."""
        return f"predict_{self.name}"


REGISTRY: tuple[Mode, ...] = (
    Mode("all", "goodness over every label", needs_head=False, uses_k=False, score="goodness"),
    Mode("head", "softmax head, one pass", needs_head=True, uses_k=False, score="probability"),
    Mode("topk", "head proposes --k labels, goodness decides", needs_head=True, uses_k=True, score="goodness"),
)
MODES: tuple[str, ...] = tuple(m.name for m in REGISTRY)
DEFAULT_MODE = MODES[0]


def mode_spec(mode: str) -> Mode:
    """The registered mode ``mode``; any other value is a one-line error listing the modes."""
    for m in REGISTRY:
        if m.name == mode:
            return m
    raise FFEdgeError(f"unknown mode {quoted(mode)}: choose one of {', '.join(MODES)}")


def check_mode(mode: str) -> str:
    """One of MODES, else a one-line error."""
    return mode_spec(mode).name


def modes_help() -> str:
    """``name: what it does`` for every mode, as one help text."""
    return "; ".join(f"{m.name}: {m.help}" for m in REGISTRY) + "."
