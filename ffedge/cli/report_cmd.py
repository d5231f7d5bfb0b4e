"""`ffedge report`: PNGs that explain a trained run (label patterns, activation maps, goodness bars, confusion)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ffedge.cli.app import DOWNLOAD_HELP, app, print_json, say


@app.command("report")
def report(
    run_dir: Path = typer.Argument(..., help="Training run folder (made by ffedge train)."),
    out: Path = typer.Option(
        Path("report"),
        "--out",
        help="Folder for the PNGs and report.json (created; files in it are replaced atomically).",
    ),
    images: int = typer.Option(6, "--images", help="Images in the activation maps and in each goodness-bar figure."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N held-out images (default: all)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Dataset folder (default: the run's, else $FFEDGE_DATA or the user cache)."
    ),
    device: str = typer.Option("cpu", "--device", help="torch device: cpu or cuda."),
    download: bool = typer.Option(True, "--download/--no-download", help=DOWNLOAD_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report (report.json's content) as JSON."),
) -> None:
    """Draw what a trained run learned: label patterns, per-layer activation maps, goodness per label, confusion matrix (needs the train and report extras)."""  # noqa: E501 (typer shows the docstring as the command's help)
    from ffedge.progress import RichReporter
    from ffedge.train.report import write_report

    r = write_report(
        run_dir,
        out,
        images=images,
        limit=limit,
        data_dir=data_dir,
        device=device,
        reporter=RichReporter(log_to_stderr=as_json),
        download=download,
    )
    if as_json:
        print_json(r)
        return
    for name in r["files"] + ["report.json"]:
        say(f"wrote {out / name}")
