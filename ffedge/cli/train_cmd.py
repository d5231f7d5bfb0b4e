"""`ffedge train`: Forward-Forward training, quantization-aware, of a CNN.

Every training option defaults to None here, meaning "not given": only the
options the user typed go to :func:`ffedge.train.presets.resolve`, which lays
them over the preset (if any) over the TrainConfig defaults. The help texts
state TrainConfig's defaults (a test holds them equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand

from ffedge.bundle.manifest import NORMS
from ffedge.cli.app import DOWNLOAD_HELP, app, choice, dataset_help, err_console, label_mode_help, one_of, print_json
from ffedge.errors import FFEdgeError, MissingExtraError, one_line, quoted
from ffedge.ff import DEFAULT_ALPHA, DEFAULT_LOSS, DEFAULT_THRESHOLD, LOSS_NAMES, registered_losses
from ffedge.ff.defaults import LOCAL_MODES, NEGATIVE_MODES, TRAIN_PRECISIONS
from ffedge.labels import ENCODING_NAMES, FourierEncoding

EncodingName = choice(ENCODING_NAMES)
LabelMode = choice(FourierEncoding.MODES)
NormName = choice(NORMS)
LossName = choice(LOSS_NAMES)
LocalMode = choice(LOCAL_MODES)
NegativeMode = choice(NEGATIVE_MODES)
Precision = choice(TRAIN_PRECISIONS)


PARALLEL_MODES = ("data", "layers")  # --parallel: ffedge.train.data_parallel, ffedge.train.layer_pipeline
ParallelMode = choice(PARALLEL_MODES)


def parse_int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    """``"2,3"`` -> [2, 3]; None stays None."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FFEdgeError(f"{option} takes comma-separated integers, e.g. 2,3 (got {quoted(text)})") from None


def presets_epilog() -> str:
    """The presets' names and descriptions, from the table in :mod:`ffedge.train.presets`."""
    try:
        from ffedge.train.presets import PRESETS
    except MissingExtraError as e:
        return f"Presets (--preset NAME): listing them {e}"
    lines = [f"{name}: {p.description}" for name, p in PRESETS.items()]
    return "Presets (--preset NAME; options you give override the preset's values):\n\n" + "\n\n".join(lines)


class TrainCommand(TyperCommand):
    """``ffedge train``: the help ends with the presets, read from their table when the help is shown
    (the training side is imported only then: other commands and the device install never pay for it)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.epilog = presets_epilog()
        super().format_help(ctx, formatter)


@app.command("train", cls=TrainCommand)
def train(
    preset: Optional[str] = typer.Option(
        None, help="Start from a named recipe (listed below); the options you give override its values."
    ),
    dataset: Optional[str] = typer.Option(None, help=f"{dataset_help()} (default: mnist-5k)."),
    labels: Optional[EncodingName] = typer.Option(None, help="Label encoding (default: fourier)."),
    label_mode: Optional[LabelMode] = typer.Option(None, help=label_mode_help()),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default: 50; with --resume: the run's own)."),
    qat_epochs: Optional[int] = typer.Option(
        None, help="Train in float first, quantization-aware for the last N epochs; 0 with --no-quant (default: 1)."
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        help="Positive examples per batch, each with one negative; with several processes the global batch, "
        "split among them (default: 64).",
    ),
    lr: Optional[float] = typer.Option(
        None, help="Adam learning rate, decayed by a cosine over the run (default: 0.002)."
    ),
    layers: Optional[str] = typer.Option(
        None, help="FF conv layers: CHANNELSxKERNEL, 'p' = 2x2 max-pool after it (default: 16x5p,64x5p,128x3,128x3)."
    ),
    norm: Optional[NormName] = typer.Option(
        None,
        help="Normalization before each conv: 'batch' (BatchNorm, frozen statistics "
        "at inference) or 'rms' (per sample, as Hinton's FF) (default: batch).",
    ),
    shift: Optional[int] = typer.Option(
        None, help="Augmentation: translate each image by up to N pixels, before its label is embedded (default: 2)."
    ),
    rotate: Optional[float] = typer.Option(
        None,
        help="Augmentation: rotate each image by up to this many degrees, before its label is embedded (default: 12.0).",
    ),
    scale: Optional[float] = typer.Option(
        None, help="Augmentation: zoom each image by a factor in [1 - scale, 1 + scale] (default: 0.1)."
    ),
    flip: Optional[bool] = typer.Option(
        None, "--flip/--no-flip", help="Augmentation: mirror half of the images left-right (default: --no-flip)."
    ),
    bits: Optional[int] = typer.Option(None, help="Bit width of activations, 2..8 (default: 8)."),
    weight_bits: Optional[int] = typer.Option(
        None,
        help="Bit width of weights (default: min(bits, 7); 8 saturates onnxruntime's integer convs on x86 without VNNI).",
    ),
    quant: Optional[bool] = typer.Option(
        None, "--quant/--no-quant", help="Quantization-aware training, or a float model (baseline) (default: --quant)."
    ),
    loss: Optional[LossName] = typer.Option(
        None,
        help=f"Layer loss: {one_of([f'{l.name} ({l.summary})' for l in registered_losses()])} (default: {DEFAULT_LOSS}).",
    ),
    alpha: Optional[float] = typer.Option(None, help=f"Sharpness of the loss (default: {DEFAULT_ALPHA})."),
    threshold: Optional[float] = typer.Option(
        None, help=f"Goodness threshold of the bce loss (default: {DEFAULT_THRESHOLD})."
    ),
    local: Optional[LocalMode] = typer.Option(
        None,
        help="'pair': a layer's loss also updates the layer before it; 'layer': pure FF, detached inputs (default: pair).",
    ),
    negatives: Optional[NegativeMode] = typer.Option(
        None,
        help="'random' wrong labels; 'hard': the wrong label the net likes most (scores every label first); "
        "'confused': half random, half drawn towards the class pairs the training steps found confused, from "
        "goodness they computed anyway (default: random).",
    ),
    wrong_labels: Optional[int] = typer.Option(
        None,
        help="Wrong labels per image and step; with more than 1 the loss is the "
        "softmax cross-entropy of the right label among them (default: 1).",
    ),
    predict_layers: Optional[str] = typer.Option(
        None, help="Layers (0-based, comma-separated) whose goodness is summed to predict (default: the last)."
    ),
    head_layers: Optional[str] = typer.Option(
        None,
        help="Layers (0-based, comma-separated) whose neutral-label activities the softmax head reads "
        "(default: every layer but the last, so that mode topk's neutral pass stops a layer early).",
    ),
    head_epochs: Optional[int] = typer.Option(
        None, help="Epochs of the softmax head on frozen neutral-label activities (default: 40)."
    ),
    head_grid: Optional[int] = typer.Option(
        None,
        help="The head reads each head layer's activity averaged over a GRID x GRID grid of cells, "
        "each cell length-normalized; 1 = the global mean (default: 2).",
    ),
    head_augment: Optional[int] = typer.Option(
        None,
        help="Augmented copies of the training images (the FF training's --shift/--rotate/--scale/--flip) "
        "the head is fitted on, besides the images themselves; 0 = none (default: 4).",
    ),
    seed: Optional[int] = typer.Option(None, help="Random seed; same seed, same machine: same result (default: 0)."),
    device: Optional[str] = typer.Option(None, help="torch device: cpu or cuda (default: cpu)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: all cores)."),
    precision: Optional[Precision] = typer.Option(
        None,
        help="Arithmetic of the float epochs: fp32, bf16 (autocast) or auto (bf16 on CPUs with "
        "native bf16: AMX or AVX512-BF16, else fp32); QAT is always fp32 (default: auto).",
    ),
    eval_samples: Optional[int] = typer.Option(
        None, help="Held-out images scored after each epoch; 0 = all; the final score always uses all (default: 100)."
    ),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset directory (default: $FFEDGE_DATA or the user cache)."),
    out: Optional[Path] = typer.Option(
        None, help="Run directory (default: runs/DATASET-LABELS; with --preset: runs/PRESET)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from its last epoch (with its own config.json; only --epochs applies).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace --out if it is a run folder ffedge wrote (only once the new run is complete)."
    ),
    download: bool = typer.Option(True, "--download/--no-download", help=DOWNLOAD_HELP),
    as_json: bool = typer.Option(
        False, "--json", help="Print the run folder and its metrics as JSON (progress and log lines go to stderr)."
    ),
    nproc: Optional[int] = typer.Option(
        None,
        help="Train in N processes on this machine, data parallel or as a layer pipeline (--parallel) (through "
        "torch.distributed.run; each gets "
        "cores/N threads; with --device cuda one GPU each). Several machines: start 'torchrun ... -m ffedge.cli "
        "train' on each instead.",
    ),
    parallel: ParallelMode = typer.Option(
        "data",
        "--parallel",
        help="How several processes (--nproc or torchrun) share the work: 'data' (each trains the whole net on its "
        "share of every batch) or 'layers' (a pipeline: the layers split into consecutive stages, one per process, "
        "each training on the outputs of the one before; the weights of one process) (default: data).",
    ),
    dist_timeout: float = typer.Option(
        300.0,
        help="Several processes: seconds a process waits for another at a synchronization point before the "
        "whole job stops with an error (a process that died ends it at once).",
    ),
) -> None:
    """Train a quantization-aware Forward-Forward CNN with spatially-extended labels.

    Under torchrun (or with --nproc N) the processes train data parallel: the same model on shards of each batch;
    with --parallel layers, as a pipeline of layer stages.
    """
    import sys

    from ffedge.fsutil import sigterm_as_interrupt
    from ffedge.progress import QuietReporter, RichReporter
    from ffedge.train import resume_run, train_run
    from ffedge.train.distributed import launch_local, process_group, torchrun_env
    from ffedge.train.presets import resolve
    from ffedge.train.run_folder import TrainingInterrupted

    env = torchrun_env()
    if parallel == "layers" and nproc is None and env is None:
        raise FFEdgeError("--parallel layers splits the layers among processes: add --nproc N, or start under torchrun")
    if nproc is not None and env is None:
        raise typer.Exit(launch_local(nproc, sys.argv[1:]))  # ranks that run this command again, under torch's launcher
    if nproc is not None and env is not None and nproc != env["WORLD_SIZE"]:
        raise FFEdgeError(
            f"--nproc {nproc} launches processes on this machine; under torchrun the job has WORLD_SIZE {env['WORLD_SIZE']}"
        )

    if resume and force:
        raise FFEdgeError("--resume and --force exclude each other")
    if resume and preset is not None:
        raise FFEdgeError("--preset does not apply to --resume: a resumed run continues with its own config.json")
    given: dict[str, Any] = dict(
        dataset=dataset,
        labels=labels,
        epochs=epochs,
        qat_epochs=qat_epochs,
        batch_size=batch_size,
        lr=lr,
        layers=layers,
        norm=norm,
        shift=shift,
        rotate=rotate,
        scale=scale,
        flip=flip,
        bits=bits,
        weight_bits=weight_bits,
        quant=quant,
        loss=loss,
        alpha=alpha,
        threshold=threshold,
        local=local,
        negatives=negatives,
        wrong_labels=wrong_labels,
        predict_layers=parse_int_list(predict_layers, "--predict-layers"),
        head_layers=parse_int_list(head_layers, "--head-layers"),
        head_epochs=head_epochs,
        head_grid=head_grid,
        head_augment=head_augment,
        seed=seed,
        device=device,
        threads=threads,
        precision=precision,
        eval_samples=eval_samples,
        data_dir=str(data_dir) if data_dir else None,
        label_params={"mode": label_mode} if label_mode else None,
    )
    cfg = resolve(preset, {k: v for k, v in given.items() if v is not None})
    if label_mode and cfg.labels != "fourier":
        raise FFEdgeError("--label-mode applies to --labels fourier only")
    out_dir = out or Path("runs") / (preset if preset is not None else f"{cfg.dataset.split(':')[0]}-{cfg.labels}")
    group_device = cfg.device
    if resume and env is not None:  # the ranks' devices: the run's own, as a resumed run trains on it
        from ffedge.train.run_files import read_run_config

        group_device = str(read_run_config(out_dir)["train"].get("device", "cpu"))
    try:
        with sigterm_as_interrupt(), process_group(group_device, dist_timeout) as ctx:
            reporter = RichReporter(log_to_stderr=as_json) if ctx.is_main else QuietReporter()
            if parallel == "layers":
                from ffedge.train.layer_pipeline import resume_pipelined, train_pipelined

                if resume:
                    metrics = resume_pipelined(out_dir, ctx, epochs=epochs, reporter=reporter, download=download)
                else:
                    metrics = train_pipelined(cfg, out_dir, ctx, force=force, reporter=reporter, download=download)
            elif resume:
                metrics = resume_run(out_dir, epochs=epochs, reporter=reporter, download=download, ctx=ctx)
            else:
                metrics = train_run(cfg, out_dir, force=force, reporter=reporter, download=download, ctx=ctx)
            is_main = ctx.is_main
    except TrainingInterrupted as e:
        err_console.print(one_line(str(e)), soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    if as_json and is_main:
        print_json({"run": str(out_dir), "metrics": metrics})
