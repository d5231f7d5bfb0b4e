"""The torch fp32 eager baseline for ``ffedge bench``: the run's float model, same inputs, same timing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ffedge.runtime.bench import BenchRow
from ffedge.runtime.timing import time_per_image
from ffedge.labels import LabelEncoding
from ffedge.runtime.preprocess import normalize
from ffedge.train.model import float_copy, goodness
from ffedge.train.run_files import load_run


def bench_torch_eager(
    run_dir: str | Path,
    enc: LabelEncoding,
    x: np.ndarray,
    y: np.ndarray,
    warmup: int,
    iters: int,
    threads: int | None = None,
) -> BenchRow:
    """Goodness over all labels with the float copy of the run's model in torch eager mode."""
    cfg, net = load_run(run_dir)
    model = float_copy(net).eval()
    if threads:
        torch.set_num_threads(threads)
    pl = list(cfg["model"]["predict_layers"])
    mean, std = cfg["input"]["mean"], cfg["input"]["std"]
    k = enc.num_classes
    layer_s = [0.0] * len(model.layers)

    @torch.no_grad()
    def predict(xb: np.ndarray, timed: bool = False) -> np.ndarray:
        cur = torch.from_numpy(enc.encode_all(normalize(xb, mean, std)))
        gs = []
        for i, layer in enumerate(model.layers):
            t = time.perf_counter()
            h, cur = layer(cur)
            gs.append(goodness(h))
            if timed:
                layer_s[i] += time.perf_counter() - t
        g = torch.stack(gs)[pl].sum(0).view(len(xb), k)
        return g.argmax(1).numpy()

    pred = np.concatenate([predict(x[s : s + 100]) for s in range(0, len(x), 100)])
    for i in range(warmup):
        predict(x[i % len(x) : i % len(x) + 1])
    ms = time_per_image(lambda i: predict(x[i : i + 1], timed=True), len(x), 0, iters)
    return BenchRow(
        "torch fp32 eager",
        float((pred == y).mean()),
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 90)),
        [s_ * 1e3 / iters for s_ in layer_s],
    )
