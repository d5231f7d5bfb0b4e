"""The numpy FF core (ffedge.finetuning.numerics) against torch and Brevitas: the layers of a trained run within
one output step, convolution and STE gradients against autograd, Adam, the losses and the head. The device-side
checks of the same core (on the golden bundle) are in tests/device/test_ff_numpy.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ffedge import ff
from ffedge.errors import FFEdgeError
from ffedge.finetuning import numerics as ffn
from tests.device.test_ff_numpy import _layer, _steps, layer_data


@pytest.fixture(scope="module")
def real(master_bundle: Path) -> dict[str, Any]:
    """:func:`layer_data` of ``tiny_run`` exported with its float master weights (the run the Brevitas layers come from)."""
    return layer_data(master_bundle)


# ---------------------------------------------------------------------------- parity with Brevitas


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
        rng.normal(scale=0.3, size=(o, c, k, k)),
        rng.normal(scale=0.2, size=o),
        rng.normal(scale=0.1, size=c),
        rng.uniform(0.5, 2.0, size=c),
        1e-5,
        input_scale=0.03,
        output_scale=1.0,
        pool=pool,
        dtype=np.float64,
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
    z = (torch.tensor(x) - torch.tensor(layer.bn_mean).view(1, c, 1, 1)) / torch.sqrt(
        torch.tensor(layer.bn_var) + layer.bn_eps
    ).view(1, c, 1, 1)
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
    assert np.allclose(dp, tp.grad.numpy(), rtol=1e-5, atol=1e-9) and np.allclose(
        dn, tn.grad.numpy(), rtol=1e-5, atol=1e-9
    )


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
    # A 2x2 grid: per-cell pooled, per-cell normalized, from activities or from the layers' pooled outputs.
    ref2 = FFNet.head_features([torch.from_numpy(h) for h in hs], which, 2).numpy()
    assert ref2.shape == (5, 36)
    assert np.allclose(ffn.SoftmaxHead.features([hs[i] for i in which], 2), ref2, atol=1e-6)
    pooled = [ff.head_pool(hs[i], 2) for i in which]
    assert np.allclose(ffn.SoftmaxHead.features(pooled, 2), ref2, atol=1e-6)


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


def test_finetune_refits_a_2x2_grid_head(master_bundle: Path, small_npz: str, tmp_path: Path) -> None:
    """On-device fine-tuning of a bundle whose head reads a 2x2 grid: the numpy layers pool as the layer files
    do, the refit head keeps its [K, 4 * sum C] shape and the new bundle runs in every mode."""
    from ffedge.finetuning import FinetuneConfig, finetune
    from ffedge.runtime import Runtime

    assert json.loads((master_bundle / "manifest.json").read_text())["head"]["grid"] == 2
    cfg = FinetuneConfig(data=small_npz, epochs=1, max_examples=60, eval_examples=40, head_epochs=2, threads=1)
    res = finetune(master_bundle, cfg, out=tmp_path / "new")
    assert res["version"] == 2
    m = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert m["history"][-1]["head"] is True and m["head"]["grid"] == 2
    rt = Runtime(tmp_path / "new")
    x = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28, 1), dtype=np.uint8)
    for mode in ("all", "head", "topk"):
        assert rt.predict(x, mode, k=2).labels.shape == (3,)
