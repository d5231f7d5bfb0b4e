"""Batch-1 latency of the prediction modes of a bundle, each in its own fresh process, modes interleaved, as ratios to `all`.

Each repeat runs every mode once, in turn, in a fresh Python process (so no other mode's onnxruntime thread pool is
alive: a spinning pool steals the cores of the next one): `Runtime(BUNDLE, threads=T)`, `--warmup` untimed images,
then each held-out image alone (`predict_normalized`, the normalization untimed), `--images` of them. It reports
p50, p10 and min per run, and per repeat each mode's p50 and min over `all`'s of the same repeat, so a shared
machine's drift between repeats cancels. The ratios are the figure to read; the absolute times move with the
machine's load.

    python benchmarks/mode_latency.py export/mnist-5k-int8                      # all, topk --k 2, head; 3 repeats
    python benchmarks/mode_latency.py BUNDLE --threads 1 --reps 5 --out /tmp/modes-1thread
    python benchmarks/mode_latency.py --quick                                   # a tiny bundle it trains, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_out_option,
    command,
    embedded_subset,
    export_int8,
    fresh_log,
    machine,
    machine_line,
    out_stem,
    script_parser,
    train,
    work_dir,
    write_results,
)


def worker(bundle: str, mode: str, k: int, threads: int, images: int, warmup: int, dataset: str) -> dict[str, Any]:
    """One mode's batch-1 latency in this process (ms)."""
    from ffedge.datasets import load_dataset
    from ffedge.runtime import Runtime

    rt = Runtime(bundle, threads=threads)
    x = rt.normalize(load_dataset(dataset).x_test[: max(images, warmup)])
    for i in range(warmup):
        rt.predict_normalized(x[i % len(x) : i % len(x) + 1], mode, k)
    ts = []
    for i in range(images):
        t = time.perf_counter()
        rt.predict_normalized(x[i % len(x) : i % len(x) + 1], mode, k)
        ts.append(time.perf_counter() - t)
    a = np.array(ts) * 1e3
    return {"p50_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)), "min_ms": float(a.min())}


def run_mode(a: Any, mode: str) -> dict[str, Any]:
    args = [sys.executable, __file__, str(a.bundle), "--worker", mode, "--k", str(a.k), "--threads", str(a.threads)]
    args += ["--images", str(a.images), "--warmup", str(a.warmup), "--dataset", a.dataset]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"error: mode {mode} failed: {r.stderr.strip()[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def markdown(result: dict[str, Any]) -> str:
    modes = result["modes"]
    label = {m: (f"topk --k {result['k']}" if m == "topk" else m) for m in modes}
    lines = [
        "# Batch-1 latency per mode",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Bundle `{result['bundle']}`, {result['threads']} thread(s), {result['images']} held-out images of "
        f"{result['dataset']} one at a time after {result['warmup']} untimed, each mode in a fresh process, modes "
        "interleaved; ms.",
        "",
        "| repeat | "
        + " | ".join(f"`{label[m]}` p50 / p10 / min" for m in modes)
        + " | "
        + " | ".join(f"`{label[m]}` / `all` (p50, min)" for m in modes if m != "all")
        + " |",
        "|---" * (1 + len(modes) + len(modes) - 1) + "|",
    ]
    for i, rep in enumerate(result["repeats"], 1):
        cells = [f"{rep[m]['p50_ms']:.3f} / {rep[m]['p10_ms']:.3f} / {rep[m]['min_ms']:.3f}" for m in modes]
        ratios = [f"{rep['ratio_p50'][m]:.3f}, {rep['ratio_min'][m]:.3f}" for m in modes if m != "all"]
        lines.append(f"| {i} | " + " | ".join(cells + ratios) + " |")
    med = result["median_ratio_p50"]
    lines += [
        "",
        "Median over the repeats of each mode's p50 over `all`'s: "
        + ", ".join(f"`{label[m]}` {med[m]:.3f}" for m in modes if m != "all")
        + ".",
        "",
        machine_line(result["machine"]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = script_parser(__doc__ or "")
    p.add_argument("bundle", type=Path, nargs="?", help="the bundle (not with --quick, which makes its own)")
    p.add_argument("--modes", default="all,topk,head", help="comma-separated, the first is the reference (all)")
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--dataset", default="mnist-5k", help="whose held-out images are timed (default mnist-5k)")
    p.add_argument("--data-dir", type=Path, default=None, help="unused: the images come from --dataset")
    p.add_argument("--quick", action="store_true", help="train and export a tiny bundle; 1 repeat of 50 images")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # the child process of one mode
    add_out_option(p, "mode_latency")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(str(a.bundle), a.worker, a.k, a.threads, a.images, a.warmup, a.dataset)))
        return
    if (a.bundle is None) == (not a.quick):
        p.error("give a bundle folder, or --quick (which makes its own)")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not modes or modes[0] != "all":
        p.error("--modes must start with all (the reference)")
    out = out_stem("mode_latency", a.out, a.quick)
    if a.quick:
        work = work_dir("bench-mode_latency", None, True)
        log = fresh_log(out)
        data = embedded_subset(work / "digits.npz", 300, 100)
        extra = ["--layers", "8x5p,16x3p,16x3", "--head-epochs", "2", "--eval-samples", "10"]
        train(f"npz:{data}", work / "run", 1, extra, log)
        export_int8(work / "run", work / "bundle-int8", log)
        a.bundle, a.reps, a.images, a.warmup = work / "bundle-int8", 1, 50, 5
    elif not (a.bundle / "manifest.json").is_file():
        p.error(f"{a.bundle} is not a bundle folder (no manifest.json)")
    repeats = []
    for r in range(a.reps):
        rep: dict[str, Any] = {m: run_mode(a, m) for m in modes}
        rep["ratio_p50"] = {m: rep[m]["p50_ms"] / rep["all"]["p50_ms"] for m in modes}
        rep["ratio_min"] = {m: rep[m]["min_ms"] / rep["all"]["min_ms"] for m in modes}
        repeats.append(rep)
        print(
            f"repeat {r + 1}: "
            + ", ".join(f"{m} {rep[m]['p50_ms']:.3f} ms ({rep['ratio_p50'][m]:.3f}x)" for m in modes),
            flush=True,
        )
    result = {
        "command": command("mode_latency.py"),
        "quick": a.quick,
        "bundle": str(a.bundle),
        "modes": modes,
        "k": a.k,
        "threads": a.threads,
        "images": a.images,
        "warmup": a.warmup,
        "dataset": a.dataset,
        "repeats": repeats,
        "median_ratio_p50": {m: statistics.median(rep["ratio_p50"][m] for rep in repeats) for m in modes},
        "machine": machine(),
    }
    write_results(out, result, markdown(result))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
