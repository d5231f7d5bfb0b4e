"""The exporter: real Brevitas QCDQ export, int8 storage, integer kernels in onnxruntime, parity, safe failure
(`ffedge export` and `ffedge verify` from the command line: tests/cli/test_export_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("brevitas")
onnx = pytest.importorskip("onnx")

from ffedge.bundle import MANIFEST, open_bundle  # noqa: E402
from ffedge.errors import FFEdgeError  # noqa: E402
from ffedge.train.export import export_bundle  # noqa: E402
from ffedge.train.run_files import load_run  # noqa: E402


def test_int8_layers_store_int8_weights_and_fuse_to_integer_convs(int8_bundle: Path, tiny_run: Path) -> None:
    b = open_bundle(int8_bundle)
    _, net = load_run(tiny_run)
    assert len(b.layers) == len(net.layers)
    for i, layer in enumerate(b.layers):
        model = onnx.load(str(int8_bundle / layer.file))
        onnx.checker.check_model(model, full_check=True)
        inits = {t.name: t for t in model.graph.initializer}
        assert not [v.name for v in model.graph.input if v.name in inits], "initializers must not be graph inputs"
        assert [v.name for v in model.graph.input] == ["x"]
        n_weights = net.layers[i].conv.weight.numel()
        int8_sizes = [int(np.prod(t.dims)) for t in inits.values() if t.data_type == onnx.TensorProto.INT8]
        assert n_weights in int8_sizes, "conv weights must be stored as int8"
        assert not any(
            int(np.prod(t.dims)) == n_weights and t.data_type == onnx.TensorProto.FLOAT for t in inits.values()
        )
        assert (layer.ort_ops or {}).get("QLinearConv") == 1, layer.ort_ops
        assert layer.quant is not None and layer.quant.weight_bits == 7 and layer.quant.act_bits == 8


def test_parity_is_recorded_and_tight(int8_bundle: Path) -> None:
    p = json.loads((int8_bundle / MANIFEST).read_text())["parity"]
    assert p["samples"] == 200
    assert p["agreement"] >= 0.97 and p["head_agreement"] >= 0.97 and 0 <= p["head_max_prob_diff"] < 0.05
    assert abs(p["torch_accuracy"] - p["bundle_accuracy"]) <= 0.02
    # onnxruntime's integer convs round like the fake-quant model up to one output step.
    for layer in p["layers"]:
        assert layer["max_steps"] <= 1.01 and layer["frac_off_by_more_than_half_step"] < 0.01


def test_head_reads_a_2x2_grid_and_matches_the_torch_head(int8_bundle: Path, tiny_run: Path) -> None:
    """The default head grid: each layer file's feature is [N, C*4]; head.onnx and the numpy head read it as the
    torch model's head does (same probabilities from the same layer outputs)."""
    import torch

    from ffedge.finetuning.numerics import SoftmaxHead
    from ffedge.runtime import Runtime

    m = json.loads((int8_bundle / MANIFEST).read_text())
    assert m["head"]["grid"] == 2
    rt = Runtime(int8_bundle)
    _, net = load_run(tiny_run)
    x = np.random.default_rng(0).normal(size=(6, *rt.bundle.layers[0].in_shape)).astype(np.float32)
    _, feats = rt.run_layers(x, rt.head_layers)
    for i, f in zip(rt.head_layers, feats):
        assert f.shape == (6, rt.bundle.layers[i].out_shape[0] * 4)
    probs = rt.head_session.run(None, {f"f{i}": f for i, f in zip(rt.head_layers, feats)})[0]
    head = SoftmaxHead(net.head.weight.detach().numpy(), net.head.bias.detach().numpy())
    assert np.allclose(head.predict_proba(head.features(feats, 2)), probs, atol=1e-5)
    with torch.no_grad():
        ref = torch.softmax(net.head(net.head_features(net.forward_layers(torch.from_numpy(x)), net.head_layers, 2)), 1)
    assert np.allclose(ref.numpy(), probs, atol=2e-3)  # int8 kernels vs fake quant: within rounding


def test_fp32_bundle_matches_float_model_and_int8_is_smaller(fp32_bundle: Path, int8_bundle: Path) -> None:
    m = json.loads((fp32_bundle / MANIFEST).read_text())
    assert m["precision"] == "fp32" and m["parity"]["agreement"] >= 0.99
    for layer in m["parity"]["layers"]:
        assert layer["max_rel"] < 1e-4
    i8, f32 = open_bundle(int8_bundle), open_bundle(fp32_bundle)
    ratio = sum((int8_bundle / l.file).stat().st_size for l in i8.layers) / sum(
        (fp32_bundle / l.file).stat().st_size for l in f32.layers
    )
    assert ratio < 0.4, ratio


def test_existing_out_needs_force_and_int8_needs_a_quantized_run(
    tmp_path: Path, tiny_run: Path, int8_bundle: Path
) -> None:
    with pytest.raises(FFEdgeError, match="--force"):
        export_bundle(tiny_run, int8_bundle, verify_samples=0)
    open_bundle(int8_bundle)  # untouched
    with pytest.raises(FFEdgeError, match="not a training run"):
        export_bundle(tmp_path, tmp_path / "b", verify_samples=0)


def test_failed_parity_leaves_nothing_behind(tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ffedge.train.parity as parity

    real = parity.parity_report

    def broken(*a, **kw):
        r = real(*a, **kw)
        r["agreement"] = 0.5  # what a broken export (e.g. saturating kernels) looks like
        return r

    monkeypatch.setattr(parity, "parity_report", broken)
    out = tmp_path / "b"
    with pytest.raises(FFEdgeError, match="parity check failed"):
        export_bundle(tiny_run, out, verify_samples=50)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
