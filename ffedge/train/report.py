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
matplotlib is imported only here, and only its object-oriented API with the
Agg canvas is used (no pyplot, no global backend switch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ffedge.errors import FFEdgeError, MissingExtraError, quoted
from ffedge.evaluate import confusion, held_out
from ffedge.fsutil import atomic_write_json, atomic_write_with, check_out_folder
from ffedge.labels import LabelEncoding, encoding_from_config
from ffedge.labels_draw import label_sheet, save_label_sheet
from ffedge.preprocess import normalize
from ffedge.progress import QuietReporter, Reporter
from ffedge.train.model import FFNet
from ffedge.train.run_files import load_run
from ffedge.train.trainer import goodness_accuracy, goodness_matrix

DPI = 110
SCORE_BATCH = 100  # held-out images per goodness_matrix call (one progress step)
TRUE_COLOR = "#1a9850"  # green: the true class
WRONG_COLOR = "#d73027"  # red: a wrongly predicted class
OTHER_COLOR = "#bdbdbd"  # grey: every other hypothesis
FILES = ("label_patterns.png", "cams.png", "goodness_correct.png", "goodness_wrong.png", "confusion.png")


def require_matplotlib() -> Any:
    """The matplotlib module, or :class:`MissingExtraError` naming the ``report`` extra."""
    try:
        import matplotlib
        import matplotlib.figure  # fails here, early, on a broken install
    except ImportError:
        raise MissingExtraError("report", "ffedge report (matplotlib is not installed)") from None
    return matplotlib


def held_out_data(cfg: dict[str, Any], limit: int | None = None, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's held-out split (first ``limit`` images): raw uint8 NHWC, normalized NCHW as in training, labels."""
    tr = cfg["train"]
    where = data_dir if data_dir is not None else tr.get("data_dir")
    raw, y = held_out(tr["dataset"], cfg["input"]["shape"], len(cfg["classes"]), str(where) if where else None,
                      limit=limit, owner="the run", hint="")
    return raw, normalize(raw, cfg["input"]["mean"], cfg["input"]["std"]), y


@torch.no_grad()
def goodness_maps(net: FFNet, x_enc: np.ndarray, device: str = "cpu") -> list[np.ndarray]:
    """Per layer, each position's contribution to the layer's goodness, upsampled to the input size: [L][B, H, W].

    The contribution is sum over channels of squared activations divided by the
    layer's number of activations, so at the layer's own resolution a map sums
    to :func:`ffedge.train.model.goodness`. Upsampling is bilinear (for display).
    """
    net.eval()
    hs = net.forward_layers(torch.from_numpy(x_enc).to(device))
    size = tuple(x_enc.shape[2:])
    maps = []
    for h in hs:
        m = h.pow(2).sum(1, keepdim=True) / h[0].numel()
        m = torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
        maps.append(m[:, 0].cpu().numpy())
    return maps


def spread_over_classes(candidates: np.ndarray, y: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` of ``candidates`` (indices, in held-out order), taken class by class so several classes show."""
    by_class: dict[int, list[int]] = {}
    for i in candidates:
        by_class.setdefault(int(y[i]), []).append(int(i))
    queues = [by_class[c] for c in sorted(by_class)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return picked


# ---------------------------------------------------------------- drawing helpers


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, facecolor="white"))
    return path


def _show_image(ax: Any, raw_hwc: np.ndarray, alpha: float = 1.0) -> None:
    """uint8 HWC: grey for one channel, RGB for three, channel 0 otherwise."""
    if raw_hwc.shape[2] == 3:
        ax.imshow(raw_hwc, alpha=alpha)
    else:
        ax.imshow(raw_hwc[:, :, 0], cmap="gray", vmin=0, vmax=255, alpha=alpha)
    ax.set_xticks([])
    ax.set_yticks([])


def _name(names: Sequence[str], k: int, limit: int = 14) -> str:
    s = str(names[k])
    return s if len(s) <= limit else s[: limit - 1] + "~"


def _layer_title(net: FFNet, layer: int, predict_layers: list[int]) -> str:
    c, h, w = net.out_shapes[layer]
    spec = net.layer_specs[layer]
    if spec.pool:
        h, w = h * 2, w * 2  # maps are taken before pooling
    star = ", predicts" if layer in predict_layers else ""
    return f"layer {layer + 1}\n{c} ch, {h}x{w}{star}"


# ---------------------------------------------------------------- the pictures



def draw_cams(
    net: FFNet,
    enc: LabelEncoding,
    raw: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    pred: np.ndarray,
    wrong: np.ndarray,
    idx: list[int],
    names: Sequence[str],
    predict_layers: list[int],
    device: str = "cpu",
) -> Any:
    """Two rows per image, one column per layer: the goodness map with the true label, then true minus best wrong.

    ``g`` is the [L, N, K] goodness matrix; ``wrong`` the best wrong label of every image.
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n_layers = len(net.layers)
    sel = np.asarray(idx, dtype=np.int64)
    true_maps = goodness_maps(net, enc.encode(x[sel], y[sel]), device)
    wrong_maps = goodness_maps(net, enc.encode(x[sel], wrong[sel]), device)
    heat, div = matplotlib.colormaps["inferno"], matplotlib.colormaps["RdBu_r"]
    cols = 1 + n_layers
    fig = _figure(0.6 + 2.0 * cols, 1.9 + 4.0 * len(idx))
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.0 * len(idx) + 0.9, 1.0])
    grid = top.add_gridspec(2 * len(idx), cols)
    top.suptitle(
        "Class activation maps: where each layer's goodness comes from\n"
        "1st row of each image: goodness per position with the TRUE label (bright = high, g = the layer's goodness)\n"
        "2nd row: TRUE label minus BEST WRONG label (red = favours the true label, blue = the wrong one)",
        fontsize=10,
    )
    box = dict(facecolor="black", alpha=0.6, pad=1.5, edgecolor="none")
    for r, i in enumerate(idx):
        t, p, w = int(y[i]), int(pred[i]), int(wrong[i])
        ok = t == p
        ax = top.add_subplot(grid[2 * r, 0])
        _show_image(ax, raw[i])
        ax.set_title(f"held-out #{i}\ntrue {_name(names, t)}\npredicted {_name(names, p)}", fontsize=9,
                     color="black" if ok else WRONG_COLOR, fontweight="normal" if ok else "bold")
        ax = top.add_subplot(grid[2 * r + 1, 0])
        ax.axis("off")
        ax.text(0.5, 0.5, f"true {_name(names, t)}\nminus\nbest wrong {_name(names, w)}\n\nred: for {_name(names, t)}\nblue: for {_name(names, w)}",
                ha="center", va="center", fontsize=9, transform=ax.transAxes)
        for layer in range(n_layers):
            m, d = true_maps[layer][r], true_maps[layer][r] - wrong_maps[layer][r]
            ax = top.add_subplot(grid[2 * r, 1 + layer])
            _show_image(ax, raw[i], alpha=0.5)
            ax.imshow(m, cmap=heat, norm=Normalize(0.0, float(m.max()) or 1.0), alpha=0.7)
            if r == 0:
                ax.set_title(_layer_title(net, layer, predict_layers), fontsize=9, fontweight="bold")
            ax.text(0.03, 0.97, f"g={g[layer, i, t]:.3g}", transform=ax.transAxes, ha="left", va="top", fontsize=8, color="white", bbox=box)
            ax = top.add_subplot(grid[2 * r + 1, 1 + layer])
            _show_image(ax, raw[i], alpha=0.5)
            lim = float(np.abs(d).max()) or 1.0
            rgba = div(Normalize(-lim, lim)(d))
            rgba[..., 3] = 0.2 + 0.8 * np.clip(np.abs(d) / lim, 0.0, 1.0)  # faint where both labels agree
            ax.imshow(rgba)
            dg = float(g[layer, i, t] - g[layer, i, w])
            ax.text(0.03, 0.97, f"\u0394g={dg:+.3g}", transform=ax.transAxes, ha="left", va="top", fontsize=8, color="white", bbox=box)
    keys = bottom.subplots(1, 3, width_ratios=[1.0, 0.12, 1.0])
    keys[1].axis("off")
    keys = [keys[0], keys[2]]
    cb = bottom.colorbar(ScalarMappable(Normalize(0, 1), heat), cax=keys[0], orientation="horizontal")
    cb.set_ticks([0, 1], labels=["0", "max of the map"])
    cb.set_label("goodness per position, true label\n(each map scaled to its own max)", fontsize=8.5)
    cb = bottom.colorbar(ScalarMappable(Normalize(-1, 1), div), cax=keys[1], orientation="horizontal")
    cb.set_ticks([-1, 0, 1], labels=["favours wrong", "0", "favours true"])
    cb.set_label("true minus best wrong\n(each map scaled to its own max |difference|)", fontsize=8.5)
    return fig


def draw_goodness_bars(
    raw: np.ndarray, y: np.ndarray, gsum: np.ndarray, pred: np.ndarray, idx: list[int], names: Sequence[str],
    title: str, ylabel: str, empty_text: str, wrong: bool,
) -> Any:
    """Per image: the image and a bar per label hypothesis (its goodness), true and predicted class coloured."""
    from matplotlib.patches import Patch

    k = gsum.shape[1]
    per_row = 2 if len(idx) > 1 and k <= 20 else 1
    rows = max(1, -(-len(idx) // per_row))
    bar_w = min(13.0, max(3.6, 0.36 * k + 1.0))
    labels = [_name(names, j) for j in range(k)]
    long = max(len(s) for s in labels) > 2
    step = 1 if k <= 30 else max(1, k // 25)
    fig = _figure(per_row * (1.7 + bar_w), 0.9 + 2.5 * rows)
    fig.suptitle(title, fontsize=11)
    if not idx:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=12, transform=ax.transAxes)
        return fig
    grid = fig.add_gridspec(rows, 2 * per_row, width_ratios=[1.0, bar_w / 1.7] * per_row)
    xs = np.arange(k)
    for n, i in enumerate(idx):
        r, c = divmod(n, per_row)
        t, p = int(y[i]), int(pred[i])
        ax = fig.add_subplot(grid[r, 2 * c])
        _show_image(ax, raw[i])
        ax.set_title(f"held-out #{i}", fontsize=9)
        ax = fig.add_subplot(grid[r, 2 * c + 1])
        colors = [OTHER_COLOR] * k
        colors[p] = WRONG_COLOR
        colors[t] = TRUE_COLOR
        bars = ax.bar(xs, gsum[i], color=colors, edgecolor="#555555", linewidth=0.5)
        lo, hi = float(gsum[i].min()), float(gsum[i].max())
        ax.set_ylim(min(0.0, lo * 1.1), hi * 1.18 if hi > 0 else 1.0)
        for j in sorted({t, p}):  # the values that decide, written on their bars
            ax.annotate(f"{gsum[i, j]:.3g}", (bars[j].get_x() + bars[j].get_width() / 2, bars[j].get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7.5,
                        color=TRUE_COLOR if j == t else WRONG_COLOR, fontweight="bold")
        ax.set_xticks(xs[::step], labels[::step], fontsize=8 if k <= 20 else 6,
                      rotation=60 if long else 0, ha="right" if long else "center", rotation_mode="anchor" if long else "default")
        ax.set_xlim(-0.6, k - 0.4)
        ax.set_ylabel(ylabel, fontsize=8.5)
        ax.set_xlabel("label hypothesis", fontsize=8.5)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", color="#e0e0e0", linewidth=0.6)
        ax.set_axisbelow(True)
        margin = float(gsum[i, p] - np.partition(gsum[i], -2)[-2]) if k > 1 else 0.0
        verdict = f"predicted {_name(names, p)} by {margin:.3g}" if t == p else \
            f"predicted {_name(names, p)}, true {_name(names, t)} is {gsum[i, p] - gsum[i, t]:.3g} lower"
        ax.set_title(f"true {_name(names, t)}: {verdict}", fontsize=9, color="black" if t == p else WRONG_COLOR)
    if wrong:
        handles = [Patch(color=TRUE_COLOR, label="true class"), Patch(color=WRONG_COLOR, label="predicted class (wrong)"),
                   Patch(color=OTHER_COLOR, label="other labels")]
    else:
        handles = [Patch(color=TRUE_COLOR, label="true class = predicted class"), Patch(color=OTHER_COLOR, label="other labels")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    return fig


def draw_confusion(cm: np.ndarray, names: Sequence[str], accuracy: float, title: str) -> Any:
    """Counts [true, predicted], a darker cell for more images (square-root scale so rare mistakes show)."""
    from matplotlib.colors import PowerNorm

    k = cm.shape[0]
    side = min(16.0, max(5.5, 0.55 * k + 2.5))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cm, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=max(1, int(cm.max()))))
    labels = [_name(names, j) for j in range(k)]
    step = 1 if k <= 30 else max(1, k // 25)
    ticks = np.arange(0, k, step)
    long = max(len(s) for s in labels) > 2
    ax.set_xticks(ticks, [labels[j] for j in ticks], rotation=60 if long else 0, ha="right" if long else "center", fontsize=9 if k <= 20 else 6)
    ax.set_yticks(ticks, [labels[j] for j in ticks], fontsize=9 if k <= 20 else 6)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\naccuracy {accuracy:.2%} on {int(cm.sum()):,} held-out images", fontsize=11)
    if k <= 20:
        dark = im.norm(cm) > 0.55
        for a in range(k):
            for b in range(k):
                if cm[a, b]:
                    ax.text(b, a, str(int(cm[a, b])), ha="center", va="center", fontsize=9 if k <= 12 else 7,
                            color="white" if dark[a, b] else ("black" if a == b else "#a50f15"))
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("images")
    return fig


# ---------------------------------------------------------------- the report


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
        raise FFEdgeError(f"--out {out} already holds {quoted(clash[0])}, which no ffedge report wrote there: choose another folder")


def write_report(
    run_dir: str | Path,
    out: str | Path = "report",
    images: int = 6,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Write the report's PNGs and ``report.json`` into ``out``; return the ``report.json`` content.

    ``images``: images in the activation maps and in each goodness-bar figure;
    ``limit``: score only the first N held-out images (default all).
    """
    rep = reporter or QuietReporter()
    require_matplotlib()
    run_dir, out = Path(run_dir), Path(out)
    if images < 1:
        raise FFEdgeError(f"--images must be >= 1 (got {images})")
    if limit is not None and limit < 1:
        raise FFEdgeError(f"--limit must be >= 1 (got {limit})")
    if not run_dir.is_dir():
        raise FFEdgeError(f"no such run folder: {run_dir}")
    _check_out(out)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FFEdgeError("--device cuda: no CUDA device is available to torch here")
    cfg, net = load_run(run_dir)
    try:
        net.to(device)
    except (RuntimeError, ValueError) as e:
        raise FFEdgeError(f"--device {device}: {str(e).splitlines()[0]}") from None
    enc = encoding_from_config(cfg["encoding"])
    names = [str(c) for c in cfg["classes"]]
    pl = [int(v) for v in cfg["model"]["predict_layers"]]
    raw, x, y = held_out_data(cfg, limit, data_dir)
    n = len(y)

    parts = []
    with rep.task(f"scoring {n} held-out images x {enc.num_classes} labels", -(-n // SCORE_BATCH)) as advance:
        for s in range(0, n, SCORE_BATCH):
            parts.append(goodness_matrix(net, enc, x[s : s + SCORE_BATCH], device))
            advance(1)
    g = np.concatenate(parts, axis=1)  # [L, N, K]
    accuracy = goodness_accuracy(g, y, pl)
    gsum = g[pl].sum(0)
    pred = gsum.argmax(1)
    masked = gsum.copy()
    masked[np.arange(n), y] = -np.inf
    wrong = masked.argmax(1)  # best wrong label of every image
    correct_idx = spread_over_classes(np.flatnonzero(pred == y), y, images)
    wrong_idx = spread_over_classes(np.flatnonzero(pred != y), y, images)
    cam_idx = spread_over_classes(np.arange(n), y, images)
    pl_text = ("layer " if len(pl) == 1 else "layers ") + "+".join(str(l + 1) for l in pl)
    rep.log(f"held-out accuracy {accuracy:.2%} ({n} images, goodness of {pl_text})")

    dataset = cfg["train"]["dataset"]
    run_name = run_dir.resolve().name
    kind, _, where = dataset.partition(":")
    short = f"{kind}:{Path(where).name}" if where else dataset  # npz:/long/path/x.npz -> npz:x.npz
    who = run_name if run_name == short else f"{run_name} ({short})"
    written: list[str] = []
    with rep.task(f"drawing the report into {out}", len(FILES)) as advance:
        first = cam_idx[0]
        mode = f" ({enc.mode} mode)" if hasattr(enc, "mode") else ""
        sheet = label_sheet(enc, x[first], names, title=f"{who}: {enc.name}{mode} labels, "
                            f"{enc.num_classes} classes; held-out image #{first} is a '{names[int(y[first])]}'", cols=6)
        save_label_sheet(out / "label_patterns.png", sheet)
        written.append("label_patterns.png")
        advance(1)
        _save(draw_cams(net, enc, raw, x, y, g, pred, wrong, cam_idx, names, pl, device), out / "cams.png")
        written.append("cams.png")
        advance(1)
        ylabel = f"goodness ({pl_text})"
        for fname, idx, what in (("goodness_correct.png", correct_idx, "correctly"), ("goodness_wrong.png", wrong_idx, "wrongly")):
            count = int((pred == y).sum()) if what == "correctly" else int((pred != y).sum())
            fig = draw_goodness_bars(
                raw, y, gsum, pred, idx, names,
                title=f"{who}: goodness of every label hypothesis ({pl_text}, as the prediction sums it)\n"
                      f"{len(idx)} of the {count:,} {what} classified held-out images (highest bar = prediction)",
                ylabel=ylabel, empty_text=f"no {what} classified images among the {n:,} scored", wrong=what == "wrongly",
            )
            _save(fig, out / fname)
            written.append(fname)
            advance(1)
        cm = confusion(y, pred, enc.num_classes)
        _save(draw_confusion(cm, names, accuracy, f"{who}: confusion matrix, goodness of {pl_text}"), out / "confusion.png")
        written.append("confusion.png")
        advance(1)

    summary = {
        "run": str(run_dir),
        "dataset": dataset,
        "classes": names,
        "images_scored": n,
        "predict_layers": pl,
        "accuracy": accuracy,
        "files": written,
        "label_patterns_image": int(cam_idx[0]),
        "cam_images": cam_idx,
        "correct_images": correct_idx,
        "wrong_images": wrong_idx,
        "confusion": cm.tolist(),
    }
    atomic_write_json(out / "report.json", summary)
    return summary
