"""The numpy FF core on the golden int8 bundle: exact re-quantization, parity with onnxruntime, losses, head,
fine-tuning a layer. Its comparisons with torch and Brevitas (STE gradients, Adam, losses, the Brevitas layers
of a trained run) need torch and are in tests/train/test_ff_numpy_torch.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ffedge.bundle.onnx_patch import patch_initializers, read_initializers
from ffedge.errors import FFEdgeError
from ffedge.ff import head_pool
from ffedge.finetuning import numerics as ffn
from tests.conftest import REPO, TRAIN_ONLY, python

N_IMAGES = 96  # positive/negative pairs of real digits used by the bundle tests


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle(golden_int8: Path) -> Path:
    """An int8 bundle with its float master weights: the golden one."""
    return golden_int8


def layer_data(bundle: Path) -> dict[str, Any]:
    """Encoded positive and negative digits ([pos; neg]) and every layer's onnxruntime input and outputs."""
    from ffedge.bundle import open_bundle
    from ffedge.datasets import load_dataset
    from ffedge.runtime.preprocess import normalize
    from ffedge.runtime import make_session

    b = open_bundle(bundle)
    m = b.manifest.to_dict()
    ds = load_dataset("mnist-5k")
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ds.x_train), N_IMAGES, replace=False)
    x = normalize(ds.x_train[idx], m["input"]["mean"], m["input"]["std"])
    y = ds.y_train[idx]
    wrong = (y + rng.integers(1, b.encoding.num_classes, len(y))) % b.encoding.num_classes
    x = np.concatenate([b.encoding.encode(x, y), b.encoding.encode(x, wrong)])
    inputs, outputs = [], []
    for layer in m["layers"]:
        sess = make_session(bundle / layer["file"], threads=1)
        inputs.append(x)
        out = dict(zip(("y", "goodness", "feature"), sess.run(["y", "goodness", "feature"], {"x": x})))
        outputs.append(out)
        x = out["y"]
    master = dict(np.load(bundle / "master.npz"))
    return {"manifest": m, "master": master, "inputs": inputs, "ort": outputs}


@pytest.fixture(scope="module")
def real(bundle: Path) -> dict[str, Any]:
    """:func:`layer_data` of the bundle."""
    return layer_data(bundle)


def _layer(real: dict[str, Any], i: int) -> ffn.QuantFFLayer:
    return ffn.QuantFFLayer.from_master(real["master"], i, real["manifest"]["layers"][i])


def _steps(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) / scale


# ---------------------------------------------------------------------------- quantization and parity


def test_requantized_master_equals_exported_int8_tensors(bundle: Path, real: dict[str, Any]) -> None:
    # The stored tensors, read without the onnx package (tests/device/test_onnx_patch.py checks the reader against it).
    for i, entry in enumerate(real["manifest"]["layers"]):
        inits = read_initializers(bundle / entry["file"])
        layer = _layer(real, i)
        q = layer.quantized()
        assert q["conv_w_q"].dtype == np.int8 and q["conv_b_q"].dtype == np.int32
        assert q["conv_w_scale"].dtype == np.float32 and q["conv_w_scale"].shape == ()
        for name, arr in q.items():
            assert arr.dtype == inits[name].dtype and arr.shape == inits[name].shape, name
            assert np.array_equal(arr, inits[name]), (
                f"layer {i} {name}: {int((arr != inits[name]).sum())} values differ"
            )
        assert np.float32(entry["quant"]["weight_scale"]) == q["conv_w_scale"]
        assert inits["in_scale"] == layer.input_scale and inits["out_scale"] == layer.output_scale
        # The forward's fake-quant weights and bias are exactly the dequantized stored tensors.
        assert np.array_equal(layer.quant_weight(), q["conv_w_q"].astype(np.float32) * q["conv_w_scale"])
        assert np.array_equal(layer.quant_bias(), q["conv_b_q"].astype(np.float32) * q["conv_b_scale"])


def test_forward_matches_onnxruntime_layers_within_one_step(real: dict[str, Any]) -> None:
    for i in range(len(real["manifest"]["layers"])):
        layer, ort = _layer(real, i), real["ort"][i]
        h, y, g, _ = layer.forward(real["inputs"][i])
        s = float(layer.output_scale)
        steps = _steps(y, ort["y"], s)
        assert y.shape == ort["y"].shape and y.dtype == np.float32
        assert steps.max() <= 1.0 + 1e-3, (i, steps.max())
        assert np.mean(steps > 0.5) < 1e-3, (i, np.mean(steps > 0.5))
        # h off by at most one step bounds the goodness and feature differences.
        g_bound = (np.square(h) - np.square(np.maximum(h - s, 0))).reshape(len(h), -1).mean(1) + s * s
        assert np.all(np.abs(g - ort["goodness"]) <= g_bound + 1e-6), i
        grid = real["manifest"]["head"].get("grid", 1)
        assert np.abs(head_pool(h, grid) - ort["feature"]).max() <= s, i


# ---------------------------------------------------------------------------- losses


def test_ff_loss_is_stable_and_checks_its_input() -> None:
    loss, dp, dn = ffn.ff_loss("symba", np.array([0.0, 1e4]), np.array([1e4, 0.0]), alpha=4.0)
    assert np.isfinite(loss) and np.all(np.isfinite(dp)) and np.all(np.isfinite(dn))
    with pytest.raises(FFEdgeError, match="unknown loss"):
        ffn.ff_loss("hinge", np.zeros(2), np.zeros(2))
    with pytest.raises(FFEdgeError):
        ffn.ff_loss("symba", np.zeros(2), np.zeros(3))


# ---------------------------------------------------------------------------- head


def test_head_training_reduces_cross_entropy() -> None:
    rng = np.random.default_rng(5)
    k, f, n = 4, 12, 200
    centers = rng.normal(size=(k, f))
    y = rng.integers(0, k, n)
    feats = (centers[y] + 0.8 * rng.normal(size=(n, f))).astype(np.float32)
    head = ffn.SoftmaxHead(np.zeros((k, f)), np.zeros(k), lr=0.05)
    first = head.loss_and_grads(feats, y)[0]
    assert first == pytest.approx(np.log(k), rel=1e-5)
    for _ in range(30):
        head.train_step(feats, y)
    last = head.loss_and_grads(feats, y)[0]
    assert last < 0.5 * first
    p = head.predict_proba(feats)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5) and (p.argmax(1) == y).mean() > 0.8
    with pytest.raises(FFEdgeError):
        head.train_step(feats, np.full(n, k))


# ---------------------------------------------------------------------------- fine-tuning


def test_ff_finetune_last_layer_reduces_loss_and_exports_consistently(
    bundle: Path, real: dict[str, Any], tmp_path: Path
) -> None:
    from ffedge.runtime import make_session

    i = len(real["manifest"]["layers"]) - 1
    obj = real["manifest"]["objective"]
    name, alpha, thr = obj["loss"], obj["alpha"], obj["threshold"]
    layer = _layer(real, i)
    x = real["inputs"][i]
    xp, xn = x[:N_IMAGES], x[N_IMAGES:]

    def full_loss() -> float:
        g = layer.forward(x)[2]
        return ffn.ff_loss(name, g[:N_IMAGES], g[N_IMAGES:], alpha, thr)[0]

    before = full_loss()
    opt = ffn.Adam(layer.params, lr=2e-3)
    rng = np.random.default_rng(7)
    w0 = layer.weight.copy()
    for _ in range(60):
        idx = rng.choice(N_IMAGES, 32, replace=False)
        loss, gp, gn = ffn.ff_step(layer, opt, xp[idx], xn[idx], name, alpha, thr)
        assert np.isfinite(loss) and gp >= 0 and gn >= 0
    after = full_loss()
    assert not np.array_equal(layer.weight, w0)
    assert after < 0.5 * before, (before, after)

    # Writing the re-quantized tensors into the layer file (as fine-tuning does: ffedge.bundle.onnx_patch, no onnx
    # package) gives onnxruntime the trained layer.
    q = layer.quantized()
    patch_initializers(bundle / real["manifest"]["layers"][i]["file"], tmp_path / "tuned.onnx", q)
    y_ort, g_ort = make_session(tmp_path / "tuned.onnx", threads=1).run(["y", "goodness"], {"x": x})
    _, y, g, _ = layer.forward(x)
    steps = _steps(y, y_ort, float(layer.output_scale))
    assert steps.max() <= 1.0 + 1e-3 and np.mean(steps > 0.5) < 1e-3
    assert ffn.ff_loss(name, g_ort[:N_IMAGES], g_ort[N_IMAGES:], alpha, thr)[0] == pytest.approx(after, rel=1e-2)


def test_layer_checks_inputs_and_master_round_trip(real: dict[str, Any]) -> None:
    layer = _layer(real, 1)
    with pytest.raises(FFEdgeError):
        layer.forward(np.zeros((1, 3, 8, 8), np.float32))
    arrays = layer.master_arrays(1)
    for key, arr in arrays.items():
        ref = real["master"][key]
        assert arr.dtype == np.float32 and arr.shape == ref.shape and np.array_equal(arr, ref), key
    with pytest.raises(FFEdgeError, match="no quantization facts"):
        ffn.QuantFFLayer.from_master(real["master"], 0, {"file": "layer0.onnx", "pool": True})


# ---------------------------------------------------------------------------- device side


def test_imports_and_runs_without_torch_or_onnx() -> None:
    code = (
        "import numpy as np\n"
        "import ffedge.finetuning.numerics as f\n"
        "layer = f.QuantFFLayer(np.ones((2, 1, 3, 3)) * 0.1, np.zeros(2), np.zeros(1), np.ones(1), 1e-5, 0.05, 0.01, pool=True)\n"
        "h, y, g, c = layer.forward(np.ones((2, 1, 4, 4), np.float32))\n"
        "dw, db = layer.grads(c, np.ones(2))\n"
        "assert y.shape == (2, 2, 2, 2) and dw.shape == (2, 1, 3, 3)\n"
        "print('ok')\n"
    )
    r = python(code, blocked=(*TRAIN_ONLY, "onnxruntime"), cwd=REPO, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
