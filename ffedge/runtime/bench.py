"""Benchmark bundles against each other, a torch baseline and the machine's GEMM rate (device side).

As edge users read benchmarks (TFLite's ``benchmark_model``): per variant, load and
session init time, first inference, batch-1 latency over ``iters`` images after
``warmup`` (p50, p90, min, max, std: the figure moves under load), throughput at a
batch, peak RSS, accuracy on the held-out images, time per layer, size on disk. Each
variant runs in its own fresh process (:mod:`ffedge.runtime.bench_worker`), so no other
runtime's thread pool is alive and peak RSS is its own. The physical-limit line: MACs
of goodness over all labels (:mod:`ffedge.runtime.macs`) per second, against the
GEMM rate onnxruntime reaches on this machine with the same threads
(:mod:`ffedge.runtime.gemm_rate`). Ratios are taken against baselines measured in
the same command, never against stored numbers.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ffedge.bundle import open_bundle
from ffedge.progress import QuietReporter, Reporter
from ffedge.runtime.bench_worker import run_isolated
from ffedge.runtime.macs import has_shared_graph, macs_per_image
from ffedge.runtime.memory import peak_rss_mb
from ffedge.runtime.timing import latency_stats, per_layer_ms, throughput, time_per_image

ORT_TARGET = "ffedge.runtime.bench:measure_ort"
TORCH_TARGET = "ffedge.train.torch_bench:measure_torch"  # imported only by the process that runs it
GEMM_TARGET = "ffedge.runtime.gemm_rate:gemm_rates"
ACCURACY_BATCH = 100
# Runtimes measured in this process stay open (their thread pools alive) until it ends, as they did when
# ``ffedge bench`` ran every variant in one process: what ``--in-process`` reproduces. A worker process ends anyway.
_OPEN: list[Any] = []


@dataclass
class Variant:
    """One row of the benchmark: ``target(**kwargs, data=..., threads=..., ...)`` measures it; ``bundle`` gives
    its MAC count (``shared_layer0``: layer 0's image part once per image) and ``precision`` its GEMM line;
    ``agree_with``: the row whose predictions this one's are compared with (top-1 agreement, p50 ratio)."""

    name: str
    target: str
    bundle: str
    precision: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    agree_with: str | None = None


def ort_variants(bundle: str | Path, both_ways: bool = True, providers: Sequence[str] | None = None) -> list[Variant]:
    """The bundle run by onnxruntime (with ``providers``, default the CPU); with a shared layer-0 graph and
    ``both_ways`` also as before it (one full pass per hypothesis)."""
    m = open_bundle(bundle, verify=False).manifest
    name = f"{m.precision} ORT"
    kw: dict[str, Any] = {"bundle": str(bundle), **({"providers": list(providers)} if providers else {})}
    if not (both_ways and has_shared_graph(m)):
        return [Variant(name, ORT_TARGET, str(bundle), m.precision, kw)]
    return [
        Variant(name, ORT_TARGET, str(bundle), m.precision, kw),
        Variant(f"{name} per-hypothesis", ORT_TARGET, str(bundle), m.precision, {**kw, "shared": False}),
    ]


def openvino_variant(bundle: str | Path) -> Variant:
    """The bundle run by OpenVINO's own runtime (``net.onnx``, every hypothesis encoded), compared with the
    onnxruntime row of the same bundle (:func:`ort_variants`)."""
    m = open_bundle(bundle, verify=False).manifest
    kw = {"bundle": str(bundle), "engine": "openvino"}
    return Variant(f"{m.precision} OpenVINO", ORT_TARGET, str(bundle), m.precision, kw, agree_with=f"{m.precision} ORT")


def torch_variant(run: str | Path, bundle: str | Path) -> Variant:
    """The run's float model in torch eager mode (label encoding of ``bundle``)."""
    return Variant("torch fp32 eager", TORCH_TARGET, str(bundle), "fp32", {"run": str(run), "bundle": str(bundle)})


# ---------------------------------------------------------------- in the measuring process


def load_images(data: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data, allow_pickle=False) as z:
        return z["x"], z["y"]


def measure_predictor(
    load: Callable[[], Callable[[np.ndarray], np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    warmup: int,
    iters: int,
    batch: int,
) -> dict[str, Any]:
    """``load()`` returns ``predict(pixels) -> labels``; its init and first-call time, accuracy over (x, y),
    batch-1 latency stats, throughput at ``batch`` (images cycled to fill it) and peak RSS so far."""
    t = time.perf_counter()
    predict = load()
    init_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    predict(x[:1])
    first_ms = (time.perf_counter() - t) * 1e3
    pred = np.concatenate([predict(x[s : s + ACCURACY_BATCH]) for s in range(0, len(x), ACCURACY_BATCH)])
    ms = time_per_image(lambda i: predict(x[i : i + 1]), len(x), warmup, iters)
    xb = x[np.arange(batch) % len(x)]
    thr = throughput(lambda: predict(xb), batch, max(3, iters // 20))
    return {
        "init_ms": init_ms,
        "first_ms": first_ms,
        "accuracy": float((pred == y).mean()),
        "labels": pred.tolist(),  # for the agreement between rows; run_bench drops it
        **latency_stats(ms),
        "batch": batch,
        **thr,
        "peak_rss_mb": peak_rss_mb(),
    }


def measure_ort(
    bundle: str,
    data: str,
    threads: int,
    warmup: int,
    iters: int,
    batch: int,
    shared: bool | None = None,
    engine: str = "onnxruntime",
    providers: Sequence[str] | None = None,
    replaced: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One bundle with onnxruntime (:func:`measure_predictor`), then its time per layer file; ``shared=False`` asks
    for one full pass per hypothesis where the bundle has a shared layer-0 graph. ``engine="openvino"``: OpenVINO
    instead (and the runtime precision of each convolution of ``net.onnx``). ``replaced``: bundle files run from
    other paths (:class:`~ffedge.runtime.session.Runtime`'s; e.g. a graph as an older exporter wrote it)."""
    from ffedge.runtime.session import Runtime

    x, y = load_images(data)
    opened: list[Runtime] = []

    def load() -> Callable[[np.ndarray], np.ndarray]:
        rt = Runtime(
            bundle,
            threads=threads,
            shared=shared is not False,
            engine=engine,
            providers=providers,
            replaced={k: Path(v) for k, v in (replaced or {}).items()},
        )
        opened.append(rt)
        return lambda xb: opened[0].predict(xb).labels

    out = measure_predictor(load, x, y, warmup, iters, batch)
    rt = opened[0]
    _OPEN.append(rt)
    enc = [rt.encoding.encode_all(rt.normalize(x[i : i + 1])) for i in range(min(len(x), iters))]
    time_per_image(lambda i: rt.run_layers(enc[i]), len(enc), warmup, 0)
    out.update(per_layer_ms(lambda i: rt.run_layers(enc[i]), lambda: rt.layer_seconds, len(enc), iters))
    out["shared_graph"] = getattr(rt, "shared_session", None) is not None
    out["engine"] = engine
    out["providers"] = rt.providers
    fused = rt.fused_session
    if engine == "openvino" and fused is not None and hasattr(fused, "conv_precisions"):
        out["conv_precisions"] = fused.conv_precisions()
    out["size_bytes"] = rt.bundle.size_bytes()
    return out


# ---------------------------------------------------------------- the benchmark


def _limit_line(row: dict[str, Any], macs: int | None, macs_today: int | None, rate: float | None) -> dict[str, Any]:
    """Achieved GMAC/s at batch-1 p50, batch-1 min and at the batch, and each as % of ``rate`` (GMAC/s), for the
    MACs the graph performs and for today's count (every layer per hypothesis)."""
    out: dict[str, Any] = {"macs_per_image": macs, "macs_per_image_today": macs_today, "gemm_gmacs": rate}
    seconds = {
        "p50": row["p50_ms"] / 1e3,
        "min": row["min_ms"] / 1e3,
        "batch": 1 / row["images_per_s"] if row.get("images_per_s") else None,
    }
    for at, s in seconds.items():
        g = macs / s / 1e9 if macs and s else None
        g_today = macs_today / s / 1e9 if macs_today and s else None
        out[at] = {
            "gmacs": g,
            "pct": 100 * g / rate if g and rate else None,
            "gmacs_today": g_today,
            "pct_today": 100 * g_today / rate if g_today and rate else None,
        }
    return out


def _best_rates(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The GEMM rates measured before and after the variants: the best of each (the machine's limit is its best;
    a run during a burst of load elsewhere is slower), and every run."""
    out = dict(runs[0])
    for key in ("int8_gmacs", "fp32_gmacs"):
        out[key] = max(r[key] for r in runs)
        out[f"{key}_runs"] = [r[key] for r in runs]
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def run_bench(
    variants: Sequence[Variant],
    x: np.ndarray,
    y: np.ndarray,
    threads: int,
    warmup: int,
    iters: int,
    batch: int = 64,
    gemm_size: int = 1024,
    accuracy_base: str | None = None,
    speed_base: str | None = None,
    isolate: bool = True,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Measure every variant (each in a fresh process with ``isolate``) and the machine's GEMM rates; rows with
    accuracy drop (pp) against ``accuracy_base``, size ratio, speed-ups against ``speed_base`` (at p50, min and
    batch) and the physical-limit line. Everything JSON-ready."""
    from ffedge.runtime.machine import machine_info

    rep = reporter or QuietReporter()
    machine = machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ffedge-bench-") as tmp:
        data = str(Path(tmp) / "images.npz")
        np.savez(data, x=x, y=y)
        common = {"data": data, "threads": threads, "warmup": warmup, "iters": iters, "batch": batch}
        gemm_kw = {"size": gemm_size, "threads": threads}
        with rep.task("benchmarking", len(variants) + 2) as advance:
            gemm_runs = [run_isolated(GEMM_TARGET, gemm_kw, isolate, what="GEMM rate")]
            advance(1)
            for v in variants:
                r = run_isolated(v.target, {**v.kwargs, **common}, isolate, what=v.name)
                m = open_bundle(v.bundle, verify=False).manifest
                r["limit"] = {
                    "gemm": f"{v.precision} {'MatMulInteger' if v.precision == 'int8' else 'MatMul'}",
                    "macs_per_image": macs_per_image(m, bool(r.get("shared_graph"))),
                    "macs_per_image_today": macs_per_image(m, False),
                }
                rows.append({"name": v.name, "precision": v.precision, **r})
                advance(1)
            gemm_runs.append(run_isolated(GEMM_TARGET, gemm_kw, isolate, what="GEMM rate"))
            advance(1)
    gemm = _best_rates(gemm_runs)
    for r in rows:
        lim = r["limit"]
        lim.update(_limit_line(r, lim["macs_per_image"], lim["macs_per_image_today"], gemm[f"{r['precision']}_gmacs"]))
    machine["load_average_after"] = machine_info()["load_average"]
    by = {r["name"]: r for r in rows}
    acc_b, speed_b = by.get(accuracy_base or ""), by.get(speed_base or "")
    for r in rows:
        r["drop_pp"] = (acc_b["accuracy"] - r["accuracy"]) * 100 if acc_b else None
        r["size_ratio"] = _ratio(r.get("size_bytes"), acc_b.get("size_bytes") if acc_b else None)
        r["speedup"] = _ratio(speed_b["p50_ms"], r["p50_ms"]) if speed_b else None
        r["speedup_min"] = _ratio(speed_b["min_ms"], r["min_ms"]) if speed_b else None
        r["speedup_batch"] = _ratio(r["images_per_s"], speed_b["images_per_s"]) if speed_b else None
    for v in variants:
        r, twin = by[v.name], by.get(v.agree_with or "")
        if twin is not None:
            r["agreement"] = float(np.mean(np.array(r["labels"]) == np.array(twin["labels"])))
            r["agree_with"] = v.agree_with
            r["p50_ratio"] = _ratio(twin["p50_ms"], r["p50_ms"])  # > 1: this row is faster than its twin
    for r in rows:
        r.pop("labels", None)
    return {
        "machine": machine,
        "gemm": gemm,
        "images": int(len(y)),
        "threads": threads,
        "iters": iters,
        "warmup": warmup,
        "batch": batch,
        "isolated": isolate,
        "accuracy_base": accuracy_base if acc_b else None,
        "speed_base": speed_base if speed_b else None,
        "rows": rows,
    }
