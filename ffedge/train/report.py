"""Pictures that explain a trained run (``ffedge report``).

``write_report`` scores the run's held-out split (the same split and
normalization the trainer and ``ffedge eval`` use) by goodness over every label
hypothesis, exactly as the prediction does, and writes into ``out``:

- ``label_patterns.png``: the label encoding's per-class patterns and one
  held-out image encoded with every label (the ``ffedge labels`` sheet);
- ``cams.png``: per-layer class activation maps of a few held-out images: the
  spatial goodness map (per-position contribution to the layer's goodness) of
  the image encoded with its true label, and the same map for the true label
  minus the best wrong label's (what makes the right hypothesis win);
- ``goodness_correct.png`` / ``goodness_wrong.png``: goodness of every label
  hypothesis for a few correctly and wrongly classified images;
- ``confusion.png``: the confusion matrix;
- ``report.json``: accuracy, the files written and which images are shown.

Needs the ``[train]`` extra (torch) and the ``[report]`` extra (matplotlib).
The scoring is :mod:`ffedge.train.report_scoring`, the figures
:mod:`ffedge.train.report_figures` (matplotlib's object-oriented API with the
Agg canvas only: no pyplot, no global backend switch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffedge.errors import FFEdgeError, MissingExtraError, quoted
from ffedge.runtime.evaluate import confusion
from ffedge.fsutil import atomic_write_json, check_out_folder
from ffedge.labels import LabelEncoding, encoding_from_config
from ffedge.labels.draw import label_sheet, save_label_sheet
from ffedge.progress import QuietReporter, Reporter
from ffedge.train.model import FFNet
from ffedge.train.report_figures import draw_cams, draw_confusion, draw_goodness_bars, save_figure
from ffedge.train.report_scoring import Scores, Shown, first_held_out_of_run, pick_images, score_held_out
from ffedge.train.run_files import load_run

FILES = ("label_patterns.png", "cams.png", "goodness_correct.png", "goodness_wrong.png", "confusion.png")


def require_matplotlib() -> Any:
    """The matplotlib module, or :class:`MissingExtraError` naming the ``report`` extra."""
    try:
        import matplotlib
        import matplotlib.figure  # fails here, early, on a broken install
    except ImportError:
        raise MissingExtraError("report", "ffedge report (matplotlib is not installed)") from None
    return matplotlib


def _check_out(out: Path) -> None:
    """``out`` is writable, and the report replaces only files an earlier ffedge report there wrote."""
    check_out_folder(out)
    ours = {"report.json"}
    try:
        old = json.loads((out / "report.json").read_text())
        if isinstance(old, dict) and isinstance(old.get("files"), list) and "confusion" in old:
            ours |= {f for f in old["files"] if isinstance(f, str)}
        else:
            ours = set()
    except FileNotFoundError:
        pass
    except (OSError, ValueError, RecursionError):
        ours = set()
    clash = [name for name in (*FILES, "report.json") if (out / name).exists() and name not in ours]
    if clash:
        raise FFEdgeError(
            f"--out {out} already holds {quoted(clash[0])}, which no ffedge report wrote there: choose another folder"
        )


@dataclass
class _Subject:
    """The run a report is about, loaded: its net (on ``device``), label encoding, class names, prediction layers."""

    cfg: dict[str, Any]
    net: FFNet
    enc: LabelEncoding
    names: list[str]
    predict_layers: list[int]
    who: str  # the run's name (and dataset) in figure titles
    device: str

    @property
    def layers_text(self) -> str:
        """The prediction layers in words, 1-based: ``layer 3`` or ``layers 2+3``."""
        pl = self.predict_layers
        return ("layer " if len(pl) == 1 else "layers ") + "+".join(str(l + 1) for l in pl)


def write_report(
    run_dir: str | Path,
    out: str | Path = "report",
    images: int = 6,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    reporter: Reporter | None = None,
    download: bool = True,
) -> dict[str, Any]:
    """Write the report's PNGs and ``report.json`` into ``out``; return the ``report.json`` content.

    ``images``: images in the activation maps and in each goodness-bar figure;
    ``limit``: score only the first N held-out images (default all); ``download``: a standard dataset's missing
    files may be downloaded.
    """
    rep = reporter or QuietReporter()
    require_matplotlib()
    run_dir, out = Path(run_dir), Path(out)
    _check_args(run_dir, out, images, limit, device)
    run = _load(run_dir, device)
    raw, x, y = first_held_out_of_run(run.cfg, limit, data_dir, download)
    scores = score_held_out(run.net, run.enc, x, y, run.predict_layers, device, rep)
    shown = pick_images(scores, y, images)
    rep.log(f"held-out accuracy {scores.accuracy:.2%} ({len(y)} images, goodness of {run.layers_text})")
    written, cm = _draw_all(run, raw, x, y, scores, shown, out, rep)
    summary = {
        "run": str(run_dir),
        "dataset": run.cfg["train"]["dataset"],
        "classes": run.names,
        "images_scored": len(y),
        "predict_layers": run.predict_layers,
        "accuracy": scores.accuracy,
        "files": written,
        "label_patterns_image": int(shown.cams[0]),
        "cam_images": shown.cams,
        "correct_images": shown.correct,
        "wrong_images": shown.wrong,
        "confusion": cm.tolist(),
    }
    atomic_write_json(out / "report.json", summary)
    return summary


def _check_args(run_dir: Path, out: Path, images: int, limit: int | None, device: str) -> None:
    """Reject bad options, a missing run folder, an ``out`` that holds others' files, an unavailable CUDA."""
    if images < 1:
        raise FFEdgeError(f"--images must be >= 1 (got {images})")
    if limit is not None and limit < 1:
        raise FFEdgeError(f"--limit must be >= 1 (got {limit})")
    if not run_dir.is_dir():
        raise FFEdgeError(f"no such run folder: {run_dir}")
    _check_out(out)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FFEdgeError("--device cuda: no CUDA device is available to torch here")


def _load(run_dir: Path, device: str) -> _Subject:
    """Load the run, move its net to ``device``, rebuild its label encoding from ``config.json``."""
    cfg, net = load_run(run_dir)
    try:
        net.to(device)
    except (RuntimeError, ValueError) as e:
        raise FFEdgeError(f"--device {device}: {str(e).splitlines()[0]}") from None
    enc = encoding_from_config(cfg["encoding"])
    dataset = cfg["train"]["dataset"]
    run_name = run_dir.resolve().name
    kind, _, where = dataset.partition(":")
    short = f"{kind}:{Path(where).name}" if where else dataset  # npz:/long/path/x.npz -> npz:x.npz
    who = run_name if run_name == short else f"{run_name} ({short})"
    return _Subject(
        cfg, net, enc, [str(c) for c in cfg["classes"]], [int(v) for v in cfg["model"]["predict_layers"]], who, device
    )


def _draw_all(
    run: _Subject, raw: np.ndarray, x: np.ndarray, y: np.ndarray, scores: Scores, shown: Shown, out: Path, rep: Reporter
) -> tuple[list[str], np.ndarray]:
    """Draw and save every figure of :data:`FILES`; return the files written and the confusion matrix."""
    written: list[str] = []
    with rep.task(f"drawing the report into {out}", len(FILES)) as advance:
        _save_label_patterns(run, x, y, shown.cams[0], out / "label_patterns.png")
        written.append("label_patterns.png")
        advance(1)
        cams = draw_cams(
            run.net,
            run.enc,
            raw,
            x,
            y,
            scores.g,
            scores.pred,
            scores.wrong,
            shown.cams,
            run.names,
            run.predict_layers,
            run.device,
        )
        save_figure(cams, out / "cams.png")
        written.append("cams.png")
        advance(1)
        for fname, idx, what in (
            ("goodness_correct.png", shown.correct, "correctly"),
            ("goodness_wrong.png", shown.wrong, "wrongly"),
        ):
            save_figure(_bars_figure(run, raw, y, scores, idx, what), out / fname)
            written.append(fname)
            advance(1)
        cm = confusion(y, scores.pred, run.enc.num_classes)
        save_figure(
            draw_confusion(
                cm, run.names, scores.accuracy, f"{run.who}: confusion matrix, goodness of {run.layers_text}"
            ),
            out / "confusion.png",
        )
        written.append("confusion.png")
        advance(1)
    return written, cm


def _save_label_patterns(run: _Subject, x: np.ndarray, y: np.ndarray, first: int, path: Path) -> None:
    """The ``ffedge labels`` sheet of the run's encoding, with held-out image ``first`` encoded with every label."""
    enc, names = run.enc, run.names
    mode = f" ({enc.mode} mode)" if hasattr(enc, "mode") else ""
    sheet = label_sheet(
        enc,
        x[first],
        names,
        title=f"{run.who}: {enc.name}{mode} labels, "
        f"{enc.num_classes} classes; held-out image #{first} is a '{names[int(y[first])]}'",
        cols=6,
    )
    save_label_sheet(path, sheet)


def _bars_figure(run: _Subject, raw: np.ndarray, y: np.ndarray, scores: Scores, idx: list[int], what: str) -> Any:
    """The goodness-bar figure of the ``what`` (``correctly`` or ``wrongly``) classified images ``idx``."""
    n = len(y)
    count = int((scores.pred == y).sum()) if what == "correctly" else int((scores.pred != y).sum())
    return draw_goodness_bars(
        raw,
        y,
        scores.gsum,
        scores.pred,
        idx,
        run.names,
        title=f"{run.who}: goodness of every label hypothesis ({run.layers_text}, as the prediction sums it)\n"
        f"{len(idx)} of the {count:,} {what} classified held-out images (highest bar = prediction)",
        ylabel=f"goodness ({run.layers_text})",
        empty_text=f"no {what} classified images among the {n:,} scored",
        wrong=what == "wrongly",
    )
