"""OpenVINO vs onnxruntime on the same int8 bundle, before and after the export's constant fold.

Per convolution, the precision OpenVINO's CPU plugin runs it in (rt_info runtimePrecision of its executed graph)
with the bundle's net.onnx as the exporter writes it now (weight Clip folded) and as it wrote it before (the
golden bundle's old net.onnx, tests/golden/net-before-fold.onnx: same weights, Clip left on them); top-1 agreement
with onnxruntime and accuracy on the held-out digits (goodness over all labels); batch-1 latency per image (all
labels) with --threads threads. Each row runs in a fresh process (``ffedge.runtime.bench``, as ``ffedge bench``):
onnxruntime on the shared graph (its default) and on net.onnx per hypothesis (the graph OpenVINO runs), OpenVINO
after and before the fold. No training: the golden bundle by default.

    python benchmarks/openvino_int8.py                       # golden int8 bundle, 1000 digits, 300 timed, 2 threads
    python benchmarks/openvino_int8.py --bundle export/mnist-5k-int8 --before ''   # your bundle, no before-fold row
    python benchmarks/openvino_int8.py --quick               # 100 digits, 20 timed; results/quick/
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, add_out_option, command, machine, machine_line, out_stem, script_parser, write_results  # noqa: E402

NAME = "openvino_int8"
GOLDEN_INT8 = ROOT / "tests" / "golden" / "bundle-int8"
BEFORE_FOLD = ROOT / "tests" / "golden" / "net-before-fold.onnx"
BEFORE_NAME = "int8 OpenVINO, before the fold"


def shown(path: Path) -> str:
    """A path as the results quote it: relative to the repository when inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def variants(bundle: Path, before: Path | None) -> list[Any]:
    from ffedge.bundle import open_bundle
    from ffedge.runtime.bench import ORT_TARGET, Variant, openvino_variant, ort_variants

    rows = ort_variants(bundle) + [openvino_variant(bundle)]
    if before is not None:
        m = open_bundle(bundle, verify=False).manifest
        assert m.fused is not None
        kw = {"bundle": str(bundle), "engine": "openvino", "replaced": {m.fused.file: str(before)}}
        rows.append(Variant(BEFORE_NAME, ORT_TARGET, str(bundle), "int8", kw, agree_with=rows[0].name))
    return rows


def markdown(result: dict[str, Any], cmd: str) -> str:
    rows = result["rows"]
    by = {r["name"]: r for r in rows}
    after, before = by["int8 OpenVINO"], by.get(BEFORE_NAME)
    lines = [
        "# OpenVINO vs onnxruntime on the same int8 bundle",
        "",
        f"`{cmd}`; bundle `{result['bundle']}`; {result['images']} held-out digits (goodness over all labels); "
        f"batch-1 latency over {result['iters']} images after {result['warmup']}, {result['threads']} threads; "
        "each row in its own process.",
        "",
        "## Runtime precision of each convolution in OpenVINO (net.onnx)",
        "",
        "| convolution | before the fold | after the fold |",
        "|---|---|---|",
    ]
    b_prec = list((before or {}).get("conv_precisions", {}).values())
    for i, p in enumerate(after["conv_precisions"].values()):
        lines.append(f"| {i + 1} | {b_prec[i] if i < len(b_prec) else '-'} | {p} |")
    ref = rows[0]["name"]
    lines += [
        "",
        f"## Agreement and latency (speed-up: {ref} p50 / row p50; {ref} runs net_shared.onnx, the others net.onnx)",
        "",
        "| engine / graph | accuracy | top-1 agreement with " + ref + " | p50 ms | p90 ms | min ms | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = f"{r['agreement']:.2%}" if "agreement" in r else "-"
        speed = rows[0]["p50_ms"] / r["p50_ms"]
        lines.append(
            f"| {r['name']} | {r['accuracy']:.2%} | {agree} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['min_ms']:.3f} | {speed:.2f} |"
        )
    m = result["machine"]
    lines += [
        "",
        f"Load average {m['load_average']} -> {m['load_average_after']}: on a busy machine the p50 moves; min is "
        "the steadier figure. " + machine_line(result["env"]) + f" OpenVINO {result['openvino']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--bundle", type=Path, default=GOLDEN_INT8, help="int8 bundle (default: the golden one)")
    p.add_argument(
        "--before",
        default=str(BEFORE_FOLD),
        help="net.onnx as exported before the fold, same weights ('' for none; default: the golden bundle's)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=1000, help="held-out digits scored (agreement, accuracy)")
    p.add_argument("--iters", type=int, default=300, help="images timed one by one (batch 1)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="100 digits, 20 timed; writes results/quick/")
    add_out_option(p, NAME)
    a = p.parse_args()
    out = out_stem(NAME, a.out, a.quick)
    images, iters, warmup = (100, 20, 5) if a.quick else (a.images, a.iters, a.warmup)

    from ffedge.errors import FFEdgeError
    from ffedge.runtime.bench import run_bench
    from ffedge.runtime.engines import import_openvino, openvino_version
    from ffedge.runtime.evaluate import first_held_out
    from ffedge.bundle import open_bundle

    try:
        import_openvino()
        b = open_bundle(a.bundle)
        before = Path(a.before) if a.before else None
        if before is not None and not before.is_file():
            raise FFEdgeError(f"--before {before}: no such file")
        x, y = first_held_out("mnist-5k", b.input_shape, len(b.classes), limit=images)
        result = run_bench(variants(a.bundle, before), x, y, a.threads, warmup, iters, batch=64, gemm_size=256)
    except FFEdgeError as e:
        sys.exit(f"error: {e}")
    result.update(bundle=shown(a.bundle), before=shown(before) if before else None, openvino=openvino_version())
    result["env"] = machine()
    cmd = command(f"{NAME}.py")
    write_results(out, result, markdown(result, cmd))
    print(markdown(result, cmd))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
