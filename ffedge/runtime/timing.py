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


def latency(rt: Runtime, x: np.ndarray, mode: str, k: int, n: int, warmup: int = 5) -> dict[str, float]:
    """Milliseconds per single image (batch 1) over ``n`` images, after ``warmup`` calls."""
    n = min(n, len(x))
    a = time_per_image(lambda i: rt.predict(x[i : i + 1], mode, k), n, min(warmup, n), n)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)), "images": n}
