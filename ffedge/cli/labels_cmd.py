"""`ffedge labels`: draw a label encoding's patterns and a test image encoded with every label."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ffedge.cli.app import DOWNLOAD_HELP, app, choice, dataset_help, label_mode_help, print_json, say
from ffedge.errors import FFEdgeError
from ffedge.labels import ENCODING_NAMES, FourierEncoding

EncodingName = choice(ENCODING_NAMES)
LabelMode = choice(FourierEncoding.MODES)


@app.command("labels")
def labels(
    dataset: str = typer.Option(
        "mnist-5k",
        "--dataset",
        help=f"Dataset whose classes and image shape to use: {dataset_help()}.",
    ),
    encoding: EncodingName = typer.Option("fourier", "--labels", help="Label encoding to draw."),
    label_mode: Optional[LabelMode] = typer.Option(None, "--label-mode", help=label_mode_help()),
    out: Path = typer.Option(Path("labels.png"), "--out", help="PNG file to write (replaced atomically)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Folder holding downloaded datasets (default: $FFEDGE_DATA or the user cache folder)."
    ),
    index: int = typer.Option(0, "--index", help="Which test image to encode with every label."),
    scale: int = typer.Option(4, "--scale", min=1, max=16, help="Screen pixels per image pixel."),
    download: bool = typer.Option(True, "--download/--no-download", help=DOWNLOAD_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the file written as JSON."),
) -> None:
    """Draw the label patterns of an encoding and one test image encoded with every label, as a PNG."""
    from ffedge.fsutil import check_out_folder
    from ffedge.labels.draw import write_dataset_label_sheet

    if out.is_dir():
        raise FFEdgeError(f"--out {out} is a folder: name the .png file to write")
    check_out_folder(out.parent, f"--out {out}: its folder")
    path = write_dataset_label_sheet(
        dataset, encoding, out, label_mode=label_mode, data_dir=data_dir, index=index, download=download, scale=scale
    )
    if as_json:
        print_json({"file": str(path), "dataset": dataset, "labels": encoding})
        return
    say(f"wrote {path}")
