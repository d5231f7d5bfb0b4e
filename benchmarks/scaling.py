"""Training throughput and held-out accuracy of one run spread over processes, threads or GPUs, same epochs.

Rows (each one `ffedge train` in its own process tree, the same recipe and epochs):

- `1x2`: 1 process x 2 threads (the baseline on a 2-core machine);
- `2x1-data`: 2 processes x 1 thread, data parallel (`--nproc 2`: torch.distributed, gloo);
- `2x1-layers`: a 2-stage layer pipeline, 1 thread each (`--parallel layers --nproc 2`); skipped with a
  note while this ffedge has no `--parallel`;
- `gpu-1`, `gpu-N`: 1 GPU, and N GPUs data parallel (`--device cuda [--nproc N]`; NCCL), when torch
  sees GPUs (`gpu-N` from 2 of them).

Images/s = training images x epochs / the run's training seconds (metrics.json: the epochs and their
held-out scoring, not the start-up, the head or the final scoring); speedup = the row's images/s over its
baseline's (`1x2` for CPU rows, `gpu-1` for GPU rows); efficiency = speedup / (GPUs used) for GPU rows, and
for CPU rows the speedup itself (every CPU row uses the same 2 cores). Accuracy: goodness over all labels
(`test_accuracy`) and the softmax head, on the whole held-out split.

    python benchmarks/scaling.py                          # mnist-5k, the default recipe's 50 epochs, CPU rows (+ GPU rows)
    python benchmarks/scaling.py --epochs 10 --rows 1x2,2x1-data
    python benchmarks/scaling.py --rows gpu-1,gpu-N       # on a GPU machine
    python benchmarks/scaling.py --quick                  # smoke: 1 epoch on 500 / 200 digits, small head, results/quick/

Nothing else may run on the machine meanwhile: the training time is the figure.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    SHARED,
    add_out_option,
    choices,
    command,
    dataset_file,
    embedded_subset,
    ffedge,
    fresh_log,
    machine,
    machine_line,
    out_stem,
    pct,
    script_parser,
    work_dir,
    write_results,
)

QUICK_TRAIN = ["--epochs", "1", "--head-epochs", "2", "--head-augment", "0", "--eval-samples", "50"]
QUICK_DIGITS = (500, 200)  # --quick on mnist-5k: this many of its training / held-out digits


@dataclass(frozen=True)
class Row:
    name: str
    args: tuple[str, ...]
    processes: int
    threads: int
    gpus: int = 0


def rows_available(gpus: int) -> dict[str, Row]:
    """Every row this machine can run (GPU rows only with GPUs: ``gpu-N`` with N = ``gpus``)."""
    rows = {
        "1x2": Row("1 process x 2 threads", ("--threads", "2"), 1, 2),
        "2x1-data": Row("2 processes x 1 thread, data parallel", ("--nproc", "2", "--threads", "1"), 2, 1),
        "2x1-layers": Row(
            "2-stage layer pipeline, 1 thread each", ("--parallel", "layers", "--nproc", "2", "--threads", "1"), 2, 1
        ),
    }
    if gpus >= 1:
        rows["gpu-1"] = Row("1 GPU", ("--device", "cuda"), 1, 0, gpus=1)
    if gpus >= 2:
        rows["gpu-N"] = Row(f"{gpus} GPUs, data parallel", ("--device", "cuda", "--nproc", str(gpus)), gpus, 0, gpus)
    return rows


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def why_skipped(row: Row, train_help: str) -> str | None:
    if "--parallel" in row.args and "--parallel" not in train_help:
        return "this ffedge has no `ffedge train --parallel layers` yet (the layer pipeline of issue 15)"
    return None


def run_row(key: str, row: Row, dataset: str, work: Path, train_args: list[str], log: Path) -> dict:
    out = work / key
    t0 = time.perf_counter()
    ffedge("train", "--dataset", dataset, "--out", str(out), "--force", *row.args, *train_args, log=log)
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    return {
        "row": key,
        "name": row.name,
        "processes": row.processes,
        "threads_per_process": row.threads,
        "gpus": row.gpus,
        "world_size": m.get("world_size", 1),
        "epochs": m["epochs"],
        "n_train": m["n_train"],
        "n_test": m["n_test"],
        "wall_seconds": round(wall, 2),
        "train_seconds": m["train_seconds"],
        "images_per_s": round(m["n_train"] * m["epochs"] / m["train_seconds"], 1),
        "test_accuracy": m["test_accuracy"],
        "head_test_accuracy": m["head_test_accuracy"],
    }


def add_speedups(rows: list[dict]) -> None:
    """Speedup over the baseline row of the same kind (CPU: ``1x2``, GPU: ``gpu-1``) and the efficiency."""
    base = {r["row"]: r for r in rows if "images_per_s" in r}
    for r in rows:
        ref = base.get("gpu-1" if r.get("gpus") else "1x2")
        if "images_per_s" not in r or ref is None:
            continue
        r["speedup"] = round(r["images_per_s"] / ref["images_per_s"], 3)
        r["efficiency"] = round(r["speedup"] / max(r["gpus"], 1), 3)


def markdown(result: dict) -> str:
    lines = [
        "# Scaling: one training run over processes, threads or GPUs",
        "",
        f"Command: `{result['command']}`  ",
        machine_line(result["machine"]) + "  ",
        f"Dataset {result['dataset']}, training options `{shlex.join(result['train_args']) or '(the default recipe)'}`."
        + (" **Quick run: smoke figures, not a measurement.**" if result["quick"] else ""),
        "",
        "| row | processes x threads | GPUs | epochs | train s | wall s | images/s | speedup | efficiency | held-out (goodness) | head |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            continue
        lines.append(
            f"| {r['name']} | {r['processes']} x {r['threads_per_process'] or '-'} | {r['gpus'] or '-'} | {r['epochs']} "
            f"| {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} | {r['images_per_s']:.0f} | {r.get('speedup', '–')} "
            f"| {r.get('efficiency', '–')} | {pct(r['test_accuracy'])} | {pct(r['head_test_accuracy'])} |"
        )
    lines += [f"\nSkipped: {r['name']}: {r['skipped']}." for r in result["rows"] if "skipped" in r]
    lines += [
        "",
        "Images/s: training images x epochs / training seconds (the epochs with their per-epoch held-out scoring; "
        "not the start-up, the head fit or the final scoring: wall s has those). Speedup: over `1 process x 2 threads` "
        "(CPU rows, all on the same cores, so the speedup is the efficiency) or over `1 GPU` (efficiency = speedup / GPUs).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = script_parser(__doc__)
    p.add_argument(
        "--rows", default=None, help="comma-separated rows (default: every CPU row, and GPU rows when present)"
    )
    p.add_argument(
        "--dataset", default="mnist-5k", help="mnist-5k (embedded, default) or a benchmark .npz in --data-dir"
    )
    p.add_argument("--data-dir", type=Path, default=SHARED, help="where the benchmark .npz files are")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every row (default: the recipe's own)")
    p.add_argument("--train-args", default="", help="extra ffedge train options, the same for every row")
    p.add_argument(
        "--work", type=Path, default=None, help="runs (default: runs/bench-scaling; --quick: runs/bench-scaling-quick)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {' '.join(QUICK_TRAIN)} (mnist-5k: {QUICK_DIGITS[0]} / {QUICK_DIGITS[1]} digits); results/quick/",
    )
    add_out_option(p, "scaling")
    a = p.parse_args()
    available = rows_available(gpu_count())
    keys = (
        choices(p, "--rows", a.rows, available)
        if a.rows
        else [k for k in available if not k.startswith("gpu")] + [k for k in available if k.startswith("gpu")]
    )
    out = out_stem("scaling", a.out, a.quick)
    work = work_dir("bench-scaling", a.work, a.quick)
    if a.dataset != "mnist-5k":
        dataset = f"npz:{dataset_file(a.dataset, a.data_dir)}"
    elif a.quick:
        dataset = f"npz:{embedded_subset(work / 'mnist-5k-small.npz', *QUICK_DIGITS)}"
    else:
        dataset = "mnist-5k"
    train_args = (QUICK_TRAIN if a.quick else []) + (["--epochs", str(a.epochs)] if a.epochs is not None else [])
    train_args += shlex.split(a.train_args)
    log = fresh_log(out)
    train_help = ffedge("train", "--help")
    rows: list[dict] = []
    for key in keys:
        row = available[key]
        why = why_skipped(row, train_help)
        if why is not None:
            print(f"skipped: {row.name}: {why}", flush=True)
            rows.append({"row": key, "name": row.name, "skipped": why})
            continue
        print(f"{row.name} ...", flush=True)
        rows.append(run_row(key, row, dataset, work, train_args, log))
        r = rows[-1]
        print(
            f"  {r['images_per_s']:.0f} images/s, held-out {pct(r['test_accuracy'])}, {r['wall_seconds']:.0f} s",
            flush=True,
        )
    add_speedups(rows)
    result = {
        "command": command("scaling.py"),
        "quick": a.quick,
        "machine": machine(),
        "dataset": a.dataset
        + (f" ({QUICK_DIGITS[0]} / {QUICK_DIGITS[1]} digits)" if a.quick and a.dataset == "mnist-5k" else ""),
        "train_args": train_args,
        "rows": rows,
    }
    write_results(out, result, markdown(result))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
