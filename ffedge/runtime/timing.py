"""Latency: milliseconds per image at batch 1 (device side)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from ffedge.runtime.session import Runtime


def time_per_image(step: Callable[[int], None], n_images: int, warmup: int, iters: int) -> np.ndarray:
    """Milliseconds of ``step(i)`` for images i = 0.. (cycling), after ``warmup`` untimed calls."""
    for i in range(warmup):
        step(i % n_images)
    out = np.empty(iters)
    for i in range(iters):
        t = time.perf_counter()
        step(i % n_images)
        out[i] = (time.perf_counter() - t) * 1e3
    return out


def latency_stats(ms: np.ndarray) -> dict[str, float]:
    """p50, p90, min, max, mean and std of latencies in ms: the figure moves under load, so min and spread too."""
    a = np.asarray(ms, dtype=np.float64)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std()),
    }


def throughput(step: Callable[[], None], images: int, reps: int) -> dict[str, float]:
    """Images per second of ``step()`` on a batch of ``images``: median and best of ``reps`` timed calls after one
    untimed call."""
    step()
    s = np.empty(max(1, reps))
    for i in range(len(s)):
        t = time.perf_counter()
        step()
        s[i] = time.perf_counter() - t
    return {"images_per_s": float(images / np.median(s)), "best_images_per_s": float(images / s.min())}


def per_layer_ms(
    step: Callable[[int], None], seconds: Callable[[], list[float]], n_images: int, iters: int
) -> dict[str, list[float]]:
    """Milliseconds per layer of ``step(i)`` over ``iters`` images, from ``seconds()``, the running per-layer sums
    ``step`` adds to: the median per layer (a burst of load elsewhere moves the mean) and the mean."""
    per = []
    for i in range(iters):
        before = list(seconds())
        step(i % n_images)
        per.append([(a - b) * 1e3 for a, b in zip(seconds(), before)])
    a = np.asarray(per, dtype=np.float64).reshape(iters, -1)
    return {"layer_ms": np.median(a, axis=0).tolist(), "layer_ms_mean": a.mean(axis=0).tolist()}


def latency(rt: Runtime, x: np.ndarray, mode: str, k: int, n: int, warmup: int = 5) -> dict[str, float]:
    """Milliseconds per single image (batch 1) over ``n`` images, after ``warmup`` calls."""
    n = min(n, len(x))
    stats = latency_stats(time_per_image(lambda i: rt.predict(x[i : i + 1], mode, k), n, min(warmup, n), n))
    return {"p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"], "images": n}
