"""Benchmark bundles against each other and against a torch baseline (device side).

Each variant is scored on the same held-out images: accuracy (goodness over all
labels, batched), latency per image at batch 1 (p50/p90 over ``iters`` images after
``warmup``), where that time goes per layer, and the size on disk. Ratios are taken
against baselines measured in the same process, never against stored numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ffedge.runtime.session import Runtime
from ffedge.runtime.timing import time_per_image


@dataclass
class BenchRow:
    """One variant's measurements."""

    name: str
    accuracy: float
    p50_ms: float
    p90_ms: float
    layer_ms: list[float]
    size_bytes: int | None = None


def bench_runtime(
    rt: Runtime, name: str, x: np.ndarray, y: np.ndarray, warmup: int, iters: int, batch_size: int = 100
) -> BenchRow:
    """Accuracy over (x, y), batch-1 latency of goodness over all labels, and per-layer time of a bundle."""
    pred = np.concatenate([rt.predict(x[s : s + batch_size]).labels for s in range(0, len(x), batch_size)])
    ms = time_per_image(lambda i: rt.predict(x[i : i + 1]), len(x), warmup, iters)
    enc = [rt.encoding.encode_all(rt.normalize(x[i : i + 1])) for i in range(min(len(x), iters))]
    time_per_image(lambda i: rt.run_layers(enc[i]), len(enc), warmup, 0)
    rt.reset_timings()
    time_per_image(lambda i: rt.run_layers(enc[i]), len(enc), 0, iters)
    layer_ms = [s * 1e3 / iters for s in rt.layer_seconds]
    return BenchRow(
        name,
        float((pred == y).mean()),
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 90)),
        layer_ms,
        rt.bundle.size_bytes(),
    )


def ratios(rows: Sequence[BenchRow], accuracy_base: str, speed_base: str) -> list[dict[str, Any]]:
    """Rows as dicts with accuracy drop (pp), size ratio and speed-up against the named baselines."""
    by = {r.name: r for r in rows}
    acc_b, speed_b = by.get(accuracy_base), by.get(speed_base)
    size_b = acc_b.size_bytes if acc_b else None
    out = []
    for r in rows:
        d = asdict(r)
        d["drop_pp"] = (acc_b.accuracy - r.accuracy) * 100 if acc_b else None
        d["size_ratio"] = r.size_bytes / size_b if (size_b and r.size_bytes) else None
        d["speedup"] = speed_b.p50_ms / r.p50_ms if speed_b and r.p50_ms > 0 else None
        out.append(d)
    return out
