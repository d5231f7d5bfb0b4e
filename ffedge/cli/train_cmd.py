"""`ffedge train`: Forward-Forward training, quantization-aware, of a CNN."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ffedge.cli.app import app, err_console
from ffedge.errors import FFEdgeError, one_line, quoted


def parse_int_list(text: Optional[str], option: str) -> Optional[list[int]]:
    """``"2,3"`` -> [2, 3]; None stays None."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FFEdgeError(f"{option} takes comma-separated integers, e.g. 2,3 (got {quoted(text)})") from None


@app.command("train")
def train(
    dataset: str = typer.Option("mnist-5k", help="mnist-5k (embedded), mnist, fashion-mnist, cifar10, cifar100, folder:PATH or npz:PATH."),
    labels: str = typer.Option("fourier", help="Label encoding: fourier, morph or onehot."),
    label_mode: Optional[str] = typer.Option(None, help="fourier only: 'channel' (extra input channel, default) or 'add' (superimposed, as in the paper)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default: 40; with --resume: the run's own)."),
    batch_size: int = typer.Option(64, help="Positive examples per batch (each with one negative)."),
    lr: float = typer.Option(2e-3, help="Adam learning rate, decayed by a cosine over the run."),
    layers: Optional[str] = typer.Option(None, help="FF conv layers: CHANNELSxKERNEL, 'p' = 2x2 max-pool after it (default: 16x5p,64x5p,128x3,128x3)."),
    bits: int = typer.Option(8, help="Bit width of activations (2..8)."),
    weight_bits: Optional[int] = typer.Option(None, help="Bit width of weights (default: min(bits, 7); 8 saturates onnxruntime's integer convs on x86 without VNNI)."),
    no_quant: bool = typer.Option(False, "--no-quant", help="Train a float model (baseline) instead of quantization-aware."),
    loss: str = typer.Option("symba", help="Layer loss: symba (softplus(-alpha*(g+ - g-))) or bce (threshold, as in the paper)."),
    alpha: float = typer.Option(4.0, help="Sharpness of the loss."),
    threshold: float = typer.Option(1.0, help="Goodness threshold of the bce loss."),
    local: str = typer.Option("pair", help="'pair': a layer's loss also updates the layer before it; 'layer': pure FF, detached inputs."),
    negatives: str = typer.Option("random", help="'random' wrong labels or 'hard' (the wrong label the net likes most)."),
    predict_layers: Optional[str] = typer.Option(None, help="Layers (0-based, comma-separated) whose goodness is summed to predict (default: the last)."),
    head_epochs: int = typer.Option(40, help="Epochs of the softmax head on frozen neutral-label activities."),
    seed: int = typer.Option(0, help="Random seed (same seed, same machine: same result)."),
    device: str = typer.Option("cpu", help="torch device: cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: all cores)."),
    eval_samples: int = typer.Option(100, help="Held-out images scored after each epoch (0 = all; the final score always uses all)."),
    data_dir: Optional[Path] = typer.Option(None, help="Dataset directory (default: $FFEDGE_DATA or the user cache)."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/DATASET-LABELS)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it is a run folder ffedge wrote (only once the new run is complete)."),
) -> None:
    """Train a quantization-aware Forward-Forward CNN with spatially-extended labels."""
    from ffedge.fsutil import sigterm_as_interrupt
    from ffedge.progress import RichReporter
    from ffedge.train import TrainConfig, resume_run, train_run
    from ffedge.train.run import TrainingInterrupted

    out_dir = out or Path("runs") / f"{dataset.split(':')[0]}-{labels}"
    if resume and force:
        raise FFEdgeError("--resume and --force exclude each other")
    if label_mode and labels != "fourier":
        raise FFEdgeError("--label-mode applies to --labels fourier only")
    reporter = RichReporter()
    try:
        with sigterm_as_interrupt():
            if resume:
                resume_run(out_dir, epochs=epochs, reporter=reporter)
                return
            cfg = TrainConfig(
                dataset=dataset, labels=labels, label_params={"mode": label_mode} if label_mode else {},
                batch_size=batch_size, lr=lr, quant=not no_quant, bits=bits, weight_bits=weight_bits, loss=loss,
                alpha=alpha, threshold=threshold, local=local, negatives=negatives,
                predict_layers=parse_int_list(predict_layers, "--predict-layers"), head_epochs=head_epochs,
                seed=seed, device=device, threads=threads, eval_samples=eval_samples,
                data_dir=str(data_dir) if data_dir else None,
            )
            if epochs is not None:
                cfg.epochs = epochs
            if layers is not None:
                cfg.layers = layers
            train_run(cfg, out_dir, force=force, reporter=reporter)
    except TrainingInterrupted as e:
        err_console.print(escape(one_line(str(e))), highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
