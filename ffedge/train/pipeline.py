"""A training run from start to end: check, load the data, train epoch by epoch, fit the head, write the run.

The run's files are :mod:`ffedge.train.run_files`; where they are written and
what is kept when training stops early is :mod:`ffedge.train.run_folder`. Every
option and the output folder are checked before the dataset is loaded, and
nothing is created before the dataset has been checked too, so bad input leaves
no half-made run dir. A checkpoint is written after every epoch, so an
interrupted run can be resumed (:func:`resume_run`).

Under torchrun (a :class:`~ffedge.train.distributed.DistContext` of several ranks) the run is data parallel
(:mod:`ffedge.train.data_parallel`): every rank trains and scores its shard, rank 0 alone writes the run folder
and fits the head, and a checkpoint resumes with any number of ranks (one included).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffedge.errors import FFEdgeError
from ffedge.fsutil import atomic_write_json, signals_held
from ffedge.labels import LabelEncoding, encoding_from_config
from ffedge.progress import QuietReporter, Reporter
from ffedge.train.checkpoint import read_checkpoint, restore, save_checkpoint
from ffedge.train.data_parallel import DataParallel, model_sha256
from ffedge.train.distributed import SINGLE, DistContext, is_comm_error, lost
from ffedge.train.epoch import EpochEngine, Probe, Training
from ffedge.train.evaluation import epoch_record, final_metrics, heldout_scores, log_epoch
from ffedge.train.model import FFNet
from ffedge.train.qat import quantize_stopped_float_net, quantized_at_start, start_qat_if_due
from ffedge.train.run_files import CHECKPOINT, CONFIG, METRICS, WEIGHTS, read_run_config, run_config_dict, save_torch
from ffedge.train.run_folder import RunFolder, out_mode
from ffedge.train.trainer import (
    LocalTrainer,
    PreparedData,
    TrainConfig,
    build_model,
    eval_subset,
    fit_head,
    head_training_features,
    neutral_features,
    prepare_data,
)


def train_run(
    cfg: TrainConfig,
    out: str | Path,
    force: bool = False,
    reporter: Reporter | None = None,
    probe: Probe | None = None,
    download: bool = True,
    ctx: DistContext = SINGLE,
    engine: EpochEngine | None = None,
) -> dict[str, Any]:
    """Train a new run in ``out`` and return its metrics (also written to ``metrics.json``).

    ``force`` replaces ``out`` only if it is a run folder ffedge wrote, and only once the new run is complete.
    ``download``: a standard dataset's missing files may be downloaded.
    Ctrl-C raises :class:`~ffedge.train.run_folder.TrainingInterrupted`, which says what was kept.
    ``ctx``: this process's rank (:func:`ffedge.train.distributed.process_group`); with several ranks the run is
    data parallel and a rank other than 0 returns only its ``rank``, ``world_size`` and ``model_sha256``.
    ``engine``: how the epochs are trained, when not in this process or data parallel (the layer pipeline's
    rank 0 hands its own, :mod:`ffedge.train.layer_pipeline`).
    """
    cfg.validate()
    # Only rank 0 looks at the folder it alone writes (another rank would find it already begun).
    mode = out_mode(Path(out), resume=False, force=force) if ctx.is_main else "fresh"
    return _train(
        cfg, Path(out), None, mode, reporter or QuietReporter(), probe, download=download, ctx=ctx, engine=engine
    )


def resume_run(
    out: str | Path,
    epochs: int | None = None,
    reporter: Reporter | None = None,
    download: bool = True,
    ctx: DistContext = SINGLE,
    engine: EpochEngine | None = None,
) -> dict[str, Any]:
    """Continue the run in ``out`` from its last finished epoch (optionally to more ``epochs``), with any number of
    ranks (``ctx``; each reads the run folder, so on several machines it must be shared).

    The cosine schedule is laid over the new total, so extending a run changes the remaining steps.
    The label encoding is the one ``config.json`` records (every parameter resolved when the run
    started), not one rebuilt from the label options, so a changed default cannot change a run.
    """
    out = Path(out)
    out_mode(out, resume=True, force=False)
    run_cfg = read_run_config(out)
    cfg = TrainConfig.from_dict(run_cfg["train"], source=str(out / CONFIG))
    if epochs is not None:
        cfg.epochs = epochs
    cfg.validate()
    state = read_checkpoint(out, cfg.epochs)
    encoding = _recorded_encoding(run_cfg, out / CONFIG)
    return _train(
        cfg,
        out,
        state,
        "resume",
        reporter or QuietReporter(),
        encoding=encoding,
        download=download,
        ctx=ctx,
        engine=engine,
    )


def _recorded_encoding(run_cfg: dict[str, Any], path: Path) -> LabelEncoding:
    """The label encoding a run's ``config.json`` records (rebuilt from its resolved parameters)."""
    try:
        return encoding_from_config(run_cfg["encoding"])
    except (
        FFEdgeError,
        TypeError,
        ValueError,
    ) as e:  # TypeError, ValueError: a hand-edited parameter of the wrong kind
        raise FFEdgeError(f"{path}: 'encoding': {e}") from None


def _train(
    cfg: TrainConfig,
    out: Path,
    state: dict[str, Any] | None,
    mode: str,
    reporter: Reporter,
    probe: Probe | None = None,
    encoding: LabelEncoding | None = None,
    download: bool = True,
    ctx: DistContext = SINGLE,
    engine: EpochEngine | None = None,
) -> dict[str, Any]:
    """Load and check the data, then open the run folder and train; on any failure, say what was kept."""
    folder = RunFolder(out, mode, int(state["epoch"]) if state else None, writes=ctx.is_main)
    dp = DataParallel(ctx) if ctx.is_distributed and engine is None else None
    engine = engine or EpochEngine()
    if ctx.is_distributed:
        if probe is not None:
            raise FFEdgeError("a training probe runs in a single process only")
        cfg = replace(cfg, device=ctx.device)  # cuda becomes this rank's GPU
    try:
        torch.set_num_threads(cfg.threads or ctx.cpu_threads())
        data = prepare_data(cfg, encoding, download)
        _check_data(cfg, data, ctx.world_size)
        # Everything is checked: from here on the run folder is written.
        folder.open()
        folder.phase = "while setting up training"
        metrics = _fit(cfg, data, folder, state, reporter, probe, engine, dp)
        folder.commit()
    except BaseException as e:
        if ctx.is_distributed and is_comm_error(e):
            e = lost(ctx, folder.phase)
        err = folder.stopped(e)
        if err is e:
            raise
        raise err from None
    return metrics


def _check_data(cfg: TrainConfig, data: PreparedData, ranks: int = 1) -> None:
    """The dataset fits the options: at least one batch, an image per rank in a batch, room for the wrong labels."""
    ds = data.dataset
    if len(ds.y_train) < cfg.batch_size:
        raise FFEdgeError(f"{cfg.dataset}: {len(ds.y_train)} training images, fewer than one batch of {cfg.batch_size}")
    if cfg.batch_size < ranks:
        raise FFEdgeError(f"--batch-size {cfg.batch_size} is the global batch: give each of the {ranks} ranks an image")
    if cfg.wrong_labels >= ds.num_classes:
        raise FFEdgeError(
            f"--wrong-labels {cfg.wrong_labels}: {cfg.dataset} has {ds.num_classes} classes, "
            f"so at most {ds.num_classes - 1} wrong labels per image"
        )


def _fit(
    cfg: TrainConfig,
    data: PreparedData,
    folder: RunFolder,
    state: dict[str, Any] | None,
    reporter: Reporter,
    probe: Probe | None,
    engine: EpochEngine,
    dp: DataParallel | None = None,
) -> dict[str, Any]:
    """Train epoch by epoch (a checkpoint after each), then the head; write weights and metrics.

    With ``qat_epochs`` the net trains in float first and becomes quantization-aware for the last epochs.
    Data parallel (``dp``): the ranks train together; then rank 0 alone fits the head and writes the results.
    """
    if folder.writes:
        atomic_write_json(folder.dir / CONFIG, run_config_dict(cfg, data))
    run = _start(cfg, data, folder, state, reporter, dp)
    engine.begin(run, data)
    run.next_probe = probe.every_s if probe else float("inf")
    sub = eval_subset(len(data.dataset.y_test), cfg.eval_samples, cfg.seed)
    precision = cfg.float_precision()
    _log_plan(cfg, data, precision, reporter)
    if dp is not None:
        reporter.log(
            f"data parallel on {dp.ctx.world_size} ranks ({dp.ctx.backend}): a global batch of {cfg.batch_size}, "
            f"about {cfg.batch_size // dp.ctx.world_size} images per rank and step"
        )
    for epoch in range(run.start_epoch, cfg.epochs):
        _epoch(run, cfg, data, epoch, sub, folder, reporter, probe, engine)
        if run.stopped is not None:
            reporter.log(
                f"stopped by the probe at step {run.stopped['step']}/{run.stopped['steps_per_epoch']} of epoch {epoch + 1}"
            )
            break
    quantize_stopped_float_net(run, cfg, data, folder, reporter)
    digest = model_sha256(run.net) if dp is None else dp.same_model(run.net, "at the end of training")
    if not folder.writes:
        return {"rank": dp.ctx.rank, "world_size": dp.ctx.world_size, "model_sha256": digest}
    train_seconds = run.elapsed
    f_test, head_seconds = _fit_head(run.net, cfg, data, folder)
    folder.phase = "while scoring the held-out split"
    metrics = final_metrics(run.net, cfg, data, f_test, precision, train_seconds, head_seconds, run.history)
    metrics["world_size"] = engine.world_size if dp is None else dp.ctx.world_size
    metrics["model_sha256"] = digest  # of the trained layers (before the head): equal on every rank
    if run.stopped is not None:
        metrics["stopped_by_probe"] = run.stopped
    _write_results(run.net, metrics, train_seconds, folder, reporter)
    return metrics


def _start(
    cfg: TrainConfig,
    data: PreparedData,
    folder: RunFolder,
    state: dict[str, Any] | None,
    reporter: Reporter,
    dp: DataParallel | None = None,
) -> Training:
    """Seed torch, build the net (float or quantization-aware) and its optimizers; restore a resumed checkpoint."""
    ds, enc = data.dataset, data.encoding
    torch.manual_seed(cfg.seed)
    net = build_model(cfg, enc.out_channels, ds.image_shape[1:], ds.num_classes, quant=quantized_at_start(cfg, state))
    net = net.to(cfg.device)
    run = Training(net, LocalTrainer(net, cfg, dp))
    if state is not None:
        restore(run.net, run.trainer, state, folder.out / CHECKPOINT)
        run.start_epoch, run.elapsed = int(state["epoch"]), float(state["elapsed"])
        run.history = list(state["history"])
        reporter.log(f"resuming {folder.out} at epoch {run.start_epoch + 1}/{cfg.epochs}")
    return run


def _log_plan(cfg: TrainConfig, data: PreparedData, precision: str, reporter: Reporter) -> None:
    """One line that says what is trained, on what, and in which arithmetic."""
    ds = data.dataset
    if cfg.float_epochs() == 0 and cfg.quant:
        arith = f"int{cfg.bits} QAT"
    else:
        arith = f"{precision} float" + (f" then int{cfg.bits} QAT for the last {cfg.qat_epochs}" if cfg.quant else "")
    reporter.log(
        f"training {cfg.dataset} ({len(ds.y_train)} train / {len(ds.y_test)} held-out), labels {cfg.labels}, "
        f"layers {cfg.layers}, {arith}, {cfg.loss} loss, {cfg.local}-local, {cfg.epochs} epochs"
    )


def _epoch(
    run: Training,
    cfg: TrainConfig,
    data: PreparedData,
    epoch: int,
    sub: np.ndarray,
    folder: RunFolder,
    reporter: Reporter,
    probe: Probe | None,
    engine: EpochEngine,
) -> None:
    """One epoch: the switch to QAT when due, training, the held-out record (on the clock), the checkpoint."""
    folder.phase = f"in epoch {epoch + 1}/{cfg.epochs}"
    start_qat_if_due(run, cfg, epoch, reporter)
    means = engine.train_epoch(run, cfg, data, epoch, folder, reporter, probe)
    folder.phase = f"in epoch {epoch + 1}/{cfg.epochs}"
    acc, per_layer = heldout_scores(run.net, cfg, data, sub, run.trainer.dp)
    run.stop_clock()
    rec = epoch_record(epoch, run.elapsed, means, acc, per_layer, len(sub))
    run.history.append(rec)
    log_epoch(reporter, cfg, rec, means, run.elapsed)
    if run.trainer.dp is not None:
        run.trainer.dp.same_model(run.net, f"after epoch {epoch + 1}")
    with signals_held():  # a Ctrl-C now waits until the checkpoint is on disk and counted
        if folder.writes:
            save_checkpoint(folder.dir / CHECKPOINT, run.net, run.trainer, epoch + 1, run.elapsed, run.history)
        folder.saved_epoch = epoch + 1
        folder.phase = f"after epoch {epoch + 1}/{cfg.epochs}"


def _fit_head(net: FFNet, cfg: TrainConfig, data: PreparedData, folder: RunFolder) -> tuple[torch.Tensor, float]:
    """Fit the softmax head on frozen neutral-label activities (of the training images and ``head_augment``
    augmented copies); return the held-out features and the seconds it took."""
    folder.phase = "while fitting the head"
    t_head = time.perf_counter()
    f_train, y_train = head_training_features(net, cfg, data)
    f_test = neutral_features(net, data.encoding, data.x_test, cfg.device)
    fit_head(net, f_train, y_train, cfg.head_epochs, cfg.seed)
    return f_test, time.perf_counter() - t_head


def _write_results(
    net: FFNet, metrics: dict[str, Any], train_seconds: float, folder: RunFolder, reporter: Reporter
) -> None:
    """Write ``weights.pt`` and ``metrics.json``; log the final accuracies."""
    folder.phase = "while writing the weights"
    save_torch(folder.dir / WEIGHTS, net.state_dict())
    atomic_write_json(folder.dir / METRICS, metrics)
    reporter.log(
        f"held-out accuracy {metrics['test_accuracy']:.4f} (goodness, layers {metrics['predict_layers']}), "
        f"head {metrics['head_test_accuracy']:.4f}; per layer "
        f"{' '.join(f'{a:.4f}' for a in metrics['per_layer_test_accuracy'])}; "
        f"trained {train_seconds:.0f}s -> {folder.out}"
    )
