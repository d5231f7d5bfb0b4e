"""Low-memory inference: the layer files one at a time (``Runtime(stream=True)``, ``--low-memory``).

The normal mode keeps the fused whole-net session and the head session open from start to end,
with onnxruntime's memory arena (buffers pooled, never handed back) and runs up to
``max_hypotheses`` label hypotheses per call. Streaming keeps at most one session open:

- each FF layer file is opened when its turn comes (arena off, memory pattern off, no spinning
  threads), runs the hypotheses of the pass, and is dropped before the next one is opened;
- layers after the last one whose goodness or feature is wanted are not run at all;
- the head file is opened only by the modes that use it (``head``, ``topk``), after the layers;
- a pass holds at most :data:`STREAM_HYPOTHESES` hypotheses (and their activations between two layers).

The price is speed: every pass builds its layer sessions again (graph load and optimization),
which is cheap for one image and adds up on a dataset (``eval --low-memory``). The numbers are
those of the layer files, which the fused graph is built from (goodness equal to float rounding:
the sum over prediction layers is numpy's here, the graph's in the fused session).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ffedge.bundle.names import INPUT

if TYPE_CHECKING:
    from ffedge.runtime.session import Runtime

# Hypotheses per pass in streaming mode (``Runtime(stream=True)`` caps ``max_hypotheses`` at this): one image
# of up to 64 classes in one pass; activations of 64 hypotheses of a 28x28 bundle are a few MB at most.
STREAM_HYPOTHESES = 64


def layers_needed(rt: "Runtime", feature_layers: Sequence[int]) -> int:
    """How many layers a pass runs: up to the last prediction layer or requested feature, whichever is later."""
    return max([*rt.bundle.predict_layers, *feature_layers]) + 1


def stream_forward(
    rt: "Runtime", x_encoded: np.ndarray, feature_layers: Sequence[int] = ()
) -> tuple[np.ndarray, list[np.ndarray]]:
    """:meth:`Runtime.forward` with one layer session open at a time: goodness summed over the prediction
    layers [N] and the requested features. Accumulates ``rt.layer_seconds`` (session building included)."""
    predict = set(rt.bundle.predict_layers)
    total = np.zeros(len(x_encoded), np.float32)
    feats: dict[int, np.ndarray] = {}
    cur = x_encoded
    for i in range(layers_needed(rt, feature_layers)):
        t = time.perf_counter()
        graph = rt.open_graph(rt.bundle.layers[i].file, "layer", False, i)
        cur, g, f = graph.run(None, {INPUT: cur})
        del graph  # its session (weights, optimized graph, buffers) goes before the next layer's is built
        rt.layer_seconds[i] += time.perf_counter() - t
        if i in predict:
            total += g
        if i in feature_layers:
            feats[i] = f
    return total, [feats[i] for i in feature_layers]
