"""``checkpoint.pt``: written after every epoch, checked and restored by ``--resume``.

It holds the net's and the optimizers' state, the number of finished epochs,
whether the net was quantization-aware then, the training seconds so far,
the per-epoch history and, for ``--negatives confused``, the class pairs' margins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffedge.errors import FFEdgeError
from ffedge.train.model import FFNet
from ffedge.train.run_files import CHECKPOINT, CONFIG, first_line, load_torch, save_torch
from ffedge.train.trainer import LocalTrainer


def save_checkpoint(
    path: Path, net: FFNet, trainer: LocalTrainer, epoch: int, elapsed: float, history: list[dict[str, Any]]
) -> None:
    """Write the checkpoint after ``epoch`` finished epochs (atomically)."""
    save_torch(
        path,
        {
            "model": net.state_dict(),
            "optimizers": [opt.state_dict() for opt in trainer.optimizers],
            "epoch": epoch,
            "quantized": net.quant.enabled,
            "elapsed": elapsed,
            "history": history,
            **({"confusion": torch.from_numpy(trainer.confusion.margins)} if trainer.confusion is not None else {}),
        },
    )


def check_checkpoint(state: Any, path: Path) -> dict[str, Any]:
    """A checkpoint has the keys and types training uses; else one clear error."""
    if not isinstance(state, dict):
        raise FFEdgeError(f"{path} is not a checkpoint ffedge wrote")
    for key, types in (
        ("model", dict),
        ("optimizers", list),
        ("epoch", int),
        ("elapsed", (int, float)),
        ("history", list),
    ):
        if key not in state:
            raise FFEdgeError(f"{path} lacks '{key}': not a checkpoint ffedge wrote")
        if not isinstance(state[key], types) or isinstance(state[key], bool):
            raise FFEdgeError(f"{path}: '{key}' has the wrong type ({type(state[key]).__name__})")
    if state["epoch"] < 0 or not np.isfinite(state["elapsed"]):
        raise FFEdgeError(f"{path}: epoch {state['epoch']} / elapsed {state['elapsed']} are not those of a run")
    try:
        json.dumps(state["history"], allow_nan=True)  # it ends up in metrics.json
    except (TypeError, ValueError):
        raise FFEdgeError(
            f"{path}: 'history' holds more than numbers and strings: not a checkpoint ffedge wrote"
        ) from None
    return state


def read_checkpoint(out: Path, epochs: int) -> dict[str, Any] | None:
    """The checked checkpoint of the run in ``out`` (None if it has none yet), which must not be past ``epochs``."""
    path = out / CHECKPOINT
    state = check_checkpoint(load_torch(path), path) if path.exists() else None
    if state is not None and state["epoch"] > epochs:
        raise FFEdgeError(f"--epochs {epochs}: the run already has {state['epoch']} epochs")
    return state


def restore(net: FFNet, trainer: LocalTrainer, state: dict[str, Any], path: Path) -> None:
    """Load the checkpoint ``state`` (read from ``path``) into the net and its optimizers."""
    if len(state["optimizers"]) != len(trainer.optimizers):
        raise FFEdgeError(
            f"{path} holds {len(state['optimizers'])} optimizers, the net of {CONFIG} has {len(trainer.optimizers)} layers"
        )
    try:
        net.load_state_dict(state["model"])
        trainer.load_optimizers(state["optimizers"])
        if trainer.confusion is not None and "confusion" in state:
            margins = np.asarray(state["confusion"], dtype=np.float64)
            if margins.shape != trainer.confusion.margins.shape or not np.isfinite(margins).all():
                raise ValueError(f"'confusion' is not a finite {trainer.confusion.margins.shape} matrix")
            trainer.confusion.margins = margins.copy()
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise FFEdgeError(f"{path} does not match {CONFIG}: {first_line(e)}") from None
