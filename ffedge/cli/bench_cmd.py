"""`ffedge bench`: int8 vs fp32 bundle vs torch fp32 eager, each in its own process, against the machine's GEMM rate."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import typer

from ffedge.cli.app import DOWNLOAD_HELP, app, choice, print_json, say
from ffedge.errors import install_hint
from ffedge.options import check_int, check_threads
from ffedge.runtime.engines import ENGINES

EngineName = choice(ENGINES)


def _fmt(v: Any, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def print_tables(result: dict[str, Any]) -> None:
    """The human tables of :func:`ffedge.runtime.bench.run_bench`'s result."""
    from ffedge.cli.table import Table

    rows, g, mach = result["rows"], result["gemm"], result["machine"]
    sizes = " or ".join(f"{n}^3" for n in g["sizes"])
    t = Table(
        "variant", "accuracy", "drop (pp)", "size (MB)", "size ratio", "init ms", "first ms", "peak RSS MB",
        title=f"goodness over all labels, {result['images']} held-out images, {result['threads']} threads, "
        f"each variant in {'its own process' if result['isolated'] else 'this one process'}",
    )  # fmt: skip
    for r in rows:
        t.add_row(
            r["name"],
            f"{r['accuracy']:.2%}",
            _fmt(r["drop_pp"], "+.2f"),
            _fmt(r["size_bytes"] and r["size_bytes"] / 1e6, ".3f"),
            _fmt(r["size_ratio"], ".3f"),
            f"{r['init_ms']:.1f}",
            f"{r['first_ms']:.2f}",
            _fmt(r["peak_rss_mb"], ".0f"),
        )
    t.print()
    t = Table(
        "variant", "p50 ms", "p90 ms", "min ms", "max ms", "std ms", f"img/s at {result['batch']}",
        "x torch p50", "x torch min", f"x torch at {result['batch']}",
        title=f"batch-1 latency per image over {result['iters']} images (after {result['warmup']}), "
        f"throughput at batch {result['batch']}; speed-up against {result['speed_base'] or '-'}",
    )  # fmt: skip
    for r in rows:
        t.add_row(
            r["name"],
            *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "min_ms", "max_ms", "std_ms")),
            f"{r['images_per_s']:.0f}",
            *(_fmt(r[k], ".2f") for k in ("speedup", "speedup_min", "speedup_batch")),
        )
    t.print()
    t = Table(
        "variant", "GEMM line", "MMAC/img", "MMAC/img today", "GMAC/s p50", "% p50", "GMAC/s min", "% min",
        f"GMAC/s at {result['batch']}", f"% at {result['batch']}", f"% at {result['batch']} today",
        title=f"physical limit: achieved MAC/s against onnxruntime's best GEMM ({sizes}) on this machine, "
        f"{g['threads']} threads: int8 {g['int8_gmacs']:.1f}, fp32 {g['fp32_gmacs']:.1f} GMAC/s (the best of "
        "a measurement before and one after the variants); today: layer 0 counted in full per hypothesis",
    )  # fmt: skip
    for r in rows:
        lim = r["limit"]
        t.add_row(
            r["name"],
            lim["gemm"],
            _fmt(lim["macs_per_image"] and lim["macs_per_image"] / 1e6, ".2f"),
            _fmt(lim["macs_per_image_today"] and lim["macs_per_image_today"] / 1e6, ".2f"),
            *(_fmt(lim[at][k], ".1f") for at in ("p50", "min", "batch") for k in ("gmacs", "pct")),
            _fmt(lim["batch"]["pct_today"], ".1f"),
        )
    t.print()
    twins = [r for r in rows if r.get("agree_with")]
    if twins:
        t = Table(
            "variant", "against", "top-1 agreement", "accuracy", "p50 ms", "p50 speed-up", "convolutions run in",
            title="the same bundle on another engine: agreement with, and speed-up over, onnxruntime (batch 1)",
        )  # fmt: skip
        for r in twins:
            precisions = sorted(set((r.get("conv_precisions") or {}).values()))
            t.add_row(
                r["name"],
                r["agree_with"],
                f"{r['agreement']:.2%}",
                f"{r['accuracy']:.2%}",
                f"{r['p50_ms']:.2f}",
                _fmt(r["p50_ratio"], ".2f"),
                f"{', '.join(precisions) or '-'} ({len(r.get('conv_precisions') or {})} convs)",
            )
        t.print()
    n_layers = max(len(r["layer_ms"]) for r in rows)
    t = Table(
        "variant",
        *[f"layer {i} ms" for i in range(n_layers)],
        title="where the time goes: median ms per image per layer (ORT: layer files run one by one; "
        "the fused net.onnx is what p50 measures)",
    )
    for r in rows:
        t.add_row(r["name"], *[f"{v:.3f}" for v in r["layer_ms"]])
    t.print()
    flags = ", ".join(mach["gemm_flags"]) or "none of the listed"
    say(
        f"machine: {mach['cpu']} ({mach['arch']}, {mach['logical_cpus']} logical CPUs; {flags}), "
        f"onnxruntime {mach['onnxruntime']}, numpy {mach['numpy']}, load average {mach['load_average']} "
        f"-> {mach['load_average_after']}"
    )


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
    threads: int = typer.Option(2, "--threads", help="Threads for onnxruntime, torch and the GEMM rate."),
    warmup: int = typer.Option(20, "--warmup", help="Untimed single-image calls before timing."),
    iters: int = typer.Option(200, "--iters", help="Timed single-image calls (latency statistics)."),
    batch: int = typer.Option(64, "--batch", help="Batch size of the throughput measurement."),
    gemm_size: int = typer.Option(
        1024,
        "--gemm-size",
        help="M = K = N of the GEMM whose rate is the physical limit (half of it is tried too; the best counts).",
    ),
    in_process: bool = typer.Option(
        False,
        "--in-process",
        help="Run every variant in this process, each kept open (as before; to see how they disturb each other).",
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Dataset folder (default: $FFEDGE_DATA or the user cache)."
    ),
    engine: EngineName = typer.Option(
        "onnxruntime",
        "--engine",
        help="openvino: also run the bundle with OpenVINO's own runtime (ffedge's 'openvino' extra) and "
        "compare it with onnxruntime: accuracy, top-1 agreement, latency, each convolution's runtime precision.",
    ),
    providers: Optional[str] = typer.Option(
        None,
        "--providers",
        help="onnxruntime execution providers for the ORT rows, comma-separated, in priority order.",
    ),
    download: bool = typer.Option(True, "--download/--no-download", help=DOWNLOAD_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Init, first-inference, latency stats, throughput, peak RSS, accuracy and % of the machine's GEMM rate of
    int8 vs fp32 vs torch eager (goodness over all labels), each variant in a fresh process."""
    from ffedge.bundle import open_bundle
    from ffedge.progress import RichReporter
    from ffedge.runtime.bench import openvino_variant, ort_variants, run_bench, torch_variant
    from ffedge.runtime.engines import check_engine, check_providers, import_openvino
    from ffedge.runtime.evaluate import first_held_out

    check_threads(threads)
    check_int(warmup, "--warmup", 0)
    check_int(iters, "--iters", 1)
    check_int(limit, "--limit", 1)
    check_int(batch, "--batch", 1)
    check_int(gemm_size, "--gemm-size", 1, 8192)
    check_engine(engine)
    provider_list = check_providers(providers)
    if engine == "openvino":
        import_openvino()  # not installed: say so before anything is measured
    rep = RichReporter(log_to_stderr=as_json)
    b = open_bundle(bundle)
    src = b.manifest.source
    named_run = src.run if src is not None else None
    run = run_dir or (Path(named_run) if named_run and (Path(named_run) / "weights.pt").exists() else None)
    named_data = src.dataset if src is not None else None
    x, y = first_held_out(
        dataset or named_data or "mnist-5k",
        b.input_shape,
        len(b.classes),
        data_dir=str(data_dir) if data_dir else None,
        limit=limit,
        download=download,
    )
    try:
        import ffedge.train  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    with tempfile.TemporaryDirectory() as tmp:
        fp32_dir = fp32
        if fp32_dir is None and have_torch and run is not None:
            from ffedge.train.export import export_bundle

            fp32_dir = Path(tmp) / "fp32"
            export_bundle(run, fp32_dir, precision="fp32", verify_samples=0, reporter=rep)
        variants = (
            ort_variants(fp32_dir, both_ways=False, providers=provider_list) if fp32_dir is not None else []
        ) + ort_variants(bundle, providers=provider_list)
        if engine == "openvino":
            variants.append(openvino_variant(bundle))
        if have_torch and run is not None:
            variants.append(torch_variant(run, bundle))
        result = run_bench(
            variants,
            x,
            y,
            threads,
            warmup,
            iters,
            batch,
            gemm_size,
            accuracy_base=variants[0].name,
            speed_base="torch fp32 eager",
            isolate=not in_process,
            reporter=rep,
        )
    result["bundle"] = str(bundle)
    if as_json:
        print_json(result)
        return
    print_tables(result)
    if not have_torch:
        say(f"torch is not installed: no torch eager baseline ({install_hint('train')})")
