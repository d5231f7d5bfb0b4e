"""`ffedge eval`, `ffedge predict`, `ffedge info`: run a bundle on the device and report what it holds (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import typer
from rich.table import Column, Table
from rich.text import Text

from ffedge.cli.app import app, console, dataset_help, mode_help, one_of
from ffedge.options import check_int, check_threads
from ffedge.runtime.modes import DEFAULT_MODE, REGISTRY as MODE_REGISTRY, mode_spec

if TYPE_CHECKING:
    from ffedge.bundle.manifest import Manifest

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
# Keys of every label encoding's config (ffedge.labels.base.LabelEncoding.to_config) that are not its parameters.
ENCODING_FRAME_KEYS = ("name", "version", "num_classes", "image_shape")


def shown(value: object) -> str:
    """A value from a bundle or the user (a class name, a file name) as one safe line of text."""
    from ffedge.errors import quoted

    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else quoted(text)


def say(text: str) -> None:
    """Print a line that holds values from a bundle: no markup, emoji codes or highlighting applied to them."""
    console.print(text, markup=False, emoji=False, highlight=False, soft_wrap=True)


@app.command("eval")
def eval_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    dataset: str = typer.Option(
        "mnist-5k", "--dataset", help=f"Dataset whose held-out split to score: {dataset_help()}."
    ),
    mode: str = typer.Option(DEFAULT_MODE, "--mode", help=MODE_HELP),
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
    engine: str = typer.Option("onnxruntime", "--engine", help=ENGINE_HELP),
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
        rt, dataset, data_dir=str(data_dir) if data_dir else None, resize=resize, limit=limit
    )
    r = evaluate(
        rt, x, y, mode=mode, k=k, batch_size=batch_size, latency_images=latency_images, reporter=RichReporter()
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
        console.print_json(json.dumps(r))
        return
    mode_txt = (f"{mode} (k={k})" if mode_spec(mode).uses_k else mode) + (", low-memory" if low_memory else "")
    on = ", OpenVINO" if engine == "openvino" else ""
    say(
        f"{shown(str(bundle))} ({r['precision']}{on}) on {shown(dataset)}, {r['images']} held-out images, mode {mode_txt}"
    )
    say(f"accuracy {r['accuracy']:.2%}")
    t = Table("true \\ predicted", *[Column(Text(shown(c))) for c in r["classes"]], title="confusion matrix")
    for c, row in zip(r["classes"], r["confusion"]):
        t.add_row(Text(shown(c)), *[str(v) for v in row])
    console.print(t)
    lat = r["latency_batch1"]
    if lat:
        console.print(
            f"latency per image (batch 1, {lat['images']} images): p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms",
            highlight=False,
        )
    console.print(f"throughput (batch {batch_size}): {r['throughput_images_per_s']:.1f} images/s", highlight=False)
    if r["peak_rss_mb"] is not None:
        console.print(f"peak RSS {r['peak_rss_mb']:.0f} MB", highlight=False)


@app.command("predict")
def predict(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    images: list[Path] = typer.Argument(
        ..., help="Image files (PNG, JPG, ...) or .npy arrays (HW, HWC, NHW or NHWC, pixels 0..255)."
    ),
    mode: str = typer.Option(DEFAULT_MODE, "--mode", help=MODE_HELP),
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
    engine: str = typer.Option("onnxruntime", "--engine", help=ENGINE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print predictions as JSON."),
) -> None:
    """Classify image files: the top labels with their goodness (or head probability)."""
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
        console.print_json(json.dumps({"mode": mode, "predictions": results}))
        return
    for r in results:
        tops = ", ".join(f"{shown(t['label'])} ({t[score]:.3f})" for t in r["top"])
        say(f"{shown(r['file'])}: {shown(r['label'])}   top: {tops}")


@app.command("info")
def info(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and checks as JSON."),
) -> None:
    """What a bundle holds (classes, input, label encoding, layers, bits, sizes), after verifying and loading every file.

    Exit 1 when a checksum fails (the report says which); a file that does not load
    or does not fit the manifest is a one-line error (exit 2).
    """
    from ffedge.bundle import MANIFEST, check_files, check_paths, read_manifest
    from ffedge.bundle.update import versions
    from ffedge.errors import FFEdgeError
    from ffedge.runtime import load_and_check

    m = read_manifest(bundle)
    check_paths(bundle, m)
    try:
        check_files(bundle, m)
        status = "ok (every file matches its sha256)"
    except FFEdgeError as e:
        status = f"FAILED: {e}"
    checked = load_and_check(bundle, verified=True) if status.startswith("ok") else {}
    sizes = {n: (bundle / n).stat().st_size for n in m.files if (bundle / n).is_file()}
    total = sum(sizes.values()) + (bundle / MANIFEST).stat().st_size
    history = versions(bundle)
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "manifest": m.to_dict(),
                    "checksums": status,
                    "loaded": checked,
                    "sizes": sizes,
                    "total_bytes": total,
                    "versions": history,
                }
            )
        )
    else:
        _print_info(bundle, m, sizes, total, history, status, checked)
    if not status.startswith("ok"):
        raise typer.Exit(1)


def _short(value: object, items: int = 3, depth: int = 0) -> str:
    """A config value in a few characters: floats to 6 significant digits, lists cut after ``items`` (and 3 levels deep)."""
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, (list, tuple)):
        if depth >= 3:
            return "[...]"
        if len(value) > items and all(isinstance(v, (int, float, str)) and v == value[0] for v in value):
            return f"[{_short(value[0], items, depth + 1)} x{len(value)}]"
        parts = [_short(v, items, depth + 1) for v in value[:items]]
        return "[" + ", ".join(parts) + (f", ... ({len(value)} values)]" if len(value) > items else "]")
    text = shown(value)
    return text if len(text) <= 80 else text[:77] + "..."


def encoding_params(enc: dict[str, Any]) -> str:
    """The parameters a bundle's label encoding config holds (whatever its encoding stores), as ``key=value, ...``."""
    return ", ".join(f"{shown(k)}={_short(v)}" for k, v in enc.items() if k not in ENCODING_FRAME_KEYS)


def _print_info(
    bundle: Path,
    m: "Manifest",
    sizes: dict[str, int],
    total: int,
    history: list[dict[str, Any]],
    status: str,
    checked: dict[str, str],
) -> None:
    """The text form of ``ffedge info``."""
    c, h, w = m.input.shape
    enc = m.encoding
    say(
        f"bundle {shown(str(bundle))}: format {m.format} v{m.version}, {m.precision}, made {shown(m.created or '?')} "
        f"by ffedge {shown(m.ffedge_version or '?')}"
    )
    say(f"classes ({len(m.classes)}): {', '.join(map(shown, m.classes))}")
    say(f"input: {c}x{h}x{w} pixels, mean {m.input.mean}, std {m.input.std}")
    say(f"labels: {shown(enc.get('name'))} {encoding_params(enc)}".rstrip())
    t = Table("layer", "file", "in", "out", "norm", "conv", "bits w/a", "bytes", "integer kernels")
    for i, layer in enumerate(m.layers):
        q = layer.quant
        fused = sum(v for k_, v in (layer.ort_ops or {}).items() if k_.startswith(("QLinear", "ConvInteger")))
        conv = f"{layer.channels or '?'} {layer.kernel or '?'}x{layer.kernel or '?'}" + (" +pool" if layer.pool else "")
        t.add_row(
            str(i),
            Text(shown(layer.file)),
            "x".join(map(str, layer.in_shape)),
            "x".join(map(str, layer.out_shape)),
            layer.norm_kind,
            conv,
            f"{q.weight_bits}/{q.act_bits}" if q else "32/32",
            str(sizes.get(layer.file, "missing")),
            str(fused),
        )
    console.print(t)
    head = (
        f"{shown(m.head.file)} on layers {m.head.layers}, {m.head.grid_size}x{m.head.grid_size} grid"
        if m.head
        else "none"
    )
    say(f"prediction by goodness of layer(s) {m.predict_layers}; head: {head}")
    say(f"size: {total / 1e6:.3f} MB in {len(sizes) + 1} files")
    p = m.parity
    if p is not None and p.agreement is not None and p.samples is not None and p.bundle_accuracy is not None:
        say(
            f"parity at export: agreement {p.agreement:.2%} on {p.samples} images (bundle accuracy {p.bundle_accuracy:.2%})"
        )
    for v in history:
        details = ", ".join(
            f"{k} {shown(v[k])}"
            for k in ("event", "data", "examples", "accuracy_before", "accuracy_after", "seconds")
            if k in v
        )
        say(f"version {v['version']} ({shown(v.get('status', '?'))}): {shown(v.get('time', '?'))} {details}")
    say(f"checksums: {shown(status)}")
    if checked:
        say("loaded and checked:")
        for name, what in checked.items():
            say(f"  {shown(name)}: {what}")
