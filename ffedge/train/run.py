"""A training run on disk: ``config.json``, ``checkpoint.pt`` (resume), ``weights.pt``, ``metrics.json``.

Every file is written atomically. Nothing is created before every option and
the dataset have been checked, so bad input leaves no half-made run dir.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffedge.errors import FFEdgeError
from ffedge.fsutil import atomic_path, atomic_write_json
from ffedge.progress import QuietReporter, Reporter
from ffedge.ff_numpy import cosine_lr
from ffedge.train.model import FFNet, layers_to_str, parse_layers
from ffedge.train.trainer import (
    LocalTrainer,
    PreparedData,
    TrainConfig,
    hard_negatives,
    build_model,
    eval_subset,
    fit_head,
    goodness_accuracy,
    goodness_matrix,
    head_accuracy,
    neutral_features,
    prepare_data,
)

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.pt"
METRICS = "metrics.json"
RUN_FORMAT = 1


def _save_torch(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path) -> Any:
    """Load a tensor file written by ffedge; never unpickles arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FFEdgeError(f"missing file: {path}") from None
    except Exception as e:
        raise FFEdgeError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def run_config_dict(cfg: TrainConfig, data: PreparedData) -> dict[str, Any]:
    """``config.json``: the training options plus what the exporter and device need to rebuild the model."""
    ds = data.dataset
    return {
        "format": RUN_FORMAT,
        "train": asdict(cfg),
        "classes": list(ds.classes),
        "input": {"shape": list(ds.image_shape), "mean": data.mean, "std": data.std},
        "encoding": data.encoding.to_config(),
        "model": {
            "in_channels": data.encoding.out_channels,
            "layers": layers_to_str(parse_layers(cfg.layers)),
            "quant": cfg.quant,
            "bits": cfg.bits,
            "predict_layers": cfg.prediction_layers(len(parse_layers(cfg.layers))),
        },
    }


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Read and sanity-check a run's ``config.json``."""
    import json

    path = Path(run_dir) / CONFIG
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise FFEdgeError(f"{run_dir} is not a training run: {CONFIG} is missing") from None
    except (OSError, ValueError) as e:
        raise FFEdgeError(f"cannot read {path}: {e}") from None
    for key in ("format", "train", "classes", "input", "encoding", "model"):
        if key not in cfg:
            raise FFEdgeError(f"{path} lacks the key '{key}'")
    if cfg["format"] != RUN_FORMAT:
        raise FFEdgeError(f"{path}: run format {cfg['format']} is not supported (this ffedge reads {RUN_FORMAT})")
    return cfg


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
    try:
        net.load_state_dict(load_torch(path))
    except RuntimeError as e:
        raise FFEdgeError(f"{path} does not match {CONFIG}: {str(e).splitlines()[0]}") from None
    net.eval()
    return cfg, net


def _check_out_dir(out: Path, resume: bool, force: bool) -> None:
    if resume:
        if not (out / CONFIG).exists():
            raise FFEdgeError(f"--resume: {out} holds no run to resume ({CONFIG} missing)")
        return
    if out.exists() and any(out.iterdir()) and not force:
        raise FFEdgeError(f"{out} already exists: pass --resume to continue that run or --force to overwrite it")
    if out.exists() and not out.is_dir():
        raise FFEdgeError(f"{out} exists and is not a directory")


def train_run(
    cfg: TrainConfig,
    out: str | Path,
    force: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Train a new run in ``out`` and return its metrics (also written to ``metrics.json``)."""
    _check_out_dir(Path(out), resume=False, force=force)
    return _train(cfg, Path(out), None, force, reporter or QuietReporter())


def resume_run(out: str | Path, epochs: int | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Continue the run in ``out`` from its last finished epoch (optionally to more ``epochs``).

    The cosine schedule is laid over the new total, so extending a run changes the remaining steps.
    """
    out = Path(out)
    _check_out_dir(out, resume=True, force=False)
    cfg = TrainConfig.from_dict(read_run_config(out)["train"])
    if epochs is not None:
        cfg.epochs = epochs
    state = load_torch(out / CHECKPOINT) if (out / CHECKPOINT).exists() else None
    if state is not None and state["epoch"] > cfg.epochs:
        raise FFEdgeError(f"--epochs {cfg.epochs}: the run already has {state['epoch']} epochs")
    return _train(cfg, out, state, False, reporter or QuietReporter())


def _train(cfg: TrainConfig, out: Path, state: dict[str, Any] | None, force: bool, reporter: Reporter) -> dict[str, Any]:
    cfg.validate()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    data = prepare_data(cfg)
    ds, enc = data.dataset, data.encoding
    if len(ds.y_train) < cfg.batch_size:
        raise FFEdgeError(f"{cfg.dataset}: {len(ds.y_train)} training images, fewer than one batch of {cfg.batch_size}")

    # Everything is checked: from here on the run dir is written.
    if force and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = run_config_dict(cfg, data)
    atomic_write_json(out / CONFIG, run_cfg)

    torch.manual_seed(cfg.seed)
    net = build_model(cfg, enc.out_channels, ds.image_shape[1:], ds.num_classes).to(cfg.device)
    trainer = LocalTrainer(net, cfg)
    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if state is not None:
        net.load_state_dict(state["model"])
        for opt, sd in zip(trainer.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        start_epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        history = list(state["history"])
        reporter.log(f"resuming {out} at epoch {start_epoch + 1}/{cfg.epochs}")

    n_layers = len(net.layers)
    pred_layers = cfg.prediction_layers(n_layers)
    n_train, bs = len(ds.y_train), cfg.batch_size
    steps_per_epoch = (n_train + bs - 1) // bs
    total_steps = steps_per_epoch * cfg.epochs
    sub = eval_subset(len(ds.y_test), cfg.eval_samples, cfg.seed)
    reporter.log(
        f"training {cfg.dataset} ({n_train} train / {len(ds.y_test)} held-out), labels {cfg.labels}, "
        f"layers {cfg.layers}, {'int' + str(cfg.bits) + ' QAT' if cfg.quant else 'float'}, "
        f"{cfg.loss} loss, {cfg.local}-local, {cfg.epochs} epochs"
    )
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        perm = rng.permutation(n_train)
        sums = np.zeros((n_layers, 3))
        with reporter.task(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch) as advance:
            for i in range(steps_per_epoch):
                trainer.set_lr(cosine_lr(cfg.lr, epoch * steps_per_epoch + i, total_steps))
                idx = perm[i * bs : (i + 1) * bs]
                xb, yb = data.x_train[idx], ds.y_train[idx]
                if cfg.negatives == "hard":
                    neg = hard_negatives(net, enc, xb, yb, pred_layers, cfg.device)
                else:
                    neg = (yb + rng.integers(1, ds.num_classes, len(yb))) % ds.num_classes
                x_pos = torch.from_numpy(enc.encode(xb, yb)).to(cfg.device)
                x_neg = torch.from_numpy(enc.encode(xb, neg)).to(cfg.device)
                stats = np.array(trainer.step(x_pos, x_neg))
                sums += stats
                advance(1, loss=f"{stats[-1, 0]:.3f}")
        means = sums / steps_per_epoch
        g = goodness_matrix(net, enc, data.x_test[sub], cfg.device)
        per_layer = [goodness_accuracy(g, ds.y_test[sub], [l]) for l in range(n_layers)]
        acc = goodness_accuracy(g, ds.y_test[sub], pred_layers)
        elapsed += time.perf_counter() - t0
        rec = {
            "epoch": epoch + 1,
            "seconds": round(elapsed, 2),
            "loss": [round(float(v), 5) for v in means[:, 0]],
            "g_pos": [round(float(v), 4) for v in means[:, 1]],
            "g_neg": [round(float(v), 4) for v in means[:, 2]],
            "heldout_accuracy": acc,
            "heldout_per_layer": per_layer,
            "heldout_images": len(sub),
        }
        history.append(rec)
        reporter.log(
            f"epoch {epoch + 1:3d}/{cfg.epochs}  {elapsed:6.0f}s  loss {' '.join(f'{v:.3f}' for v in means[:, 0])}  "
            f"g+/g- {' '.join(f'{p:.2f}/{n:.2f}' for p, n in means[:, 1:])}  "
            f"held-out acc {acc:.4f} (per layer {' '.join(f'{a:.3f}' for a in per_layer)})"
        )
        _save_torch(
            out / CHECKPOINT,
            {
                "model": net.state_dict(),
                "optimizers": [opt.state_dict() for opt in trainer.optimizers],
                "epoch": epoch + 1,
                "elapsed": elapsed,
                "history": history,
            },
        )
    train_seconds = elapsed

    # The softmax head learns on frozen neutral-label activities.
    t_head = time.perf_counter()
    f_train = neutral_features(net, enc, data.x_train, cfg.device)
    f_test = neutral_features(net, enc, data.x_test, cfg.device)
    fit_head(net, f_train, ds.y_train, cfg.head_epochs, cfg.seed)
    head_seconds = time.perf_counter() - t_head

    g = goodness_matrix(net, enc, data.x_test, cfg.device)
    metrics = {
        "dataset": cfg.dataset,
        "labels": cfg.labels,
        "test_accuracy": goodness_accuracy(g, ds.y_test, pred_layers),
        "predict_layers": pred_layers,
        "per_layer_test_accuracy": [goodness_accuracy(g, ds.y_test, [l]) for l in range(n_layers)],
        "all_layers_test_accuracy": goodness_accuracy(g, ds.y_test, list(range(n_layers))),
        "head_test_accuracy": head_accuracy(net, f_test, ds.y_test),
        "n_train": int(n_train),
        "n_test": int(len(ds.y_test)),
        "epochs": cfg.epochs,
        "train_seconds": round(train_seconds, 2),
        "head_seconds": round(head_seconds, 2),
        "threads": torch.get_num_threads(),
        "history": history,
    }
    _save_torch(out / WEIGHTS, net.state_dict())
    atomic_write_json(out / METRICS, metrics)
    reporter.log(
        f"held-out accuracy {metrics['test_accuracy']:.4f} (goodness, layers {pred_layers}), "
        f"head {metrics['head_test_accuracy']:.4f}; per layer "
        f"{' '.join(f'{a:.4f}' for a in metrics['per_layer_test_accuracy'])}; trained {train_seconds:.0f}s -> {out}"
    )
    return metrics
