"""`ffedge bench`: int8 vs fp32 bundle vs torch fp32 eager, in one process, as a table."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ffedge.cli.app import app, console
from ffedge.options import check_int, check_threads


def _fmt(v: Any, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


@app.command("bench")
def bench(
    bundle: Path = typer.Argument(..., help="The (int8) bundle to benchmark."),
    fp32: Optional[Path] = typer.Option(
        None,
        "--fp32",
        help="fp32 bundle to compare with (default: exported from the run on the fly, when torch is installed).",
    ),
    run_dir: Optional[Path] = typer.Option(
        None,
        "--run",
        help="Training run for the torch fp32 eager baseline (default: the run the manifest names, if it exists).",
    ),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Dataset whose held-out split is used (default: the one the bundle was trained on)."
    ),
    limit: int = typer.Option(1000, "--limit", help="Held-out images scored for accuracy."),
    threads: int = typer.Option(2, "--threads", help="Threads for onnxruntime and torch."),
    warmup: int = typer.Option(20, "--warmup", help="Untimed single-image calls before timing."),
    iters: int = typer.Option(200, "--iters", help="Timed single-image calls (p50/p90 latency)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Dataset folder (default: $FFEDGE_DATA or the user cache)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Accuracy, size and batch-1 latency (goodness over all labels) of int8 vs fp32 vs torch eager, with ratios."""
    from ffedge.runtime.bench import bench_runtime, ratios
    from ffedge.runtime.evaluate import first_held_out_for_bundle
    from ffedge.progress import RichReporter
    from ffedge.runtime import Runtime

    check_threads(threads)
    check_int(warmup, "--warmup", 0)
    check_int(iters, "--iters", 1)
    check_int(limit, "--limit", 1)
    rep = RichReporter()
    rt = Runtime(str(bundle), threads=threads)
    src = rt.bundle.manifest.source
    named_run = src.run if src is not None else None
    run = run_dir or (Path(named_run) if named_run and (Path(named_run) / "weights.pt").exists() else None)
    named_data = src.dataset if src is not None else None
    x, y = first_held_out_for_bundle(
        rt, dataset or named_data or "mnist-5k", data_dir=str(data_dir) if data_dir else None, limit=limit
    )
    try:
        import ffedge.train  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_dir = fp32
        if fp32_dir is None and have_torch and run is not None:
            from ffedge.train.export import export_bundle

            fp32_dir = Path(tmp) / "fp32"
            export_bundle(run, fp32_dir, precision="fp32", verify_samples=0, reporter=rep)
        variants = [(f"{rt.bundle.manifest.precision} ORT", rt)]
        if fp32_dir is not None:
            variants.insert(0, ("fp32 ORT", Runtime(str(fp32_dir), threads=threads)))
        with rep.task("benchmarking", len(variants) + int(have_torch and run is not None)) as advance:
            for name, r in variants:
                rows.append(bench_runtime(r, name, x, y, warmup, iters))
                advance(1)
            if have_torch and run is not None:
                from ffedge.train.torch_bench import bench_torch_eager

                rows.append(bench_torch_eager(run, rt.encoding, x, y, warmup, iters, threads))
                advance(1)
    table = ratios(
        rows, accuracy_base="fp32 ORT" if fp32_dir is not None else rows[0].name, speed_base="torch fp32 eager"
    )
    result = {
        "bundle": str(bundle),
        "images": int(len(y)),
        "threads": threads,
        "iters": iters,
        "warmup": warmup,
        "rows": table,
    }
    if as_json:
        console.print_json(json.dumps(result))
        return
    t = Table(
        "variant",
        "accuracy",
        "drop (pp)",
        "size (MB)",
        "size ratio",
        "p50 ms/img",
        "p90 ms/img",
        "speed-up vs torch",
        title=f"goodness over all {rt.num_classes} labels, {len(y)} held-out "
        f"images, {threads} threads, batch 1 latency over {iters} images",
    )
    for r in table:
        t.add_row(
            r["name"],
            f"{r['accuracy']:.2%}",
            _fmt(r["drop_pp"], "+.2f"),
            _fmt(r["size_bytes"] and r["size_bytes"] / 1e6, ".3f"),
            _fmt(r["size_ratio"], ".3f"),
            f"{r['p50_ms']:.2f}",
            f"{r['p90_ms']:.2f}",
            _fmt(r["speedup"], ".2f"),
        )
    console.print(t)
    lt = Table(
        "variant",
        *[f"layer {i} ms" for i in range(rt.n_layers)],
        title="where the time goes: mean ms per image per layer (ORT: layer files run one by one; the fused net.onnx is what p50 measures)",
    )
    for r in table:
        lt.add_row(r["name"], *[f"{v:.3f}" for v in r["layer_ms"]])
    console.print(lt)
    if not have_torch:
        console.print("torch is not installed: no torch eager baseline (pip install 'ffedge[train]')")
