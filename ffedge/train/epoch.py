"""One training epoch: shuffled batches, their negatives, the layer-local steps, and the probes called on the way."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ffedge.ff import ConfusionMemory, wrong_labels
from ffedge.finetuning.numerics import cosine_lr
from ffedge.progress import Reporter
from ffedge.train.model import FFNet
from ffedge.train.run_folder import RunFolder
from ffedge.train.trainer import LocalTrainer, PreparedData, TrainConfig, augment, hard_negatives


@dataclass
class Probe:
    """Called as ``fn(train_seconds, net, data)`` each time another ``every_s`` seconds of training have passed.

    The time the call takes is not counted as training time: benchmarks use it to score
    the net at fixed intervals of training wall time (``benchmarks/time_to_accuracy.py``).
    The net is in training mode; the call must not change its weights.

    A call that returns True stops training after the current step: the run then ends as
    if its epochs were done (this epoch's record and checkpoint, the head, the weights and
    ``metrics.json``), and ``metrics["stopped_by_probe"]`` says at which epoch and step.
    """

    every_s: float
    fn: Callable[[float, FFNet, PreparedData], bool | None]


@dataclass
class Training:
    """What changes while a run trains: the net and its optimizers, the clock, the history, a probe's stop."""

    net: FFNet
    trainer: LocalTrainer
    start_epoch: int = 0  # the first epoch to train (after a resumed checkpoint's)
    elapsed: float = 0.0  # training seconds of the finished epochs (probe calls not counted)
    history: list[dict[str, Any]] = field(default_factory=list)
    next_probe: float = float("inf")  # training seconds at which the probe is called next
    stopped: dict[str, int] | None = None  # where a probe stopped training
    t0: float = 0.0  # when the current epoch's clock started (moved on by the probes' time)

    def seconds(self, now: float) -> float:
        """Training seconds at ``now`` (a ``time.perf_counter()`` reading) within the current epoch."""
        return self.elapsed + now - self.t0

    def stop_clock(self) -> None:
        """The current epoch is over: add its training time to ``elapsed``."""
        self.elapsed += time.perf_counter() - self.t0


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Batches in one epoch (the last one may be short)."""
    return (n_train + cfg.batch_size - 1) // cfg.batch_size


def black_pixel(data: PreparedData) -> np.ndarray:
    """A black pixel, normalized: what augmentation fills uncovered pixels with."""
    return np.array([-m / s for m, s in zip(data.mean, data.std)], np.float32)


def train_epoch(
    run: Training,
    cfg: TrainConfig,
    data: PreparedData,
    epoch: int,
    folder: RunFolder,
    reporter: Reporter,
    probe: Probe | None,
) -> np.ndarray:
    """Train epoch ``epoch`` (0-based) batch by batch; return each layer's mean (loss, g+, g-) over the steps done.

    Starts the epoch's clock (``run.t0``); the caller stops it. A probe that says stop ends the
    epoch after the current step and sets ``run.stopped``. Data parallel: every rank draws the same global
    batches and trains on its shard of each; a last batch smaller than the number of ranks is skipped.
    """
    ds = data.dataset
    n_train, bs = len(ds.y_train), cfg.batch_size
    steps = steps_per_epoch(cfg, n_train)
    total_steps = steps * cfg.epochs
    pred_layers = cfg.prediction_layers(len(run.net.layers))
    fill = black_pixel(data)
    run.t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, epoch])
    perm = rng.permutation(n_train)
    sums = np.zeros((len(run.net.layers), 3))
    ranks = run.trainer.dp.ctx.world_size if run.trainer.dp is not None else 1
    done = 0
    with reporter.task(f"epoch {epoch + 1}/{cfg.epochs}", steps) as advance:
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            if len(idx) < ranks:  # a shard for every rank, or no step
                break
            run.trainer.set_lr(cosine_lr(cfg.lr, epoch * steps + i, total_steps))
            shard = run.trainer.shard(len(idx))
            x_pos, x_neg = batch_inputs(run.net, cfg, data, idx, shard, fill, rng, pred_layers, run.trainer.confusion)
            folder.phase = f"in epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps}"
            stats = np.array(run.trainer.step(x_pos, x_neg, len(idx)))
            run.trainer.learn_confusion(pred_layers)
            sums += stats
            done += 1
            advance(1, loss=f"{stats[-1, 0]:.3f}")
            if probe is not None and _probe_says_stop(run, probe, data):
                run.stopped = {"epoch": epoch + 1, "step": i + 1, "steps_per_epoch": steps}
                break
    return sums / max(done, 1)


class EpochEngine:
    """How a run trains its epochs: here, in this process (:func:`train_epoch`). A run trained across processes
    as a layer pipeline (:mod:`ffedge.train.layer_pipeline`) hands its own to :func:`ffedge.train.pipeline.train_run`;
    evaluation, checkpoints and the run folder stay the same."""

    world_size = 1  # processes that train the run (``metrics.json``'s ``world_size``)
    train_epoch = staticmethod(train_epoch)

    def begin(self, run: Training, data: PreparedData) -> None:
        """Called once the net is built (and restored from a checkpoint on resume), before the first epoch."""


def batch_inputs(
    net: FFNet,
    cfg: TrainConfig,
    data: PreparedData,
    idx: np.ndarray,
    shard: slice,
    fill: np.ndarray,
    rng: np.random.Generator,
    pred_layers: list[int],
    confusion: ConfusionMemory | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative inputs of the ``shard`` of one batch: the augmented images encoded with their true and
    with wrong labels. The random draws are those of the whole batch, so every rank's shard is a part of the batch a
    single process trains on. ``--negatives confused`` draws from ``confusion`` (one process only)."""
    ds, enc = data.dataset, data.encoding
    xb, yb = augment(data.x_train[idx], cfg.shift, cfg.flip, fill, rng, cfg.rotate, cfg.scale), ds.y_train[idx]
    if cfg.negatives == "hard":
        xb, yb = xb[shard], yb[shard]
        neg = hard_negatives(net, enc, xb, yb, pred_layers, cfg.device)
    elif confusion is not None:
        neg = confusion.draw(yb, rng)
    else:
        neg = wrong_labels(yb, ds.num_classes, rng, cfg.wrong_labels)  # [B] or [n, B]
        xb, yb, neg = xb[shard], yb[shard], neg[..., shard].reshape(-1)
    x_pos = torch.from_numpy(enc.encode(xb, yb)).to(cfg.device)
    x_neg = torch.from_numpy(enc.encode(np.tile(xb, (len(neg) // len(yb), 1, 1, 1)), neg)).to(cfg.device)
    return x_pos, x_neg


def _probe_says_stop(run: Training, probe: Probe, data: PreparedData) -> bool:
    """Call the probe if its time has come (off the clock); True if it asks to stop training."""
    if run.seconds(time.perf_counter()) < run.next_probe:
        return False
    p0 = time.perf_counter()
    stop = probe.fn(run.seconds(p0), run.net, data)
    run.t0 += time.perf_counter() - p0  # the probe's time is not training time
    run.next_probe += probe.every_s
    return bool(stop)
