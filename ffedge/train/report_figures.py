"""The figures of ``ffedge report``: activation maps, goodness bars and the confusion matrix, drawn from scores.

Only matplotlib's object-oriented API with the Agg canvas is used (no pyplot, no
global backend switch), and matplotlib is imported inside the functions, so this
module imports without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ffedge.fsutil import atomic_write_with
from ffedge.labels import LabelEncoding
from ffedge.train.model import FFNet
from ffedge.train.report_scoring import goodness_maps

DPI = 110
TRUE_COLOR = "#1a9850"  # green: the true class
WRONG_COLOR = "#d73027"  # red: a wrongly predicted class
OTHER_COLOR = "#bdbdbd"  # grey: every other hypothesis
_LABEL_BOX = dict(facecolor="black", alpha=0.6, pad=1.5, edgecolor="none")  # behind the numbers written on maps


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG, atomically."""
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
    for r, i in enumerate(idx):
        t, p, w = int(y[i]), int(pred[i]), int(wrong[i])
        _cam_image_column(top, grid, r, i, raw[i], t, p, w, names)
        for layer in range(n_layers):
            title = _layer_title(net, layer, predict_layers) if r == 0 else None
            _cam_layer_column(
                top,
                grid,
                r,
                layer,
                raw[i],
                true_maps[layer][r],
                wrong_maps[layer][r],
                float(g[layer, i, t]),
                float(g[layer, i, t] - g[layer, i, w]),
                heat,
                div,
                title,
            )
    _cam_keys(bottom, heat, div)
    return fig


def _cam_image_column(
    top: Any, grid: Any, r: int, i: int, raw_hwc: np.ndarray, t: int, p: int, w: int, names: Sequence[str]
) -> None:
    """The first column of image ``r``'s two rows: the image with its true and predicted class, then what row 2 shows."""
    ok = t == p
    ax = top.add_subplot(grid[2 * r, 0])
    _show_image(ax, raw_hwc)
    ax.set_title(
        f"held-out #{i}\ntrue {_name(names, t)}\npredicted {_name(names, p)}",
        fontsize=9,
        color="black" if ok else WRONG_COLOR,
        fontweight="normal" if ok else "bold",
    )
    ax = top.add_subplot(grid[2 * r + 1, 0])
    ax.axis("off")
    ax.text(
        0.5,
        0.5,
        f"true {_name(names, t)}\nminus\nbest wrong {_name(names, w)}\n\nred: for {_name(names, t)}\nblue: for {_name(names, w)}",
        ha="center",
        va="center",
        fontsize=9,
        transform=ax.transAxes,
    )


def _map_label(ax: Any, text: str) -> None:
    """A number written in the top-left corner of a map, white on a dark box."""
    ax.text(0.03, 0.97, text, transform=ax.transAxes, ha="left", va="top", fontsize=8, color="white", bbox=_LABEL_BOX)


def _cam_layer_column(
    top: Any,
    grid: Any,
    r: int,
    layer: int,
    raw_hwc: np.ndarray,
    m: np.ndarray,
    m_wrong: np.ndarray,
    g_true: float,
    dg: float,
    heat: Any,
    div: Any,
    title: str | None,
) -> None:
    """Layer ``layer``'s two maps of image ``r``: goodness with the true label (``m``), and ``m`` minus the best wrong label's."""
    from matplotlib.colors import Normalize

    d = m - m_wrong
    ax = top.add_subplot(grid[2 * r, 1 + layer])
    _show_image(ax, raw_hwc, alpha=0.5)
    ax.imshow(m, cmap=heat, norm=Normalize(0.0, float(m.max()) or 1.0), alpha=0.7)
    if title is not None:
        ax.set_title(title, fontsize=9, fontweight="bold")
    _map_label(ax, f"g={g_true:.3g}")
    ax = top.add_subplot(grid[2 * r + 1, 1 + layer])
    _show_image(ax, raw_hwc, alpha=0.5)
    lim = float(np.abs(d).max()) or 1.0
    rgba = div(Normalize(-lim, lim)(d))
    rgba[..., 3] = 0.2 + 0.8 * np.clip(np.abs(d) / lim, 0.0, 1.0)  # faint where both labels agree
    ax.imshow(rgba)
    _map_label(ax, f"\u0394g={dg:+.3g}")


def _cam_keys(bottom: Any, heat: Any, div: Any) -> None:
    """The two colour keys under the maps."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    keys = bottom.subplots(1, 3, width_ratios=[1.0, 0.12, 1.0])
    keys[1].axis("off")
    keys = [keys[0], keys[2]]
    cb = bottom.colorbar(ScalarMappable(Normalize(0, 1), heat), cax=keys[0], orientation="horizontal")
    cb.set_ticks([0, 1], labels=["0", "max of the map"])
    cb.set_label("goodness per position, true label\n(each map scaled to its own max)", fontsize=8.5)
    cb = bottom.colorbar(ScalarMappable(Normalize(-1, 1), div), cax=keys[1], orientation="horizontal")
    cb.set_ticks([-1, 0, 1], labels=["favours wrong", "0", "favours true"])
    cb.set_label("true minus best wrong\n(each map scaled to its own max |difference|)", fontsize=8.5)


def draw_goodness_bars(
    raw: np.ndarray,
    y: np.ndarray,
    gsum: np.ndarray,
    pred: np.ndarray,
    idx: list[int],
    names: Sequence[str],
    title: str,
    ylabel: str,
    empty_text: str,
    wrong: bool,
) -> Any:
    """Per image: the image and a bar per label hypothesis (its goodness), true and predicted class coloured."""
    from matplotlib.patches import Patch

    k = gsum.shape[1]
    per_row = 2 if len(idx) > 1 and k <= 20 else 1
    rows = max(1, -(-len(idx) // per_row))
    bar_w = min(13.0, max(3.6, 0.36 * k + 1.0))
    fig = _figure(per_row * (1.7 + bar_w), 0.9 + 2.5 * rows)
    fig.suptitle(title, fontsize=11)
    if not idx:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=12, transform=ax.transAxes)
        return fig
    grid = fig.add_gridspec(rows, 2 * per_row, width_ratios=[1.0, bar_w / 1.7] * per_row)
    for n, i in enumerate(idx):
        r, c = divmod(n, per_row)
        ax = fig.add_subplot(grid[r, 2 * c])
        _show_image(ax, raw[i])
        ax.set_title(f"held-out #{i}", fontsize=9)
        _goodness_bars(fig.add_subplot(grid[r, 2 * c + 1]), gsum[i], int(y[i]), int(pred[i]), names, ylabel)
    if wrong:
        handles = [
            Patch(color=TRUE_COLOR, label="true class"),
            Patch(color=WRONG_COLOR, label="predicted class (wrong)"),
            Patch(color=OTHER_COLOR, label="other labels"),
        ]
    else:
        handles = [
            Patch(color=TRUE_COLOR, label="true class = predicted class"),
            Patch(color=OTHER_COLOR, label="other labels"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    return fig


def _goodness_bars(ax: Any, gi: np.ndarray, t: int, p: int, names: Sequence[str], ylabel: str) -> None:
    """One image's bars: goodness ``gi`` [K] of every label hypothesis, the true class ``t`` and the predicted ``p`` coloured."""
    k = len(gi)
    labels = [_name(names, j) for j in range(k)]
    long = max(len(s) for s in labels) > 2
    step = 1 if k <= 30 else max(1, k // 25)
    xs = np.arange(k)
    colors = [OTHER_COLOR] * k
    colors[p] = WRONG_COLOR
    colors[t] = TRUE_COLOR
    bars = ax.bar(xs, gi, color=colors, edgecolor="#555555", linewidth=0.5)
    lo, hi = float(gi.min()), float(gi.max())
    ax.set_ylim(min(0.0, lo * 1.1), hi * 1.18 if hi > 0 else 1.0)
    for j in sorted({t, p}):  # the values that decide, written on their bars
        ax.annotate(
            f"{gi[j]:.3g}",
            (bars[j].get_x() + bars[j].get_width() / 2, bars[j].get_height()),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7.5,
            color=TRUE_COLOR if j == t else WRONG_COLOR,
            fontweight="bold",
        )
    ax.set_xticks(
        xs[::step],
        labels[::step],
        fontsize=8 if k <= 20 else 6,
        rotation=60 if long else 0,
        ha="right" if long else "center",
        rotation_mode="anchor" if long else "default",
    )
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylabel(ylabel, fontsize=8.5)
    ax.set_xlabel("label hypothesis", fontsize=8.5)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", color="#e0e0e0", linewidth=0.6)
    ax.set_axisbelow(True)
    margin = float(gi[p] - np.partition(gi, -2)[-2]) if k > 1 else 0.0
    verdict = (
        f"predicted {_name(names, p)} by {margin:.3g}"
        if t == p
        else f"predicted {_name(names, p)}, true {_name(names, t)} is {gi[p] - gi[t]:.3g} lower"
    )
    ax.set_title(f"true {_name(names, t)}: {verdict}", fontsize=9, color="black" if t == p else WRONG_COLOR)


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
    ax.set_xticks(
        ticks,
        [labels[j] for j in ticks],
        rotation=60 if long else 0,
        ha="right" if long else "center",
        fontsize=9 if k <= 20 else 6,
    )
    ax.set_yticks(ticks, [labels[j] for j in ticks], fontsize=9 if k <= 20 else 6)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\naccuracy {accuracy:.2%} on {int(cm.sum()):,} held-out images", fontsize=11)
    if k <= 20:
        dark = im.norm(cm) > 0.55
        for a in range(k):
            for b in range(k):
                if cm[a, b]:
                    ax.text(
                        b,
                        a,
                        str(int(cm[a, b])),
                        ha="center",
                        va="center",
                        fontsize=9 if k <= 12 else 7,
                        color="white" if dark[a, b] else ("black" if a == b else "#a50f15"),
                    )
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("images")
    return fig
