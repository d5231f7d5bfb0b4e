"""The torch fp32 eager baseline for ``ffedge bench``: the run's float model, same inputs, same measurements.

Run by name (``ffedge.runtime.bench.TORCH_TARGET``) in a process of its own, so the
device side never imports it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ffedge.bundle import open_bundle
from ffedge.runtime.bench import load_images, measure_predictor
from ffedge.runtime.preprocess import normalize
from ffedge.runtime.timing import per_layer_ms
from ffedge.train.model import float_copy, goodness
from ffedge.train.run_files import load_run


def measure_torch(
    run: str | Path, bundle: str, data: str, threads: int, warmup: int, iters: int, batch: int
) -> dict[str, Any]:
    """Goodness over all labels with the float copy of the run's model in torch eager mode (label encoding of
    ``bundle``): :func:`~ffedge.runtime.bench.measure_predictor`, then the time per layer."""
    x, y = load_images(data)
    enc = open_bundle(bundle, verify=False).encoding
    k = enc.num_classes
    if threads:
        torch.set_num_threads(threads)
    state: dict[str, Any] = {}

    @torch.no_grad()
    def predict(xb: np.ndarray, timed: bool = False) -> np.ndarray:
        model, layer_s = state["model"], state["layer_s"]
        cur = torch.from_numpy(enc.encode_all(normalize(xb, *state["norm"])))
        gs = []
        for i, layer in enumerate(model.layers):
            t = time.perf_counter()
            h, cur = layer(cur)
            gs.append(goodness(h))
            if timed:
                layer_s[i] += time.perf_counter() - t
        g = torch.stack(gs)[state["predict_layers"]].sum(0).view(len(xb), k)
        return g.argmax(1).numpy()

    def load() -> Callable[[np.ndarray], np.ndarray]:
        cfg, net = load_run(run)
        state["model"] = float_copy(net).eval()
        state["layer_s"] = [0.0] * len(state["model"].layers)
        state["predict_layers"] = list(cfg["model"]["predict_layers"])
        state["norm"] = (cfg["input"]["mean"], cfg["input"]["std"])
        return predict

    out = measure_predictor(load, x, y, warmup, iters, batch)
    out.update(per_layer_ms(lambda i: predict(x[i : i + 1], timed=True), lambda: state["layer_s"], len(x), iters))
    out["shared_graph"] = False
    out["size_bytes"] = None
    return out
