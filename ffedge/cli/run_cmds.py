"""`ffedge eval`, `ffedge predict`, `ffedge info`: use a bundle on the device (no torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.table import Table

from ffedge.cli.app import app, console

MODE_HELP = "all: goodness over every label; head: softmax head, one pass; topk: head proposes --k labels, goodness decides."


@app.command("eval")
def eval_cmd(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    dataset: str = typer.Option("mnist-5k", "--dataset", help="Dataset whose held-out split to score: mnist-5k, mnist, fashion-mnist, cifar10, cifar100, folder:PATH or npz:PATH."),
    mode: str = typer.Option("all", "--mode", help=MODE_HELP),
    k: int = typer.Option(3, "--k", help="Candidates for --mode topk."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per call for the accuracy pass (throughput)."),
    latency_images: int = typer.Option(200, "--latency-images", help="Images timed one by one for p50/p90 latency (0 skips)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N held-out images."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads (default: onnxruntime's choice)."),
    resize: bool = typer.Option(False, "--resize", help="Resize dataset images to the bundle's input size."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Dataset folder (default: $FFEDGE_DATA or the user cache)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Accuracy, confusion matrix, latency (p50/p90 at batch 1), throughput and peak memory of a bundle."""
    from ffedge.evaluate import evaluate, held_out_split
    from ffedge.progress import RichReporter
    from ffedge.runtime import Runtime

    rt = Runtime(str(bundle), threads=threads)
    x, y = held_out_split(rt, dataset, data_dir=str(data_dir) if data_dir else None, resize=resize, limit=limit)
    r = evaluate(rt, x, y, mode=mode, k=k, batch_size=batch_size, latency_images=latency_images, reporter=RichReporter())
    r.update(bundle=str(bundle), dataset=dataset, precision=rt.bundle.manifest["precision"], threads=threads)
    if as_json:
        console.print_json(json.dumps(r))
        return
    mode_txt = f"topk (k={k})" if mode == "topk" else mode
    console.print(f"{bundle} ({r['precision']}) on {dataset}, {r['images']} held-out images, mode {mode_txt}", highlight=False)
    console.print(f"accuracy {r['accuracy']:.2%}", highlight=False)
    t = Table("true \\ predicted", *[str(c) for c in r["classes"]], title="confusion matrix")
    for c, row in zip(r["classes"], r["confusion"]):
        t.add_row(str(c), *[str(v) for v in row])
    console.print(t)
    lat = r["latency_batch1"]
    if lat:
        console.print(f"latency per image (batch 1, {lat['images']} images): p50 {lat['p50_ms']:.2f} ms, p90 {lat['p90_ms']:.2f} ms", highlight=False)
    console.print(f"throughput (batch {batch_size}): {r['throughput_images_per_s']:.1f} images/s", highlight=False)
    if r["peak_rss_mb"] is not None:
        console.print(f"peak RSS {r['peak_rss_mb']:.0f} MB", highlight=False)


@app.command("predict")
def predict(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPG, ...) or .npy arrays (HW, HWC, NHW or NHWC, pixels 0..255)."),
    mode: str = typer.Option("all", "--mode", help=MODE_HELP),
    k: int = typer.Option(3, "--k", help="Candidates for --mode topk."),
    top: int = typer.Option(3, "--top", help="Labels shown per image."),
    resize: bool = typer.Option(False, "--resize", help="Resize (and convert grey/RGB) images to the bundle's input; otherwise a mismatch is an error."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads."),
    as_json: bool = typer.Option(False, "--json", help="Print predictions as JSON."),
) -> None:
    """Classify image files: the top labels with their goodness (or head probability)."""
    from ffedge.image_input import read_inputs
    from ffedge.runtime import Runtime

    rt = Runtime(str(bundle), threads=threads)
    x, names = read_inputs(images, rt.bundle.input_shape, resize=resize)
    pred = rt.predict(x, mode=mode, k=k)
    score = "probability" if mode == "head" else "goodness"
    results = []
    for name, label, s in zip(names, pred.labels, pred.scores):
        order = [int(i) for i in np.argsort(-s, kind="stable")[: max(1, top)] if np.isfinite(s[i])]
        results.append({
            "file": name,
            "label": rt.classes[int(label)],
            "top": [{"label": rt.classes[i], score: float(s[i])} for i in order],
        })
    if as_json:
        console.print_json(json.dumps({"mode": mode, "predictions": results}))
        return
    for r in results:
        tops = ", ".join(f"{t['label']} ({t[score]:.3f})" for t in r["top"])
        console.print(f"{r['file']}: {r['label']}   top: {tops}", highlight=False)


@app.command("info")
def info(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and checks as JSON."),
) -> None:
    """What a bundle holds: classes, input, label encoding, layers, bits, sizes and checksum status."""
    from ffedge.bundle import MANIFEST, check_files, read_manifest
    from ffedge.bundle_update import versions
    from ffedge.errors import FFEdgeError

    m = read_manifest(bundle)
    try:
        check_files(bundle, m)
        status = "ok (every file matches its sha256)"
    except FFEdgeError as e:
        status = f"FAILED: {e}"
    sizes = {n: (bundle / n).stat().st_size for n in m["files"] if (bundle / n).is_file()}
    total = sum(sizes.values()) + (bundle / MANIFEST).stat().st_size
    if as_json:
        console.print_json(json.dumps({"manifest": m, "checksums": status, "sizes": sizes, "total_bytes": total, "versions": versions(bundle)}))
    else:
        c, h, w = m["input"]["shape"]
        enc = m["encoding"]
        console.print(f"bundle {bundle}: format {m['format']} v{m['version']}, {m['precision']}, made {m.get('created', '?')} by ffedge {m.get('ffedge_version', '?')}", highlight=False)
        console.print(f"classes ({len(m['classes'])}): {', '.join(map(str, m['classes']))}", highlight=False)
        console.print(f"input: {c}x{h}x{w} pixels, mean {m['input']['mean']}, std {m['input']['std']}", highlight=False)
        console.print(f"labels: {enc.get('name')} " + ", ".join(f"{k}={v}" for k, v in enc.items() if k in ("mode", "amplitude", "frequency")), highlight=False)
        t = Table("layer", "file", "in", "out", "conv", "bits w/a", "bytes", "integer kernels")
        for i, layer in enumerate(m["layers"]):
            q = layer.get("quant") or {}
            fused = sum(v for k_, v in layer.get("ort_ops", {}).items() if k_.startswith(("QLinear", "ConvInteger")))
            t.add_row(str(i), layer["file"], "x".join(map(str, layer["in_shape"])), "x".join(map(str, layer["out_shape"])),
                      f"{layer.get('channels', '?')} {layer.get('kernel', '?')}x{layer.get('kernel', '?')}" + (" +pool" if layer.get("pool") else ""),
                      f"{q.get('weight_bits', 32)}/{q.get('act_bits', 32)}", str(sizes.get(layer["file"], "missing")), str(fused))
        console.print(t)
        console.print(f"prediction by goodness of layer(s) {m['predict_layers']}; head: {m['head']['file'] + ' on layers ' + str(m['head']['layers']) if m.get('head') else 'none'}", highlight=False)
        console.print(f"size: {total / 1e6:.3f} MB in {len(sizes) + 1} files", highlight=False)
        if "parity" in m:
            p = m["parity"]
            console.print(f"parity at export: agreement {p['agreement']:.2%} on {p['samples']} images (bundle accuracy {p['bundle_accuracy']:.2%})", highlight=False)
        for v in versions(bundle):
            details = ", ".join(f"{k} {v[k]}" for k in ("event", "data", "examples", "accuracy_before", "accuracy_after", "seconds") if k in v)
            console.print(f"version {v['version']} ({v.get('status', '?')}): {v.get('time', '?')} {details}", highlight=False)
        console.print(f"checksums: {status}", highlight=False)
    if not status.startswith("ok"):
        raise typer.Exit(1)
