"""The numpy FF core: exact re-quantization, parity with onnxruntime and Brevitas, STE gradients, losses, head."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ffedge.finetuning import numerics as ffn
from ffedge.errors import FFEdgeError

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 96  # positive/negative pairs of real digits used by the bundle tests


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny int8 run exported with its float master weights (no parity check: fast)."""
    from ffedge.train.export import export_bundle

    out = tmp_path_factory.mktemp("ffn") / "b"
    export_bundle(tiny_run, out, master=True, verify_samples=0)
    return out


@pytest.fixture(scope="module")
def real(bundle: Path) -> dict[str, Any]:
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


def _layer(real: dict[str, Any], i: int) -> ffn.QuantFFLayer:
    return ffn.QuantFFLayer.from_master(real["master"], i, real["manifest"]["layers"][i])


def _steps(a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) / scale


# ---------------------------------------------------------------------------- quantization and parity


def test_requantized_master_equals_exported_int8_tensors(bundle: Path, real: dict[str, Any]) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    for i, entry in enumerate(real["manifest"]["layers"]):
        inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(bundle / entry["file"])).graph.initializer}
        layer = _layer(real, i)
        q = layer.quantized()
        assert q["conv_w_q"].dtype == np.int8 and q["conv_b_q"].dtype == np.int32
        assert q["conv_w_scale"].dtype == np.float32 and q["conv_w_scale"].shape == ()
        for name, arr in q.items():
            assert arr.dtype == inits[name].dtype and arr.shape == inits[name].shape, name
            assert np.array_equal(arr, inits[name]), f"layer {i} {name}: {int((arr != inits[name]).sum())} values differ"
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
        assert np.abs(h.mean(axis=(2, 3)) - ort["feature"]).max() <= s, i


def test_forward_matches_brevitas_layers_within_one_step(tiny_run: Path, real: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    from ffedge.train.run_files import load_run

    _, net = load_run(tiny_run)
    net.eval()
    for i, tl in enumerate(net.layers):
        layer = _layer(real, i)
        x = real["inputs"][i]
        h, y, g, cache = layer.forward(x)
        with torch.no_grad():
            zt = tl.in_quant(tl.norm(torch.from_numpy(x))).value.numpy()
            ht, yt = (t.numpy() for t in tl(torch.from_numpy(x)))
        assert np.mean(cache.zq != zt) < 1e-4, i  # the input quantizer agrees (up to float ties)
        s = float(layer.output_scale)
        for ours, theirs in ((h, ht), (y, yt)):
            steps = _steps(ours, theirs, s)
            assert steps.max() <= 1.0 + 1e-3 and np.mean(steps > 0.5) < 1e-3, (i, steps.max())
        gt = np.square(ht).reshape(len(ht), -1).mean(1)
        assert np.allclose(g, gt, rtol=1e-3, atol=s * s), i


# ---------------------------------------------------------------------------- convolution and gradients


@pytest.mark.parametrize("kernel,pad", [(1, 0), (3, 1), (5, 2), (3, 0)])
def test_conv2d_forward_backward_match_torch(kernel: int, pad: int) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(kernel + pad)
    x = rng.normal(size=(5, 3, 7, 6))
    w = rng.normal(size=(4, 3, kernel, kernel))
    b = rng.normal(size=4)
    # A tiny chunk budget forces several batch chunks (one sample each).
    y = ffn.conv2d_forward(x, w, b, pad, chunk_bytes=1)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.conv2d(torch.tensor(x), wt, bt, padding=pad)
    assert np.allclose(y, yt.detach().numpy(), atol=1e-10)
    dy = rng.normal(size=y.shape)
    yt.backward(torch.tensor(dy))
    dw, db = ffn.conv2d_backward(x, dy, kernel, pad, chunk_bytes=1)
    assert np.allclose(dw, wt.grad.numpy(), atol=1e-10) and np.allclose(db, bt.grad.numpy(), atol=1e-10)
    dw2, _ = ffn.conv2d_backward(x, dy, kernel, pad)  # one chunk
    assert np.allclose(dw, dw2, atol=1e-10)
    # float32 stays float32.
    assert ffn.conv2d_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), pad).dtype == np.float32


def _random_layer(rng: np.random.Generator, pool: bool) -> tuple[ffn.QuantFFLayer, np.ndarray]:
    c, o, k = 3, 5, 3
    layer = ffn.QuantFFLayer(
        rng.normal(scale=0.3, size=(o, c, k, k)), rng.normal(scale=0.2, size=o),
        rng.normal(scale=0.1, size=c), rng.uniform(0.5, 2.0, size=c), 1e-5,
        input_scale=0.03, output_scale=1.0, pool=pool, dtype=np.float64,
    )
    x = rng.normal(size=(6, c, 7, 8))
    # An output scale that saturates the top ~10% of positive pre-activations.
    a = ffn.conv2d_forward(layer.quantize_input(x), layer.quant_weight(), layer.quant_bias(), layer.pad)
    layer.output_scale = np.float64(np.quantile(a[a > 0], 0.9) / 255.0)
    return layer, x


def _torch_ste_layer(torch: Any, layer: ffn.QuantFFLayer, x: np.ndarray) -> tuple[Any, Any, Any, Any]:
    """The same layer in float64 torch with x.round() as x + (x.round() - x).detach()."""
    F = torch.nn.functional

    def ste(t: Any) -> Any:
        return t + (t.round() - t).detach()

    w = torch.tensor(layer.weight, requires_grad=True)
    b = torch.tensor(layer.bias, requires_grad=True)
    c = len(layer.bn_mean)
    z = (torch.tensor(x) - torch.tensor(layer.bn_mean).view(1, c, 1, 1)) / torch.sqrt(torch.tensor(layer.bn_var) + layer.bn_eps).view(1, c, 1, 1)
    s_in, s_out = float(layer.input_scale), float(layer.output_scale)
    zq = torch.clamp(torch.round(z / s_in), -128, 127) * s_in
    s_w = (w.abs().max() / 63).detach()
    wq = torch.clamp(ste(w / s_w), -63, 63) * s_w
    bq = ste(b / (s_in * s_w)) * (s_in * s_w)
    a = F.conv2d(zq, wq, bq, padding=layer.pad)
    q = ste(torch.relu(a) / s_out)
    q = torch.where(q > 255, torch.full_like(q, 255.0), q)  # Brevitas' TensorClamp
    h = q * s_out
    return w, b, h, h.pow(2).flatten(1).mean(1)


@pytest.mark.parametrize("pool", [False, True])
def test_grads_match_torch_autograd_with_ste(pool: bool) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    layer, x = _random_layer(rng, pool)
    h, y, g, cache = layer.forward(x)
    assert cache.pass_mask.mean() < 0.5 and (h == 255 * layer.output_scale).any()  # ReLU and clamp both block
    w, b, ht, gt = _torch_ste_layer(torch, layer, x)
    assert np.allclose(h, ht.detach().numpy(), atol=1e-12) and np.allclose(g, gt.detach().numpy(), rtol=1e-12)
    if pool:
        assert np.allclose(y, torch.nn.functional.max_pool2d(ht, 2).detach().numpy(), atol=1e-12)
    dg = rng.normal(size=len(g))
    (gt * torch.tensor(dg)).sum().backward()
    dw, db = layer.grads(cache, dg)
    assert dw.dtype == np.float64
    assert np.allclose(dw, w.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert np.allclose(db, b.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_adam_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    p0 = rng.normal(size=(3, 4)).astype(np.float32)
    p = p0.copy()
    opt = ffn.Adam([p], lr=0.01)
    pt = torch.tensor(p0, requires_grad=True)
    opt_t = torch.optim.Adam([pt], lr=0.01)
    for _ in range(5):
        grad = rng.normal(size=p.shape).astype(np.float32)
        opt.step([grad])
        pt.grad = torch.tensor(grad)
        opt_t.step()
    assert np.allclose(p, pt.detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(FFEdgeError):
        opt.step([])


# ---------------------------------------------------------------------------- losses


@pytest.mark.parametrize("name", ["symba", "bce"])
def test_ff_loss_and_gradients_match_torch(name: str) -> None:
    torch = pytest.importorskip("torch")
    from ffedge.train.losses import ff_loss

    rng = np.random.default_rng(3)
    gp, gn = rng.uniform(0, 2, 16), rng.uniform(0, 2, 16)
    loss, dp, dn = ffn.ff_loss(name, gp.astype(np.float32), gn.astype(np.float32), alpha=3.0, threshold=0.7)
    assert dp.dtype == np.float32
    tp, tn = torch.tensor(gp, requires_grad=True), torch.tensor(gn, requires_grad=True)
    lt = ff_loss(name, tp, tn, alpha=3.0, threshold=0.7)
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-6)
    assert np.allclose(dp, tp.grad.numpy(), rtol=1e-5, atol=1e-9) and np.allclose(dn, tn.grad.numpy(), rtol=1e-5, atol=1e-9)


def test_ff_loss_is_stable_and_checks_its_input() -> None:
    loss, dp, dn = ffn.ff_loss("symba", np.array([0.0, 1e4]), np.array([1e4, 0.0]), alpha=4.0)
    assert np.isfinite(loss) and np.all(np.isfinite(dp)) and np.all(np.isfinite(dn))
    with pytest.raises(FFEdgeError, match="unknown loss"):
        ffn.ff_loss("hinge", np.zeros(2), np.zeros(2))
    with pytest.raises(FFEdgeError):
        ffn.ff_loss("symba", np.zeros(2), np.zeros(3))


# ---------------------------------------------------------------------------- head


def test_head_features_match_ffnet_head_features() -> None:
    torch = pytest.importorskip("torch")
    from ffedge.train.model import FFNet

    rng = np.random.default_rng(4)
    hs = [np.maximum(rng.normal(size=(5, c, s, s)), 0).astype(np.float32) for c, s in ((4, 8), (6, 4), (3, 2))]
    hs[2][0] = 0  # an all-zero activity: the +1e-6 keeps it finite
    which = [1, 2]
    ref = FFNet.head_features([torch.from_numpy(h) for h in hs], which).numpy()
    f = ffn.SoftmaxHead.features([hs[i] for i in which])
    assert f.shape == (5, 9) and f.dtype == np.float32
    assert np.allclose(f, ref, atol=1e-6)
    # A layer session's ``feature`` output (spatial means) gives the same features.
    assert np.allclose(ffn.SoftmaxHead.features([hs[i].mean(axis=(2, 3)) for i in which]), ref, atol=1e-6)


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


def test_head_gradients_match_torch_cross_entropy() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    w, b = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    feats, y = rng.normal(size=(7, 5)).astype(np.float32), rng.integers(0, 3, 7)
    loss, dw, db = ffn.SoftmaxHead(w, b).loss_and_grads(feats, y)
    wt, bt = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(torch.from_numpy(feats) @ wt.T + bt, torch.from_numpy(y))
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-5)
    assert np.allclose(dw, wt.grad.numpy(), atol=1e-6) and np.allclose(db, bt.grad.numpy(), atol=1e-6)


# ---------------------------------------------------------------------------- fine-tuning


def test_ff_finetune_last_layer_reduces_loss_and_exports_consistently(bundle: Path, real: dict[str, Any], tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

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

    # Writing the re-quantized tensors into the layer file gives onnxruntime the trained layer.
    model = onnx.load(str(bundle / real["manifest"]["layers"][i]["file"]))
    q = layer.quantized()
    for init in model.graph.initializer:
        if init.name in q:
            init.CopyFrom(numpy_helper.from_array(q[init.name], init.name))
    onnx.save(model, str(tmp_path / "tuned.onnx"))
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
        "import sys\n"
        "for m in ('torch', 'onnx', 'onnxruntime', 'brevitas'): sys.modules[m] = None\n"
        "import numpy as np\n"
        "import ffedge.finetuning.numerics as f\n"
        "layer = f.QuantFFLayer(np.ones((2, 1, 3, 3)) * 0.1, np.zeros(2), np.zeros(1), np.ones(1), 1e-5, 0.05, 0.01, pool=True)\n"
        "h, y, g, c = layer.forward(np.ones((2, 1, 4, 4), np.float32))\n"
        "dw, db = layer.grads(c, np.ones(2))\n"
        "assert y.shape == (2, 2, 2, 2) and dw.shape == (2, 1, 3, 3)\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
