"""Parity of a bundle with the torch model it came from, on held-out data.

Per layer: the largest difference of the layer output between torch and
onnxruntime, in units of that layer's output quantization step (int8) or in
absolute value (fp32), with both sides fed the same input. End to end: top-1
agreement and accuracy of goodness-over-all-labels predictions and of the head, and the largest difference
of the head's probabilities (the head reads the layers' grid-pooled features: ``head.grid``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffedge.bundle.names import INPUT
from ffedge.datasets import load_dataset
from ffedge.errors import FFEdgeError
from ffedge.runtime.preprocess import normalize
from ffedge.progress import QuietReporter, Reporter
from ffedge.runtime import Runtime
from ffedge.train.model import FFNet, float_copy
from ffedge.train.run_files import load_run
from ffedge.train.trainer import eval_subset, goodness_matrix, neutral_features

LAYER_CHECK_IMAGES = 100  # images (x every label) fed layer by layer


def random_held_out_of_run(cfg: dict[str, Any], samples: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random subset of ``samples`` images (:func:`~ffedge.train.trainer.eval_subset`, seed 0) of the run's
    held-out split, normalized as in training, and its labels (the data is not downloaded)."""
    tr = cfg["train"]
    try:
        ds = load_dataset(tr["dataset"], data_dir=tr.get("data_dir"), download=False)
    except FFEdgeError as e:
        raise FFEdgeError(f"parity check needs the run's held-out data: {e}") from None
    idx = eval_subset(len(ds.y_test), samples, seed=0)
    return normalize(ds.x_test[idx], cfg["input"]["mean"], cfg["input"]["std"]), ds.y_test[idx]


@torch.no_grad()
def layer_differences(rt: Runtime, ref: FFNet, x_enc: np.ndarray, int8: bool) -> list[dict[str, float]]:
    """Per layer, torch vs onnxruntime on the same input (the torch output of the layer before)."""
    out = []
    cur = torch.from_numpy(x_enc)
    for i, (layer, sess) in enumerate(zip(ref.layers, rt.layer_sessions)):
        _, t_y = layer(cur)
        o_y = sess.run(None, {INPUT: cur.numpy()})[0]
        diff = np.abs(o_y - t_y.numpy())
        if int8:
            quant = rt.bundle.layers[i].quant
            if quant is None:
                raise FFEdgeError(f"{rt.bundle.path}: layer {i} has no quantization facts")
            step = quant.output_scale
            d = diff / step
            out.append({"max_steps": float(d.max()), "frac_off_by_more_than_half_step": float((d > 0.5).mean())})
        else:
            out.append(
                {"max_abs": float(diff.max()), "max_rel": float(diff.max() / (np.abs(t_y.numpy()).max() + 1e-12))}
            )
        cur = t_y
    return out


def parity_report(
    bundle_dir: str | Path,
    run_dir: str | Path,
    samples: int = 1000,
    reporter: Reporter | None = None,
    cfg_net: tuple[dict[str, Any], FFNet] | None = None,
) -> dict[str, Any]:
    """Compare a bundle with its run on ``samples`` held-out images; see the module docstring."""
    rep = reporter or QuietReporter()
    cfg, net = cfg_net if cfg_net is not None else load_run(run_dir)
    rt = Runtime(str(bundle_dir))
    int8 = rt.bundle.manifest.precision == "int8"
    ref = net if int8 else float_copy(net)
    ref.eval()
    if rt.bundle.classes != list(cfg["classes"]) or [layer.out_shape for layer in rt.bundle.layers] != [
        tuple(s) for s in ref.out_shapes
    ]:
        raise FFEdgeError(f"{bundle_dir} was not exported from {run_dir} (classes or layers differ)")
    x, y = random_held_out_of_run(cfg, samples)
    enc = rt.encoding
    pl = rt.bundle.predict_layers
    with rep.task(f"parity check on {len(y)} held-out images", 3) as advance:
        layers = layer_differences(rt, ref, enc.encode_all(x[:LAYER_CHECK_IMAGES]), int8)
        advance(1)
        g_t = goodness_matrix(ref, enc, x)[pl].sum(0)
        g_o = rt.goodness(x)
        advance(1)
        with torch.no_grad():
            probs_t = torch.softmax(ref.head(neutral_features(ref, enc, x)), dim=1).numpy()
        probs_o = rt.head_probs(x)
        h_t, h_o = probs_t.argmax(1), probs_o.argmax(1)
        advance(1)
    p_t, p_o = g_t.argmax(1), g_o.argmax(1)
    return {
        "samples": int(len(y)),
        "reference": "brevitas fake-quant (torch)" if int8 else "torch float",
        "agreement": float((p_t == p_o).mean()),
        "torch_accuracy": float((p_t == y).mean()),
        "bundle_accuracy": float((p_o == y).mean()),
        "head_agreement": float((h_t == h_o).mean()),
        "head_torch_accuracy": float((h_t == y).mean()),
        "head_bundle_accuracy": float((h_o == y).mean()),
        "head_max_prob_diff": float(np.abs(probs_t - probs_o).max()) if len(y) else 0.0,
        "layers": layers,
    }
