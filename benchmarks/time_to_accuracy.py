"""Time to accuracy: FF (ffedge's default recipe, int8 QAT), the `paper` preset and backprop on the same network and data.

Each method trains in its own fresh process on the same training split and is
scored on the same fixed held-out images (the first --eval-images of the
held-out split) every --every-s seconds of *training* wall time: the clock is
paused while it is scored, and the scoring time is reported apart. Training
stops at the first scoring point at or after --budget-s (or when a method has
done its epochs). The methods:
- ff: ffedge's default TrainConfig (int8 QAT, pair-local, Fourier labels), through
  ffedge.train.pipeline.train_run with a Probe; scored by goodness over all labels
  (the trainer's prediction layers);
- paper: the `paper` preset of ffedge.train.presets, scored the same way (every
  --paper-every-s: on a CPU its 3x128 7x7 net takes minutes to score 1,000 images);
- backprop: the same layers trained end to end with cross-entropy of the softmax
  head (Adam at the recipe's lr and batch, constant lr), scored by its head. It
  trains the float network unless --backprop-quant: float backprop is the faster,
  stronger baseline. It runs in the arithmetic of FF's float phase (bf16 autocast
  where `--precision auto` picks it, i.e. on CPUs with AMX or AVX512-BF16), so neither method
  gets faster arithmetic than the other.
At the end each FF run is exported (`ffedge export --int8`) and the int8 bundle
scored under onnxruntime (`ffedge eval`) on the same held-out images.

Writes OUT.json (every point), OUT.md (time to 90/95/97/98/99%, FF over backprop),
OUT.png (accuracy vs training seconds) and OUT.log; each method's result is kept in
OUT-METHOD.json, and a method whose result is there (made with the same settings) is
not trained again unless --force, so a long run cut short continues where it stopped.

    python benchmarks/time_to_accuracy.py --quick     # ff and backprop, 20 s each, 200 held-out images; results/quick/
    python benchmarks/time_to_accuracy.py --methods ff,backprop              # about 10 min on 2 cores
    python benchmarks/time_to_accuracy.py --paper-every-s 150                # the paper preset scored twice in 300 s
    python benchmarks/time_to_accuracy.py --budget-s 1800 --every-s 30      # 30 min per method
    # in the background, surviving a closed terminal (rerun the same line to continue after a stop):
    nohup python benchmarks/time_to_accuracy.py --budget-s 1800 > time_to_accuracy.nohup.log 2>&1 &
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    script_parser,
    ROOT,
    backprop_step,
    choices,
    command,
    evaluate,
    export_int8,
    head_accuracy_neutral,
    machine,
    machine_line,
    out_stem,
    pct,
    work_dir,
    write_results,
)

NAME = "time_to_accuracy"
METHODS = ("ff", "paper", "backprop")
FF_METHODS = ("ff", "paper")
THRESHOLDS = (0.90, 0.95, 0.97, 0.98, 0.99)
LABELS = {"ff": "FF, ffedge default (int8 QAT)", "paper": "FF, `paper` preset", "backprop": "backprop"}
NPZ_NAMES = ("mnist", "fashion_mnist", "cifar10")
# Settings a method's result depends on: a kept result made with others is not reused.
SETTINGS = (
    "dataset",
    "data_dir",
    "budget_s",
    "every_s",
    "eval_images",
    "seed",
    "threads",
    "epochs",
    "backprop_quant",
    "device",
)


class NoPreset(Exception):
    pass


def paper_config(explicit: dict[str, Any]) -> Any:
    """The `paper` preset's TrainConfig with the benchmark's options on top; NoPreset if this ffedge has none."""
    if importlib.util.find_spec("ffedge.train.presets") is None:
        raise NoPreset(
            "preset 'paper' not available in this ffedge (it has no ffedge.train.presets); "
            "run with --methods ff,backprop"
        )
    from ffedge.errors import FFEdgeError
    from ffedge.train.presets import resolve

    try:
        return resolve("paper", explicit)
    except FFEdgeError as e:
        raise NoPreset(f"preset 'paper' not available in this ffedge: {e}") from None


# ---------------------------------------------------------------- the child: one method, one process


def _ff_child(s: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    from ffedge.train.epoch import Probe
    from ffedge.train.pipeline import train_run
    from ffedge.train.run_files import load_run
    from ffedge.train.trainer import TrainConfig, goodness_accuracy, goodness_matrix

    # eval_samples=1: the trainer's own end-of-epoch score (inside its clock) shrinks to one image; it changes no weight.
    explicit: dict[str, Any] = {
        "dataset": s["dataset"],
        "data_dir": s["data_dir"],
        "seed": s["seed"],
        "threads": s["threads"],
        "device": s["device"],
        "eval_samples": 1,
    }
    if s["epochs"] is not None:
        explicit["epochs"] = s["epochs"]
    cfg = paper_config(explicit) if s["method"] == "paper" else TrainConfig(**explicit)
    n, budget, points = s["eval_images"], s["budget_s"], []
    pred_layers: list[int] = []

    def score(t: float, net: Any, data: Any) -> float:
        x, y = data.x_test[:n], data.dataset.y_test[:n]
        if len(y) < n:
            sys.exit(f"error: {s['dataset']} has {len(y)} held-out images, fewer than --eval-images {n}")
        pred_layers[:] = cfg.prediction_layers(len(net.layers))
        return goodness_accuracy(goodness_matrix(net, data.encoding, x, cfg.device), y, pred_layers)

    def probe(t: float, net: Any, data: Any) -> bool:
        p0 = time.perf_counter()
        acc = score(t, net, data)
        points.append(
            {
                "train_seconds": round(t, 3),
                "accuracy": acc,
                "probe_seconds": round(time.perf_counter() - p0, 3),
                "fake_quant": bool(net.quant.enabled),
            }
        )
        print(
            f"{s['method']}: {t:7.1f} s  {acc:.2%}  (scored in {points[-1]['probe_seconds']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        return t >= budget

    run, bundle = Path(s["work"]) / s["method"], Path(s["work"]) / f"{s['method']}-int8"
    t_wall = time.perf_counter()
    metrics = train_run(cfg, run, force=True, probe=Probe(s["every_s"], probe))
    stopped = metrics.get("stopped_by_probe")
    if stopped is None:  # it did its epochs before the budget: one last point, at the end of training
        from ffedge.train.trainer import prepare_data

        _, net = load_run(run)
        p0 = time.perf_counter()
        acc = score(metrics["train_seconds"], net, prepare_data(cfg))
        points.append(
            {
                "train_seconds": metrics["train_seconds"],
                "accuracy": acc,
                "probe_seconds": round(time.perf_counter() - p0, 3),
                "fake_quant": bool(net.quant.enabled),
                "end_of_training": True,
            }
        )
        steps_done = metrics["epochs"] * _steps_per_epoch(metrics, cfg.batch_size)
    else:
        steps_done = (stopped["epoch"] - 1) * stopped["steps_per_epoch"] + stopped["step"]
    steps_per_epoch = _steps_per_epoch(metrics, cfg.batch_size)
    log = Path(s["log"])
    parity = export_int8(run, bundle, log, extra=("--verify-samples", str(min(n, 1000))))
    ev = evaluate(bundle, s["dataset"], "all", 3, log, latency_images=0, extra=_eval_extra(s))
    # Stopped by the budget: training ended at the last point (the run's own clock adds its end-of-epoch score after it).
    train_seconds = points[-1]["train_seconds"] if stopped else metrics["train_seconds"]
    return {
        "method": s["method"],
        "points": points,
        "train_seconds": train_seconds,
        "run_train_seconds": metrics["train_seconds"],
        "stopped_by": "budget" if stopped else "epochs",
        "steps": int(steps_done),
        "epochs_done": steps_done / steps_per_epoch,
        "epochs_planned": cfg.epochs,
        "schedule_done": steps_done / (steps_per_epoch * cfg.epochs),
        "predict_layers": pred_layers,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "layers": cfg.layers,
        "config": asdict(cfg),
        "head_seconds": metrics["head_seconds"],
        "wall_seconds": time.perf_counter() - t_wall,
        "int8": {"accuracy": ev["accuracy"], "images": ev["images"], "parity": parity, "bundle": str(bundle)},
        "n_train": metrics["n_train"],
        "float_precision": metrics.get("float_precision", "fp32"),
    }


def _steps_per_epoch(metrics: dict[str, Any], batch: int) -> int:
    return (metrics["n_train"] + batch - 1) // batch


def _eval_extra(s: dict[str, Any]) -> tuple[str, ...]:
    extra = ("--limit", str(s["eval_images"]))
    return extra + (("--data-dir", s["data_dir"]) if s["data_dir"] else ())


def _backprop_child(s: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from ffedge.train.trainer import TrainConfig, build_model, prepare_data

    cfg = TrainConfig(
        dataset=s["dataset"], data_dir=s["data_dir"], seed=s["seed"], threads=s["threads"], device=s["device"]
    )
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    data = prepare_data(cfg)
    ds, enc, dev = data.dataset, data.encoding, cfg.device
    n = s["eval_images"]
    if len(ds.y_test) < n:
        sys.exit(f"error: {s['dataset']} has {len(ds.y_test)} held-out images, fewer than --eval-images {n}")
    xt, yt = data.x_test[:n], ds.y_test[:n]
    net = build_model(cfg, enc.out_channels, ds.image_shape[1:], ds.num_classes, quant=s["backprop_quant"]).to(dev)
    net.train()
    # The same arithmetic as the FF run's float phase (bf16 autocast where TrainConfig's precision picks it).
    bf16 = cfg.autocast_bf16(s["backprop_quant"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    n_train, bs = len(ds.y_train), cfg.batch_size
    steps_per_epoch = (n_train + bs - 1) // bs
    points: list[dict[str, Any]] = []
    steps, epoch, paused, next_probe, stopped_by = 0, 0, 0.0, s["every_s"], None
    t_wall = start = time.perf_counter()
    while stopped_by is None:
        if s["epochs"] is not None and epoch >= s["epochs"]:
            stopped_by = "epochs"
            break
        perm = rng.permutation(n_train)
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            backprop_step(net, opt, enc, data.x_train[idx], ds.y_train[idx], dev, bf16=bf16)
            steps += 1
            t = time.perf_counter() - start - paused
            if t >= next_probe:
                p0 = time.perf_counter()
                acc = head_accuracy_neutral(net, enc, xt, yt, dev)
                points.append(
                    {
                        "train_seconds": round(t, 3),
                        "accuracy": acc,
                        "probe_seconds": round(time.perf_counter() - p0, 3),
                        "fake_quant": bool(s["backprop_quant"]),
                    }
                )
                print(
                    f"backprop: {t:7.1f} s  {acc:.2%}  (scored in {points[-1]['probe_seconds']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                paused += time.perf_counter() - p0  # scoring is not training time
                next_probe += s["every_s"]
                if t >= s["budget_s"]:
                    stopped_by = "budget"
                    break
        epoch += 1
    # Stopped by the budget: training ended at the last point.
    train_seconds = (
        points[-1]["train_seconds"] if stopped_by == "budget" else round(time.perf_counter() - start - paused, 3)
    )
    if stopped_by == "epochs":
        p0 = time.perf_counter()
        points.append(
            {
                "train_seconds": round(train_seconds, 3),
                "accuracy": head_accuracy_neutral(net, enc, xt, yt, dev),
                "probe_seconds": round(time.perf_counter() - p0, 3),
                "fake_quant": bool(s["backprop_quant"]),
                "end_of_training": True,
            }
        )
    return {
        "method": "backprop",
        "points": points,
        "train_seconds": train_seconds,
        "stopped_by": stopped_by,
        "steps": steps,
        "epochs_done": steps / steps_per_epoch,
        "epochs_planned": s["epochs"],
        "batch_size": bs,
        "lr": cfg.lr,
        "layers": cfg.layers,
        "float": not s["backprop_quant"],
        "float_precision": "bf16" if bf16 else "fp32",
        "wall_seconds": time.perf_counter() - t_wall,
        "int8": None,
        "n_train": int(n_train),
    }


def child(s: dict[str, Any]) -> int:
    try:
        result = _backprop_child(s) if s["method"] == "backprop" else _ff_child(s)
    except NoPreset as e:
        sys.exit(f"error: {e}")
    from ffedge.fsutil import atomic_write_json

    result["settings"] = {k: s[k] for k in SETTINGS}
    atomic_write_json(s["result"], result)
    return 0


# ---------------------------------------------------------------- the parent: methods, table, plot


def time_to(points: list[dict[str, Any]], threshold: float) -> float | None:
    """Training seconds of the first scoring point at or above threshold (None: not reached)."""
    return next((p["train_seconds"] for p in points if p["accuracy"] >= threshold), None)


def markdown(rows: list[dict[str, Any]], a: argparse.Namespace, info: dict[str, Any], cmd: str, dataset: str) -> str:
    bp = next((r for r in rows if r["method"] == "backprop"), None)
    head = (
        "| method | trained | final accuracy, torch | int8 ORT | " + " | ".join(f"{t:.0%}" for t in THRESHOLDS) + " |"
    )
    lines = [head, "|---" * (4 + len(THRESHOLDS)) + "|"]
    for r in rows:
        cells = []
        for t in THRESHOLDS:
            mine, theirs = time_to(r["points"], t), time_to(bp["points"], t) if bp else None
            cell = "not reached" if mine is None else f"{mine:.0f} s"
            if r["method"] != "backprop" and theirs is not None:
                cell += f" ({mine / theirs:.1f}x)" if mine is not None else f" (> {r['train_seconds'] / theirs:.1f}x)"
            cells.append(cell)
        last = r["points"][-1] if r["points"] else None
        int8 = pct(r["int8"]["accuracy"]) if r.get("int8") else "–"
        lines.append(
            f"| {LABELS[r['method']]} | {r['train_seconds']:.0f} s, {r['epochs_done']:.2f} epochs | "
            f"{pct(last['accuracy']) if last else '–'} | {int8} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "| method | points | scoring time (s, total / per point, not in the clock) | stopped by | steps, batch | "
        "lr schedule done | net scored |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        probe = sum(p["probe_seconds"] for p in r["points"])
        per = probe / len(r["points"]) if r["points"] else 0.0
        if r["method"] == "backprop":
            sched = "constant lr"
            scored = "fake-quant int8 (QAT)" if not r["float"] else "float (no fake quantization)"
        else:
            sched = f"{r['schedule_done']:.0%} of cosine over {r['epochs_planned']} epochs"
            kinds = {p["fake_quant"] for p in r["points"]}
            scored = (
                "fake-quant int8 (QAT)"
                if kinds == {True}
                else "float"
                if kinds == {False}
                else "float, then fake-quant (QAT)"
            )
        lines.append(
            f"| {LABELS[r['method']]} | {len(r['points'])} | {probe:.1f} / "
            f"{per:.2f} | {r['stopped_by']} | {r['steps']}, {r['batch_size']} | "
            f"{sched} | {scored} |"
        )
    n_train = rows[0]["n_train"] if rows else 0
    lines += [
        "",
        f"{dataset}: {n_train:,} training images; every method scored on the same first {a.eval_images:,} held-out images "
        f"every {a.every_s:g} s of training wall time"
        + (
            f" (the paper preset every {a.paper_every_s:g} s)"
            if any(r["method"] == "paper" for r in rows) and a.paper_every_s != a.every_s
            else ""
        )
        + f", budget {a.budget_s:g} s per method, seed {a.seed}, {a.threads} torch thread(s), {a.device}.",
        "",
        f"- A time is the training seconds of the first scoring point at or above the threshold (resolution {a.every_s:g} s); "
        "(Nx) is that time over backprop's in this run; \"not reached (> Nx)\": not within this method's training, "
        "which was already N times backprop's time.",
        "- The training clock stops while a method is scored; the scoring time is in the second table. FF's clock (the trainer's "
        "own) leaves out the checkpoint writes and the head fit after training (FF is scored by goodness over all labels, "
        "which needs no head); it holds the trainer's end-of-epoch score, cut here to one image (`eval_samples=1`, which "
        "changes no weight; the recipe's 100 images would add seconds per epoch).",
        "- The curve points score the torch model: float during any float phase before QAT, fake-quant after. "
        '"int8 ORT" is the exported int8 ONNX bundle (`ffedge export --int8`, then `ffedge eval` under onnxruntime, '
        "goodness over all labels) on the same images, next to the last torch point.",
        "- FF predicts by goodness over all labels (one pass per label); backprop by one pass through its softmax head.",
    ]
    if bp is not None:
        lines.append(
            "- Backprop trains the "
            + (
                "int8 QAT network (`--backprop-quant`)."
                if not bp["float"]
                else "float network (no fake quantization; `--backprop-quant` for QAT): the faster, stronger baseline."
            )
        )
    lines.append(
        "- Float arithmetic (`--precision auto`: bf16 autocast on CPUs with AMX or AVX512-BF16, else fp32; QAT is fp32): "
        + ", ".join(f"{LABELS[r['method']]} {r.get('float_precision', 'fp32')}" for r in rows)
        + "."
    )
    lines += ["", machine_line(info), f"Command: `{cmd}`"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """OUT.png: accuracy vs training seconds, a line per method, the int8 ORT score as a star at the end; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        xs, ys = [p["train_seconds"] for p in r["points"]], [100 * p["accuracy"] for p in r["points"]]
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=LABELS[r["method"]].replace("`", ""))
        if r.get("int8") and xs:
            ax.plot(
                [xs[-1]],
                [100 * r["int8"]["accuracy"]],
                marker="*",
                markersize=12,
                color=line.get_color(),
                linestyle="none",
                label=f"{LABELS[r['method']].replace('`', '')}: int8 ONNX (onnxruntime)",
            )
    for t in THRESHOLDS:
        ax.axhline(100 * t, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel("training wall time (s), scoring excluded")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def resolve_dataset(a: argparse.Namespace) -> str:
    """--dataset as an ffedge spec: NAME.npz in --data-dir (the benchmarks' files) becomes npz:PATH, else ffedge's own."""
    if a.data_dir is not None:
        npz = a.data_dir / f"{a.dataset.lower().replace('-', '_')}.npz"
        if a.dataset.lower().replace("-", "_") in NPZ_NAMES and npz.is_file():
            return f"npz:{npz.absolute()}"
    return a.dataset


def quick_cut(ds: Any, n: int, path: Path) -> str:
    """--quick: the dataset with its first n held-out images only (the ones scored), as an npz spec."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        x_train=ds.x_train,
        y_train=ds.y_train,
        x_test=ds.x_test[:n],
        y_test=ds.y_test[:n],
        class_names=np.array(ds.classes),
    )
    os.replace(tmp, path)
    return f"npz:{path}"


def main() -> int:
    p = script_parser(__doc__)
    p.add_argument(
        "--dataset",
        default="mnist-5k",
        help="any ffedge dataset (mnist-5k, mnist, fashion-mnist, cifar10, cifar100, "
        "folder:PATH, npz:PATH); mnist, fashion_mnist, cifar10 are read from DATA_DIR/NAME.npz when --data-dir holds it",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder of the dataset files (the benchmarks' NAME.npz, or ffedge's own layout)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from {', '.join(METHODS)} (default: all; --quick: ff,backprop, as the paper preset's "
        "3x128 7x7 net takes about a minute to score 200 images on 2 cores)",
    )
    p.add_argument(
        "--budget-s", type=float, default=None, help="training seconds per method (default 300; --quick: 20)"
    )
    p.add_argument(
        "--every-s", type=float, default=None, help="score every this many training seconds (default 15; --quick: 10)"
    )
    p.add_argument(
        "--paper-every-s",
        type=float,
        default=None,
        help="the paper method's scoring interval (default: --every-s); its "
        "3x128 7x7 net takes minutes to score 1,000 images on a CPU",
    )
    p.add_argument(
        "--eval-images",
        type=int,
        default=None,
        help="held-out images scored (the first N; default 1,000, --quick: 200; at least 1,000 unless --quick)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs at most, every method (default: the FF recipe's own, which sets its "
        "cosine schedule; backprop, at a constant lr, trains until the budget)",
    )
    p.add_argument(
        "--backprop-quant", action="store_true", help="backprop trains the int8 QAT network (default: float)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads per training")
    p.add_argument("--device", default="cpu", help="torch device of the trainings (cpu, cuda, ...)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: ff and backprop, 20 s each, scored every 10 s on 200 held-out images",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="train every method again, even one whose result is kept in OUT-METHOD.json",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"writes OUT.json, OUT.md, OUT.png, OUT.log, OUT-METHOD.json (default: "
        f"benchmarks/results/{NAME}; with --quick: benchmarks/results/quick/{NAME})",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help=f"runs and bundles (default: runs/bench-{NAME}, with --quick runs/bench-{NAME}-quick)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(json.loads(a.child))
    a.budget_s = a.budget_s if a.budget_s is not None else (20.0 if a.quick else 300.0)
    a.every_s = a.every_s if a.every_s is not None else (10.0 if a.quick else 15.0)
    a.paper_every_s = a.paper_every_s if a.paper_every_s is not None else a.every_s
    a.eval_images = a.eval_images if a.eval_images is not None else (200 if a.quick else 1000)
    if a.budget_s <= 0 or a.every_s <= 0 or a.paper_every_s <= 0:
        p.error("--budget-s, --every-s and --paper-every-s must be positive")
    if a.eval_images < (1 if a.quick else 1000):
        p.error("--eval-images: at least 1000 (fewer only with --quick)")
    if a.epochs is not None and a.epochs < 1:
        p.error("--epochs must be at least 1")
    methods = choices(p, "--methods", a.methods or ("ff,backprop" if a.quick else ",".join(METHODS)), METHODS)
    out, work = out_stem(NAME, a.out, a.quick), work_dir(f"bench-{NAME}", a.work, a.quick)
    dataset = resolve_dataset(a)
    if "paper" in methods:
        try:
            paper_config({"dataset": dataset})
        except NoPreset as e:
            sys.exit(f"error: {e}")
    from ffedge.datasets import load_dataset
    from ffedge.errors import FFEdgeError

    try:
        ds = load_dataset(dataset, data_dir=a.data_dir)
        n_test = len(ds.y_test)
    except FFEdgeError as e:
        sys.exit(f"error: {e}")
    if n_test < a.eval_images:
        sys.exit(f"error: {dataset} has {n_test:,} held-out images, fewer than --eval-images {a.eval_images:,}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if a.quick and n_test > a.eval_images:  # an FF run scores its whole held-out split when it stops: cut it
        dataset = quick_cut(ds, a.eval_images, work / "data" / f"quick-{a.eval_images}.npz")
    log = out.with_suffix(".log")
    cmd = command(f"{NAME}.py")
    with log.open("a") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {cmd}\n")
    settings = {
        "dataset": dataset,
        "data_dir": str(a.data_dir.absolute()) if a.data_dir else None,
        "budget_s": a.budget_s,
        "every_s": a.every_s,
        "eval_images": a.eval_images,
        "seed": a.seed,
        "threads": a.threads,
        "epochs": a.epochs,
        "backprop_quant": a.backprop_quant,
        "device": a.device,
    }
    rows = []
    for m in methods:
        part = out.with_name(f"{out.name}-{m}.json")
        mine = {**settings, "every_s": a.paper_every_s if m == "paper" else a.every_s}
        if part.is_file() and not a.force:
            kept = json.loads(part.read_text())
            differ = [k for k in SETTINGS if kept.get("settings", {}).get(k) != mine[k]]
            if differ:
                sys.exit(
                    f"error: {part} was made with other settings ({', '.join(differ)}): pass --force to train {m} again, or another --out"
                )
            print(f"{m}: kept from {part} (--force trains it again)", flush=True)
            rows.append(kept)
            continue
        print(f"{m}: training for {a.budget_s:g} s, scored every {mine['every_s']:g} s ...", flush=True)
        t0 = time.perf_counter()
        spec = {**mine, "method": m, "work": str(work), "log": str(log), "result": str(part)}
        with log.open("a") as f:
            r = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT
            )
        if r.returncode:
            tail = log.read_text().strip().splitlines()[-15:]
            sys.exit(f"error: {m} failed (exit {r.returncode}); the end of {log}:\n" + "\n".join(tail))
        rows.append(json.loads(part.read_text()))
        print(f"{m}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    info = machine()
    md = markdown(rows, a, info, cmd, dataset)
    write_results(
        out,
        {
            "rows": rows,
            "settings": settings,
            "thresholds": list(THRESHOLDS),
            "machine": info,
            "command": cmd,
            "quick": a.quick,
        },
        md,
    )
    if not plot(rows, out.with_suffix(".png"), f"{dataset}: held-out accuracy vs training time"):
        print("note: matplotlib is not installed (pip install 'ffedge[report]'): no PNG", file=sys.stderr)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
