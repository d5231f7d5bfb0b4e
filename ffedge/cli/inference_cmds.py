"""`ffedge eval`, `ffedge predict`: run a bundle on the device (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ffedge.cli.app import DOWNLOAD_HELP, app, choice, dataset_help, mode_help, one_of, print_json, say, shown
from ffedge.options import check_int, check_threads
from ffedge.runtime.engines import ENGINES
from ffedge.runtime.modes import DEFAULT_MODE, MODES, REGISTRY as MODE_REGISTRY, mode_spec

ModeName = choice(MODES)
EngineName = choice(ENGINES)
MODE_HELP = mode_help()
K_HELP = f"Candidates for --mode {one_of([m.name for m in MODE_REGISTRY if m.uses_k])}."
LOW_MEMORY_HELP = (
    "Low-memory mode for small boards: run the layer files one at a time, each opened without onnxruntime's "
    "memory arena and dropped after its layer (never the fused graph; the head only for the modes that use it), "
    "at most 64 label hypotheses per pass. Same predictions and lower peak memory, but slower: the layer "
    "sessions are built again for every pass, which adds up over many images."
)
PROVIDERS_HELP = (
    "onnxruntime execution providers in priority order, comma-separated (e.g. "
    "OpenVINOExecutionProvider,CPUExecutionProvider; default: CPUExecutionProvider). One this onnxruntime "
    "lacks is an error that lists the ones it has."
)
ENGINE_HELP = (
    "Runtime that runs the bundle: onnxruntime (default) or openvino (OpenVINO's own runtime on the CPU, "
    "needs ffedge's 'openvino' extra; runs net.onnx, every convolution in int8)."
)


@app.command("eval")
def eval_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    dataset: str = typer.Option(
        "mnist-5k", "--dataset", help=f"Dataset whose held-out split to score: {dataset_help()}."
    ),
    mode: ModeName = typer.Option(DEFAULT_MODE, "--mode", help=MODE_HELP),
    k: int = typer.Option(3, "--k", help=K_HELP),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per call for the accuracy pass (throughput)."),
    latency_images: int = typer.Option(
        200, "--latency-images", help="Images timed one by one for p50/p90 latency (0 skips)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N held-out images."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="onnxruntime intra-op threads (default: onnxruntime's choice)."
    ),
    resize: bool = typer.Option(False, "--resize", help="Resize dataset images to the bundle's input size."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="Dataset folder (default: $FFEDGE_DATA or the user cache)."
    ),
    low_memory: bool = typer.Option(False, "--low-memory", help=LOW_MEMORY_HELP),
    providers: Optional[str] = typer.Option(None, "--providers", help=PROVIDERS_HELP),
    engine: EngineName = typer.Option("onnxruntime", "--engine", help=ENGINE_HELP),
    download: bool = typer.Option(True, "--download/--no-download", help=DOWNLOAD_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Accuracy, confusion matrix, latency (p50/p90 at batch 1), throughput and peak memory of a bundle."""
    from ffedge.runtime.evaluate import evaluate, first_held_out_for_bundle
    from ffedge.progress import RichReporter
    from ffedge.runtime import Runtime, check_mode

    check_threads(threads)
    check_mode(mode)
    check_int(k, "--k", 1)
    check_int(batch_size, "--batch-size", 1)
    check_int(latency_images, "--latency-images", 0)
    check_int(limit, "--limit", 1)
    rt = Runtime(str(bundle), threads=threads, stream=low_memory, providers=providers, engine=engine)
    rt.check_mode(mode, k)
    x, y = first_held_out_for_bundle(
        rt, dataset, data_dir=str(data_dir) if data_dir else None, resize=resize, limit=limit, download=download
    )
    r = evaluate(
        rt,
        x,
        y,
        mode=mode,
        k=k,
        batch_size=batch_size,
        latency_images=latency_images,
        reporter=RichReporter(log_to_stderr=as_json),
    )
    r.update(
        bundle=str(bundle),
        dataset=dataset,
        precision=rt.bundle.manifest.precision,
        threads=threads,
        low_memory=low_memory,
        engine=engine,
        providers=rt.providers,
    )
    if as_json:
        print_json(r)
        return
    from ffedge.cli.table import Table

    mode_txt = (f"{mode} (k={k})" if mode_spec(mode).uses_k else mode) + (", low-memory" if low_memory else "")
    on = ", OpenVINO" if engine == "openvino" else ""
    say(
        f"{shown(str(bundle))} ({r['precision']}{on}) on {shown(dataset)}, {r['images']} held-out images, mode {mode_txt}"
    )
    say(f"accuracy {r['accuracy']:.2%}")
    t = Table("true \\ predicted", *[shown(c) for c in r["classes"]], title="confusion matrix")
    for c, row in zip(r["classes"], r["confusion"]):
        t.add_row(shown(c), *[str(v) for v in row])
    t.print()
    lat = r["latency_batch1"]
    if lat:
        say(
            f"latency per image (batch 1, {lat['images']} images): p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms"
        )
    say(f"throughput (batch {batch_size}): {r['throughput_images_per_s']:.1f} images/s")
    if r["peak_rss_mb"] is not None:
        say(f"peak RSS {r['peak_rss_mb']:.0f} MB")


@app.command("predict")
def predict(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    images: list[Path] = typer.Argument(
        ..., help="Image files (PNG, JPG, ...) or .npy arrays (HW, HWC, NHW or NHWC, pixels 0..255)."
    ),
    mode: ModeName = typer.Option(DEFAULT_MODE, "--mode", help=MODE_HELP),
    k: int = typer.Option(3, "--k", help=K_HELP),
    top: int = typer.Option(3, "--top", help="Labels shown per image."),
    resize: bool = typer.Option(
        False,
        "--resize",
        help="Resize (and convert grey/RGB) images to the bundle's input; otherwise a mismatch is an error.",
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads."),
    low_memory: bool = typer.Option(False, "--low-memory", help=LOW_MEMORY_HELP),
    providers: Optional[str] = typer.Option(None, "--providers", help=PROVIDERS_HELP),
    engine: EngineName = typer.Option("onnxruntime", "--engine", help=ENGINE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print predictions as JSON."),
) -> None:
    """Classify image files: the top labels with their goodness (or head probability)."""
    import numpy as np

    from ffedge.runtime.inputs import read_inputs
    from ffedge.runtime import Runtime, check_mode

    check_threads(threads)
    check_mode(mode)
    check_int(k, "--k", 1)
    check_int(top, "--top", 1)
    rt = Runtime(str(bundle), threads=threads, stream=low_memory, providers=providers, engine=engine)
    rt.check_mode(mode, k)
    x, names = read_inputs(images, rt.bundle.input_shape, resize=resize)
    pred = rt.predict(x, mode=mode, k=k)
    score = mode_spec(mode).score
    results = []
    for name, label, s in zip(names, pred.labels, pred.scores):
        order = [int(i) for i in np.argsort(-s, kind="stable")[:top] if np.isfinite(s[i])]
        results.append(
            {
                "file": name,
                "label": rt.classes[int(label)],
                "top": [{"label": rt.classes[i], score: float(s[i])} for i in order],
            }
        )
    if as_json:
        print_json({"mode": mode, "predictions": results})
        return
    for r in results:
        tops = ", ".join(f"{shown(t['label'])} ({t[score]:.3f})" for t in r["top"])
        say(f"{shown(r['file'])}: {shown(r['label'])}   top: {tops}")
