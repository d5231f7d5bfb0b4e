"""Accuracy table: FF-CNN int8 bundles on MNIST, Fashion-MNIST and CIFAR-10, next to published anchors.

For each dataset: `ffedge train` (default network, fourier labels, int8 QAT),
`ffedge export --int8` (parity-checked), then `ffedge eval` of the int8 ONNX
bundle with onnxruntime on the full held-out test set in three modes: goodness
over all labels, the softmax head alone, and top-k (head proposes k, goodness
decides). Epochs and wall time are reported with the accuracy: on a small CPU
the epochs are far fewer than the anchors used, so the table says how far
from convergence each figure is.

    python benchmarks/accuracy.py --epochs 3 --data-dir ../shared/data
    python benchmarks/accuracy.py --presets --datasets mnist --data-dir ../shared/data   # the `mnist` preset's recipe
    nohup python benchmarks/accuracy.py --presets --data-dir ../shared/data > accuracy.nohup.log 2>&1 &   # in the background

With --presets each dataset trains with its preset (`ffedge train --preset mnist|fashion|cifar10`, its
own epochs unless --epochs) and the results go to benchmarks/results/accuracy-presets.*. Long runs
survive: a dataset whose row is kept in OUT-DATASET.json (same settings) is not trained again unless
--force, and a run cut short (a checkpoint without metrics.json) continues with `ffedge train --resume`,
so rerunning the same command finishes an interrupted benchmark.
    python benchmarks/accuracy.py --quick --data-dir ../shared/data   # 1 epoch on 500 training images per dataset
        # (about a minute each), into benchmarks/results/quick/; without --datasets, one whose .npz is not there is skipped
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ffedge.fsutil import atomic_write_json  # noqa: E402

from common import (
    SHARED,
    add_out_option,
    choices,
    clean,
    command,
    dataset_files,
    evaluate,
    export_int8,
    machine,  # noqa: E402
    machine_line,
    out_stem,
    pct,
    skipped_note,
    subset,
    train,
    work_dir,
    write_results,
)

DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
# Published test accuracies (%) and this project's goals, per dataset.
ANCHORS = {
    "paper (Scodellaro et al., FF-CNN)": {"mnist": 99.16},
    "CwComp": {"mnist": 99.42, "fashion_mnist": 92.31, "cifar10": 78.11},
    "DeeperForward (best)": {"mnist": 99.65, "fashion_mnist": 93.13, "cifar10": 86.22},
    "ffedge goal": {"mnist": 99.4, "fashion_mnist": 92.5, "cifar10": 80.0},
}
MODES = (("all", 0), ("topk", 3), ("head", 0))


PRESET_OF = {"mnist": "mnist", "fashion_mnist": "fashion", "cifar10": "cifar10"}


def train_preset(name: str, spec: str, run: Path, epochs: int | None, train_args: list[str], log: Path) -> dict:
    """`ffedge train --preset` for the dataset, or `--resume` of a run of it that was cut short; returns its metrics."""
    resume = (run / "checkpoint.pt").is_file() and not (run / "metrics.json").is_file()
    if resume:
        print(f"  resuming {run}", flush=True)
    return train(spec, run, epochs, ["--preset", PRESET_OF[name], *train_args], log, resume=resume)


def run_dataset(
    name: str,
    path: Path,
    epochs: int | None,
    work: Path,
    log: Path,
    train_args: list[str],
    presets: bool = False,
    latency_images: int = 100,
) -> dict:
    spec = f"npz:{path}"
    if presets:
        metrics = train_preset(name, spec, work / "runs" / name, epochs, train_args, log)
        epochs = metrics["epochs"]
    else:
        metrics = train(spec, work / "runs" / name, epochs, train_args, log)
    parity = export_int8(work / "runs" / name, work / "export" / name, log)
    evals = {f"{m}{k or ''}": evaluate(work / "export" / name, spec, m, k, log, latency_images) for m, k in MODES}
    return {
        "dataset": name,
        "epochs": epochs,
        "preset": PRESET_OF[name] if presets else None,
        "float_precision": metrics.get("float_precision", "fp32"),
        "n_train": metrics["n_train"],
        "n_test": metrics["n_test"],
        "train_seconds": metrics["train_seconds"],
        "train_wall_seconds": metrics["wall_seconds"],
        "qat_test_accuracy": metrics["test_accuracy"],
        "per_layer_test_accuracy": metrics["per_layer_test_accuracy"],
        "parity": parity,
        "int8_ort": evals,
        "machine": machine(),
    }


def markdown(rows: list[dict], info: dict, cmd: str) -> str:
    lines = [
        "| dataset | epochs | train time | int8 ORT, goodness over all labels | "
        "int8 ORT, top-3 | int8 ORT, head | p50 latency (all / top-3 / head) | " + " | ".join(ANCHORS) + " |",
        "|---" * (7 + len(ANCHORS)) + "|",
    ]
    for r in rows:
        e = r["int8_ort"]
        lat = " / ".join(f"{e[m]['latency_batch1']['p50_ms']:.2f}" for m in ("all", "topk3", "head")) + " ms"
        anchors = " | ".join(f"{a[r['dataset']]:.2f}%" if r["dataset"] in a else "–" for a in ANCHORS.values())
        recipe = f"`--preset {r['preset']}`, " if r.get("preset") else ""
        lines.append(
            f"| {DATASETS[r['dataset']]} ({r['n_train']:,} train / {r['n_test']:,} test) | {recipe}{r['epochs']} "
            f"({r.get('float_precision', 'fp32')} float) | "
            f"{r['train_seconds'] / 60:.1f} min | **{pct(e['all']['accuracy'])}** | {pct(e['topk3']['accuracy'])} | "
            f"{pct(e['head']['accuracy'])} | {lat} | {anchors} |"
        )
    # Kept rows may come from another machine than this run: each row names its own where they differ.
    where = {DATASETS[r["dataset"]]: machine_line(r.get("machine", info)) for r in rows}
    if len(set(where.values())) <= 1:
        lines += ["", machine_line(info)]
    else:
        lines += [""] + [f"{ds}: {line}" for ds, line in where.items()]
    # Rows kept from other commands (another --datasets) each name the command that reproduces them.
    cmds = {DATASETS[r["dataset"]]: r.get("command", cmd) for r in rows}
    if len(set(cmds.values())) <= 1:
        lines += [f"Command: `{next(iter(cmds.values()), cmd)}`"]
    else:
        lines += [f"{ds}: `{c}`" for ds, c in cmds.items()]
    return "\n".join(lines) + "\n"


def row_command(name: str, settings: dict) -> str:
    """The command that trains one dataset's row again with its kept settings."""
    parts = ["python benchmarks/accuracy.py"]
    parts += ["--presets"] if settings.get("presets") else []
    parts += ["--quick"] if settings.get("quick") else []
    parts += ["--datasets", name]
    parts += ["--epochs", str(settings["epochs"])] if settings.get("epochs") is not None else []
    parts += [f"--train-args={settings['train_args']!r}"] if settings.get("train_args") else []
    parts += ["--data-dir", str(Path(settings["data"]).parent)] if settings.get("data") else []
    return " ".join(parts)


def kept_rows(out: Path, names: list[str], presets: bool, quick: bool) -> list[dict]:
    """Rows of the datasets not trained by this command, kept in OUT-DATASET.json by an earlier one with the same
    --presets and --quick, so that a command for one dataset leaves the others in the table."""
    rows = []
    for n in DATASETS:
        path = out.with_name(f"{out.name}-{n}.json")
        if n in names or not path.is_file():
            continue
        kept = json.loads(path.read_text())
        settings = kept.get("settings", {})
        if bool(settings.get("presets")) == presets and bool(settings.get("quick")) == quick:
            rows.append({"command": row_command(n, settings), **kept["row"]})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Writes OUT.json and OUT.md; logs every ffedge command to OUT.log."
    )
    p.add_argument(
        "--datasets",
        default=None,
        help="comma-separated: mnist, fashion_mnist, cifar10 (default: all three; with --quick: those in --data-dir)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs per dataset (default 3; with --presets: the preset's)"
    )
    p.add_argument(
        "--presets",
        action="store_true",
        help="train each dataset with its preset (mnist, fashion, cifar10): the recipes "
        "behind the issue-11 bars; results go to benchmarks/results/accuracy-presets.*",
    )
    p.add_argument(
        "--force", action="store_true", help="train every dataset again, even one whose row is kept in OUT-DATASET.json"
    )
    p.add_argument(
        "--data-dir", type=Path, default=SHARED, help="folder with mnist.npz, fashion_mnist.npz, cifar10.npz"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="where runs and bundles go (default: runs/bench-accuracy; with --quick: runs/bench-accuracy-quick)",
    )
    p.add_argument("--train-args", default="", help="extra ffedge train options, e.g. '--layers 32x5p,64x3p'")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch on 500 training and 200 test images")
    add_out_option(p, "accuracy")
    a = p.parse_args()
    name = "accuracy-presets" if a.presets else "accuracy"
    out = out_stem(name, a.out, a.quick)
    work = work_dir(f"bench-{name}", a.work, a.quick)
    names = choices(p, "--datasets", a.datasets or ",".join(DATASETS), DATASETS)
    paths, skipped = dataset_files(names, a.data_dir, a.quick, a.datasets is not None)
    names = list(paths)
    if a.quick:
        a.epochs = 1
    elif a.epochs is None and not a.presets:
        a.epochs = 3
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in names:
        kept_path = out.with_name(f"{out.name}-{n}.json")
        settings = {
            "epochs": a.epochs,
            "presets": a.presets,
            "train_args": a.train_args,
            "quick": a.quick,
            "data": str(paths[n]),
        }
        kept = json.loads(kept_path.read_text()) if kept_path.is_file() else None
        if kept and kept.get("settings") == settings and not a.force:
            print(f"{DATASETS[n]}: kept from {kept_path} (--force trains it again)", flush=True)
            rows.append(kept["row"])
            continue
        if a.force or (kept and kept.get("settings") != settings):
            clean(work / "runs" / n)  # a run of other settings is not resumed
        # In the work folder, not a temp dir: a quick run cut short resumes from the same file.
        path = subset(paths[n], work / "data" / f"{n}.npz", 500, 200) if a.quick else paths[n]
        recipe = f"preset {PRESET_OF[n]}" if a.presets else "default recipe"
        print(f"{DATASETS[n]}: train ({recipe}, {a.epochs or 'its'} epochs), export int8, eval ...", flush=True)
        rows.append(run_dataset(n, path, a.epochs, work, log, a.train_args.split(), a.presets, 20 if a.quick else 100))
        atomic_write_json(kept_path, {"settings": settings, "row": rows[-1]})
        r = rows[-1]
        print(
            f"  int8 ORT all {pct(r['int8_ort']['all']['accuracy'])}, head {pct(r['int8_ort']['head']['accuracy'])}, "
            f"train {r['train_seconds']:.0f} s",
            flush=True,
        )
    info = machine()
    cmd = command("accuracy.py")
    for r in rows:
        r.setdefault("command", cmd)
    others = kept_rows(out, names, a.presets, a.quick)
    rows = sorted(rows + others, key=lambda r: list(DATASETS).index(r["dataset"]))
    md = markdown(rows, info, cmd) + skipped_note(skipped)
    result = {"rows": rows, "anchors": ANCHORS, "machine": info, "command": cmd, "quick": a.quick, "skipped": skipped}
    write_results(out, result, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
