"""A training run on disk: ``config.json``, ``checkpoint.pt`` (resume), ``weights.pt``, ``metrics.json``.

Every file is written atomically. Every option and the output folder are checked
before the dataset is loaded, and nothing is created before the dataset has been
checked too, so bad input leaves no half-made run dir.

Where the run goes: a new or empty folder is written in place (a checkpoint after
every epoch, so an interrupted run can be resumed; stopped before the first one,
nothing is left). ``--force`` replaces only a run folder ffedge wrote (its own
files, no links): the new run is trained in a temp folder beside it and swapped
in only when it is complete, so the old run survives a failed or interrupted
one. Ctrl-C and SIGTERM raise :class:`TrainingInterrupted`, whose message says
what was kept.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np
import torch

from ffedge.errors import FFEdgeError, quoted
from ffedge.fsutil import (
    Terminated,
    atomic_path,
    atomic_write_json,
    check_out_folder,
    is_temp_of,
    make_folders,
    ownership_problem,
    remove_made_folders,
    replace_folder,
    signals_held,
)
from ffedge.progress import QuietReporter, Reporter
from ffedge.finetuning.numerics import cosine_lr, wrong_labels
from ffedge.train.model import FFNet, layers_to_str, parse_layers
from ffedge.train.trainer import (
    Diverged,
    LocalTrainer,
    PreparedData,
    TrainConfig,
    hard_negatives,
    augment,
    build_model,
    to_quantized,
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
RUN_FILES = (CONFIG, CHECKPOINT, WEIGHTS, METRICS)
RUN_FORMAT = 1


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a training run; the message says what was kept."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 130 after Ctrl-C (SIGINT), 143 after SIGTERM


def _save_torch(path: Path, obj: Any) -> None:
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
        raise FFEdgeError(f"cannot read {path}: it is corrupt or not a tensor file ffedge wrote ({type(e).__name__})") from None


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
        return isinstance(v, list) and (n is None or len(v) == n) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)

    def numbers(v: Any, n: int) -> bool:
        return isinstance(v, list) and len(v) == n and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)

    if not isinstance(cfg, dict):
        raise FFEdgeError(f"{path} is not a run config (a JSON object)")
    for key in ("format", "train", "classes", "input", "encoding", "model"):
        if key not in cfg:
            raise FFEdgeError(f"{path} lacks the key '{key}'")
    if cfg["format"] != RUN_FORMAT:
        raise FFEdgeError(f"{path}: run format {quoted(cfg['format'])} is not supported (this ffedge reads {RUN_FORMAT})")
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
        raise FFEdgeError(f"{path} does not match {CONFIG}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    net.eval()
    return cfg, net


# ---------------------------------------------------------------- where a run is written


def _known_run_entry(rel: PurePosixPath, is_dir: bool) -> bool:
    return not is_dir and len(rel.parts) == 1 and (rel.name in RUN_FILES or is_temp_of(rel.name, RUN_FILES))


def run_dir_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a run folder ffedge wrote (so ``--force`` may not replace it), or None."""
    why = ownership_problem(folder, _known_run_entry)
    if why is not None:
        return why
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        return f"it has no {CONFIG}"
    except (OSError, ValueError, RecursionError):
        cfg = None
    if not (isinstance(cfg, dict) and isinstance(cfg.get("format"), int) and isinstance(cfg.get("train"), dict)):
        return f"its {CONFIG} is not one ffedge wrote"
    return None


def _out_mode(out: Path, resume: bool, force: bool) -> str:
    """``fresh`` (a new or empty folder), ``replace`` (``--force`` over a run ffedge wrote) or ``resume``."""
    check_out_folder(out)
    if resume:
        if not (out / CONFIG).is_file():
            raise FFEdgeError(f"--resume: {out} holds no run to resume ({CONFIG} missing)")
        return "resume"
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    if not force:
        raise FFEdgeError(f"{out} already exists: pass --resume to continue that run or --force to overwrite it")
    why = run_dir_problem(out)
    if why is not None:
        raise FFEdgeError(f"--force replaces only a run folder ffedge wrote, and {out} is not one ({why}): nothing was deleted")
    return "replace"


class _RunFolder:
    """Where a run is written, and what is left of it when training stops early."""

    def __init__(self, out: Path, mode: str, saved_epoch: int | None) -> None:
        self.out, self.mode = out, mode
        self.dir = out
        self.tmp: Path | None = None  # replace mode: the folder the new run is trained in
        self.made: list[Path] = []
        self.opened = self.committed = False
        self.saved_epoch = saved_epoch  # the epoch of the checkpoint on disk
        self.phase = "while loading the data"

    def open(self) -> None:
        if self.mode == "replace":
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.absolute().parent))
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(self.tmp, 0o777 & ~mask)  # mkdtemp makes 0700
            self.dir = self.tmp
        elif self.mode == "fresh":
            self.made = make_folders(self.out)
        self.opened = True

    def commit(self) -> None:
        """The run is complete: in replace mode, swap it in for the old one."""
        if self.tmp is not None:
            tmp, self.tmp = self.tmp, None  # from here on the new run is never discarded
            replace_folder(tmp, self.out, run_dir_problem)
        self.committed = True
        self.phase = "after the run was complete"

    def abandon(self) -> str:
        """Remove what must not stay after a failure; say what is kept."""
        if self.committed:
            return f"the finished run is in {self.out}"
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return f"{self.out} is unchanged (the new run was discarded)"
        if self.mode == "replace":
            return f"{self.out} is unchanged"
        if self.saved_epoch is None:
            if self.mode == "fresh" and self.opened:
                for name in RUN_FILES:
                    (self.out / name).unlink(missing_ok=True)
                remove_made_folders(self.made)
            return "nothing was kept" if self.mode == "fresh" else "nothing new was kept"
        return (f"the checkpoint of epoch {self.saved_epoch} is kept; continue with: "
                f"ffedge train --resume --out {shlex.quote(str(self.out))}")

    def stopped(self, e: BaseException) -> BaseException:
        """The error to raise for ``e`` that stopped training, after cleaning up."""
        kept = self.abandon()
        if isinstance(e, KeyboardInterrupt):
            if isinstance(e, Terminated):
                return TrainingInterrupted(f"terminated (SIGTERM) {self.phase}: {kept}", exit_code=143)
            return TrainingInterrupted(f"interrupted {self.phase}: {kept}")
        if isinstance(e, Diverged):
            return FFEdgeError(f"training diverged {self.phase}: {e} (try a smaller --lr or --alpha); {kept}")
        if isinstance(e, OSError) and self.opened:
            return FFEdgeError(f"cannot write the run in {self.dir}: {e.strerror or e}; {kept}")
        return e


def _check_checkpoint(state: Any, path: Path) -> dict[str, Any]:
    """A checkpoint has the keys and types :func:`_train` uses; else one clear error."""
    if not isinstance(state, dict):
        raise FFEdgeError(f"{path} is not a checkpoint ffedge wrote")
    for key, types in (("model", dict), ("optimizers", list), ("epoch", int), ("elapsed", (int, float)), ("history", list)):
        if key not in state:
            raise FFEdgeError(f"{path} lacks '{key}': not a checkpoint ffedge wrote")
        if not isinstance(state[key], types) or isinstance(state[key], bool):
            raise FFEdgeError(f"{path}: '{key}' has the wrong type ({type(state[key]).__name__})")
    if state["epoch"] < 0 or not np.isfinite(state["elapsed"]):
        raise FFEdgeError(f"{path}: epoch {state['epoch']} / elapsed {state['elapsed']} are not those of a run")
    try:
        json.dumps(state["history"], allow_nan=True)  # it ends up in metrics.json
    except (TypeError, ValueError):
        raise FFEdgeError(f"{path}: 'history' holds more than numbers and strings: not a checkpoint ffedge wrote") from None
    return state


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


def train_run(
    cfg: TrainConfig,
    out: str | Path,
    force: bool = False,
    reporter: Reporter | None = None,
    probe: Probe | None = None,
) -> dict[str, Any]:
    """Train a new run in ``out`` and return its metrics (also written to ``metrics.json``).

    ``force`` replaces ``out`` only if it is a run folder ffedge wrote, and only once the new run is complete.
    Ctrl-C raises :class:`TrainingInterrupted`, which says what was kept.
    """
    cfg.validate()
    mode = _out_mode(Path(out), resume=False, force=force)
    return _train(cfg, Path(out), None, mode, reporter or QuietReporter(), probe)


def resume_run(out: str | Path, epochs: int | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Continue the run in ``out`` from its last finished epoch (optionally to more ``epochs``).

    The cosine schedule is laid over the new total, so extending a run changes the remaining steps.
    """
    out = Path(out)
    _out_mode(out, resume=True, force=False)
    cfg = TrainConfig.from_dict(read_run_config(out)["train"], source=str(out / CONFIG))
    if epochs is not None:
        cfg.epochs = epochs
    cfg.validate()
    state = _check_checkpoint(load_torch(out / CHECKPOINT), out / CHECKPOINT) if (out / CHECKPOINT).exists() else None
    if state is not None and state["epoch"] > cfg.epochs:
        raise FFEdgeError(f"--epochs {cfg.epochs}: the run already has {state['epoch']} epochs")
    return _train(cfg, out, state, "resume", reporter or QuietReporter())


def _train(
    cfg: TrainConfig, out: Path, state: dict[str, Any] | None, mode: str, reporter: Reporter, probe: Probe | None = None
) -> dict[str, Any]:
    folder = _RunFolder(out, mode, int(state["epoch"]) if state else None)
    try:
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        data = prepare_data(cfg)
        if len(data.dataset.y_train) < cfg.batch_size:
            raise FFEdgeError(f"{cfg.dataset}: {len(data.dataset.y_train)} training images, fewer than one batch of {cfg.batch_size}")
        if cfg.wrong_labels >= data.dataset.num_classes:
            raise FFEdgeError(f"--wrong-labels {cfg.wrong_labels}: {cfg.dataset} has {data.dataset.num_classes} classes, "
                              f"so at most {data.dataset.num_classes - 1} wrong labels per image")
        # Everything is checked: from here on the run folder is written.
        folder.open()
        folder.phase = "while setting up training"
        metrics = _fit(cfg, data, folder, state, reporter, probe)
        folder.commit()
    except BaseException as e:
        err = folder.stopped(e)
        if err is e:
            raise
        raise err from None
    return metrics


def _restore(net: FFNet, trainer: LocalTrainer, state: dict[str, Any], folder: _RunFolder) -> None:
    path = folder.out / CHECKPOINT
    if len(state["optimizers"]) != len(trainer.optimizers):
        raise FFEdgeError(f"{path} holds {len(state['optimizers'])} optimizers, the net of {CONFIG} has {len(trainer.optimizers)} layers")
    try:
        net.load_state_dict(state["model"])
        for opt, sd in zip(trainer.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise FFEdgeError(f"{path} does not match {CONFIG}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _fit(
    cfg: TrainConfig, data: PreparedData, folder: _RunFolder, state: dict[str, Any] | None, reporter: Reporter,
    probe: Probe | None,
) -> dict[str, Any]:
    """Train epoch by epoch (a checkpoint after each), then the head; write weights and metrics.

    With ``qat_epochs`` the net trains in float first and becomes quantization-aware for the last epochs.
    """
    ds, enc, out = data.dataset, data.encoding, folder.dir
    atomic_write_json(out / CONFIG, run_config_dict(cfg, data))

    float_epochs = cfg.float_epochs()
    torch.manual_seed(cfg.seed)
    start_epoch = int(state["epoch"]) if state is not None else 0
    if state is not None and isinstance(state.get("quantized"), bool):
        quant_now = state["quantized"]
    else:  # a new run, or a checkpoint from before float phases existed (quantized from the start)
        quant_now = cfg.quant and (float_epochs == 0 or start_epoch > float_epochs)
    net = build_model(cfg, enc.out_channels, ds.image_shape[1:], ds.num_classes, quant=quant_now)
    net = net.to(cfg.device)
    trainer = LocalTrainer(net, cfg)
    history: list[dict[str, Any]] = []
    elapsed = 0.0
    fill = np.array([-m / s for m, s in zip(data.mean, data.std)], np.float32)  # a black pixel, normalized
    next_probe = probe.every_s if probe else float("inf")
    stopped: dict[str, int] | None = None  # where a probe stopped training
    if state is not None:
        _restore(net, trainer, state, folder)
        start_epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        history = list(state["history"])
        reporter.log(f"resuming {folder.out} at epoch {start_epoch + 1}/{cfg.epochs}")

    n_layers = len(net.layers)
    pred_layers = cfg.prediction_layers(n_layers)
    n_train, bs = len(ds.y_train), cfg.batch_size
    steps_per_epoch = (n_train + bs - 1) // bs
    total_steps = steps_per_epoch * cfg.epochs
    sub = eval_subset(len(ds.y_test), cfg.eval_samples, cfg.seed)
    precision = cfg.float_precision()
    if float_epochs == 0 and cfg.quant:
        arith = f"int{cfg.bits} QAT"
    else:
        arith = f"{precision} float" + (f" then int{cfg.bits} QAT for the last {cfg.qat_epochs}" if cfg.quant else "")
    reporter.log(
        f"training {cfg.dataset} ({n_train} train / {len(ds.y_test)} held-out), labels {cfg.labels}, "
        f"layers {cfg.layers}, {arith}, {cfg.loss} loss, {cfg.local}-local, {cfg.epochs} epochs"
    )
    for epoch in range(start_epoch, cfg.epochs):
        folder.phase = f"in epoch {epoch + 1}/{cfg.epochs}"
        if cfg.quant and not net.quant.enabled and epoch >= float_epochs:
            net = to_quantized(net, cfg)
            trainer = LocalTrainer(net, cfg)
            reporter.log(f"epoch {epoch + 1}: quantization-aware training from here on (int{cfg.bits} activations)")
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, epoch])
        perm = rng.permutation(n_train)
        sums = np.zeros((n_layers, 3))
        with reporter.task(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch) as advance:
            for i in range(steps_per_epoch):
                trainer.set_lr(cosine_lr(cfg.lr, epoch * steps_per_epoch + i, total_steps))
                idx = perm[i * bs : (i + 1) * bs]
                xb, yb = augment(data.x_train[idx], cfg.shift, cfg.flip, fill, rng, cfg.rotate, cfg.scale), ds.y_train[idx]
                if cfg.negatives == "hard":
                    neg = hard_negatives(net, enc, xb, yb, pred_layers, cfg.device)
                else:
                    neg = wrong_labels(yb, ds.num_classes, rng, cfg.wrong_labels).reshape(-1)
                x_pos = torch.from_numpy(enc.encode(xb, yb)).to(cfg.device)
                x_neg = torch.from_numpy(enc.encode(np.tile(xb, (len(neg) // len(yb), 1, 1, 1)), neg)).to(cfg.device)
                folder.phase = f"in epoch {epoch + 1}/{cfg.epochs}, step {i + 1}/{steps_per_epoch}"
                stats = np.array(trainer.step(x_pos, x_neg))
                sums += stats
                advance(1, loss=f"{stats[-1, 0]:.3f}")
                if probe is not None and elapsed + time.perf_counter() - t0 >= next_probe:
                    p0 = time.perf_counter()
                    stop = probe.fn(elapsed + p0 - t0, net, data)
                    t0 += time.perf_counter() - p0  # the probe's time is not training time
                    next_probe += probe.every_s
                    if stop:
                        stopped = {"epoch": epoch + 1, "step": i + 1, "steps_per_epoch": steps_per_epoch}
                        break
        folder.phase = f"in epoch {epoch + 1}/{cfg.epochs}"
        means = sums / (i + 1)
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
        with signals_held():  # a Ctrl-C now waits until the checkpoint is on disk and counted
            _save_torch(
                out / CHECKPOINT,
                {
                    "model": net.state_dict(),
                    "optimizers": [opt.state_dict() for opt in trainer.optimizers],
                    "epoch": epoch + 1,
                    "quantized": net.quant.enabled,
                    "elapsed": elapsed,
                    "history": history,
                },
            )
            folder.saved_epoch = epoch + 1
            folder.phase = f"after epoch {epoch + 1}/{cfg.epochs}"
        if stopped is not None:
            reporter.log(f"stopped by the probe at step {stopped['step']}/{steps_per_epoch} of epoch {epoch + 1}")
            break
    if cfg.quant and not net.quant.enabled:
        # Stopped by a probe in the float phase: the run still ends int8, as config.json says. The quantizers
        # collect their scales over a few QAT steps (counted as training time); the weights barely move.
        folder.phase = "while quantizing the net stopped in its float phase"
        t0 = time.perf_counter()
        net = to_quantized(net, cfg)
        trainer = LocalTrainer(net, cfg)
        rng = np.random.default_rng([cfg.seed, cfg.epochs])
        for _ in range(cfg.quant_config().stats_steps):
            idx = rng.choice(n_train, bs, replace=False)
            xb, yb = data.x_train[idx], ds.y_train[idx]
            neg = wrong_labels(yb, ds.num_classes, rng)
            trainer.set_lr(0.0)
            trainer.step(torch.from_numpy(enc.encode(xb, yb)).to(cfg.device), torch.from_numpy(enc.encode(xb, neg)).to(cfg.device))
        elapsed += time.perf_counter() - t0
        reporter.log(f"quantized after the float phase ({cfg.quant_config().stats_steps} calibration steps)")
    train_seconds = elapsed

    # The softmax head learns on frozen neutral-label activities.
    folder.phase = "while fitting the head"
    t_head = time.perf_counter()
    f_train = neutral_features(net, enc, data.x_train, cfg.device)
    f_test = neutral_features(net, enc, data.x_test, cfg.device)
    fit_head(net, f_train, ds.y_train, cfg.head_epochs, cfg.seed)
    head_seconds = time.perf_counter() - t_head

    folder.phase = "while scoring the held-out split"
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
        "float_precision": precision,
        "history": history,
    }
    if stopped is not None:
        metrics["stopped_by_probe"] = stopped
    folder.phase = "while writing the weights"
    _save_torch(out / WEIGHTS, net.state_dict())
    atomic_write_json(out / METRICS, metrics)
    reporter.log(
        f"held-out accuracy {metrics['test_accuracy']:.4f} (goodness, layers {pred_layers}), "
        f"head {metrics['head_test_accuracy']:.4f}; per layer "
        f"{' '.join(f'{a:.4f}' for a in metrics['per_layer_test_accuracy'])}; trained {train_seconds:.0f}s -> {folder.out}"
    )
    return metrics
