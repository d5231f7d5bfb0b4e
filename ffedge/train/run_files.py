"""The files of a training run: their names, ``config.json`` (written, read and checked), tensor files, loading a finished run.

A run folder holds ``config.json`` (the options and what the exporter and device
need to rebuild the model), ``checkpoint.pt`` (resume), ``weights.pt`` and
``metrics.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffedge.errors import FFEdgeError, quoted
from ffedge.fsutil import atomic_path
from ffedge.train.model import FFNet, layers_to_str, parse_layers
from ffedge.train.trainer import PreparedData, TrainConfig, build_model

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
METRICS = "metrics.json"
RUN_FILES = (CONFIG, CHECKPOINT, WEIGHTS, METRICS)
RUN_FORMAT = 1


def save_torch(path: Path, obj: Any) -> None:
    """Write a tensor file atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path) -> Any:
    """Load a tensor file written by ffedge; never unpickles arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FFEdgeError(f"missing file: {path}") from None
    except (PermissionError, IsADirectoryError) as e:
        raise FFEdgeError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:
        # Not torch's own message: it suggests weights_only=False, i.e. running whatever the file holds.
        raise FFEdgeError(
            f"cannot read {path}: it is corrupt or not a tensor file ffedge wrote ({type(e).__name__})"
        ) from None


def first_line(e: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def run_config_dict(cfg: TrainConfig, data: PreparedData) -> dict[str, Any]:
    """``config.json``: the training options plus what the exporter and device need to rebuild the model.

    ``encoding`` is the resolved label encoding (every parameter, see ``LabelEncoding.to_config``):
    what ``--resume``, the exporter and the report rebuild it from.
    """
    ds = data.dataset
    n = len(parse_layers(cfg.layers))
    # Defaults resolved, so that a changed default cannot change a run (resumed, exported, reported).
    return {
        "format": RUN_FORMAT,
        "train": {**asdict(cfg), "head_layers": cfg.feature_layers(n)},
        "classes": list(ds.classes),
        "input": {"shape": list(ds.image_shape), "mean": data.mean, "std": data.std},
        "encoding": data.encoding.to_config(),
        "model": {
            "in_channels": data.encoding.out_channels,
            "layers": layers_to_str(parse_layers(cfg.layers)),
            "quant": cfg.quant,
            "bits": cfg.bits,
            "predict_layers": cfg.prediction_layers(n),
        },
    }


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Read a run's ``config.json`` and check every part that is used (types, shapes, the training options)."""
    path = Path(run_dir) / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise FFEdgeError(f"{run_dir} is not a training run: {CONFIG} is missing") from None
    except (OSError, ValueError, RecursionError) as e:
        raise FFEdgeError(f"cannot read {path}: {e}") from None
    _check_run_config(cfg, path)
    return cfg


def _check_run_config(cfg: Any, path: Path) -> None:
    def bad(key: str, what: str, value: Any) -> FFEdgeError:
        return FFEdgeError(f"{path}: '{key}' must be {what}, got {quoted(value)}")

    def ints(v: Any, n: int | None = None) -> bool:
        return (
            isinstance(v, list)
            and (n is None or len(v) == n)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
        )

    def numbers(v: Any, n: int) -> bool:
        return (
            isinstance(v, list)
            and len(v) == n
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)
        )

    if not isinstance(cfg, dict):
        raise FFEdgeError(f"{path} is not a run config (a JSON object)")
    for key in ("format", "train", "classes", "input", "encoding", "model"):
        if key not in cfg:
            raise FFEdgeError(f"{path} lacks the key '{key}'")
    if cfg["format"] != RUN_FORMAT:
        raise FFEdgeError(
            f"{path}: run format {quoted(cfg['format'])} is not supported (this ffedge reads {RUN_FORMAT})"
        )
    TrainConfig.from_dict(cfg["train"], source=str(path))
    classes = cfg["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, (str, int)) for c in classes):
        raise bad("classes", "a list of at least 2 class names", classes)
    inp = cfg["input"]
    if not isinstance(inp, dict):
        raise bad("input", "an object", inp)
    shape = inp.get("shape")
    if not ints(shape, 3) or not all(0 < v <= 65536 for v in shape):
        raise bad("input.shape", "3 positive integers [C, H, W]", shape)
    if not numbers(inp.get("mean"), shape[0]):
        raise bad("input.mean", f"a list of {shape[0]} finite numbers (one per channel)", inp.get("mean"))
    if not numbers(inp.get("std"), shape[0]) or min(inp["std"]) <= 0:
        raise bad("input.std", f"a list of {shape[0]} positive numbers (one per channel)", inp.get("std"))
    if not isinstance(cfg["encoding"], dict):
        raise bad("encoding", "an object", cfg["encoding"])
    model = cfg["model"]
    if not isinstance(model, dict):
        raise bad("model", "an object", model)
    ch = model.get("in_channels")
    if not (isinstance(ch, int) and not isinstance(ch, bool) and ch > 0):
        raise bad("model.in_channels", "a positive integer", ch)
    if not isinstance(model.get("quant"), bool):
        raise bad("model.quant", "true or false", model.get("quant"))
    if not ints(model.get("predict_layers")):
        raise bad("model.predict_layers", "a list of layer numbers", model.get("predict_layers"))


def model_from_run_config(cfg: dict[str, Any]) -> FFNet:
    """An untrained FFNet with the architecture a run config describes."""
    tcfg = TrainConfig.from_dict(cfg["train"])
    c, h, w = cfg["input"]["shape"]
    return build_model(tcfg, cfg["model"]["in_channels"], (h, w), len(cfg["classes"]))


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], FFNet]:
    """The config and trained model (eval mode) of a finished run."""
    cfg = read_run_config(run_dir)
    path = Path(run_dir) / WEIGHTS
    if not path.exists():
        raise FFEdgeError(f"{run_dir}: {WEIGHTS} is missing (training unfinished? use 'ffedge train --resume')")
    net = model_from_run_config(cfg)
    state = load_torch(path)
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise FFEdgeError(f"{path} does not match {CONFIG}: {first_line(e)}") from None
    net.eval()
    return cfg, net
