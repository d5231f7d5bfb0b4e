"""The exporter's constant fold (``export_graph.fold_constants``): the Clip Brevitas leaves on each int8 weight goes,
onnxruntime still fuses every convolution into QLinearConv with the same numbers, and OpenVINO runs them in int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("brevitas")
onnx = pytest.importorskip("onnx")

from ffedge.bundle import open_bundle  # noqa: E402
from ffedge.bundle.names import GOODNESS, INPUT  # noqa: E402
from ffedge.runtime import make_session  # noqa: E402
from ffedge.train.export_graph import _KEEP_OPS, fold_constants, fused_ops  # noqa: E402
from tests.device.conftest import GOLDEN  # noqa: E402

# The golden int8 bundle's net.onnx as exported before the fold (see tests/device/test_engines.py).
BEFORE_FOLD = GOLDEN / "net-before-fold.onnx"


def _constant_only(model: onnx.ModelProto) -> list[str]:
    """Nodes other than Q/DQ whose inputs are all initializers (what the fold leaves none of)."""
    inits = {t.name for t in model.graph.initializer}
    return [n.op_type for n in model.graph.node if n.op_type not in _KEEP_OPS and all(i in inits for i in n.input if i)]


def test_the_fold_removes_the_weight_clips_and_keeps_onnxruntimes_qlinearconv(tmp_path: Path) -> None:
    before = onnx.load(str(BEFORE_FOLD))
    assert [n.op_type for n in before.graph.node].count("Clip") == 3 and _constant_only(before) == ["Clip"] * 3
    after = onnx.load(str(BEFORE_FOLD))
    assert fold_constants(after) == 3
    assert "Clip" not in [n.op_type for n in after.graph.node] and _constant_only(after) == []
    onnx.checker.check_model(after, full_check=True)
    folded = tmp_path / "net.onnx"
    onnx.save(after, str(folded))
    assert fused_ops(folded)["QLinearConv"] == fused_ops(BEFORE_FOLD)["QLinearConv"] == 3
    x = np.random.default_rng(0).normal(size=(64, 2, 28, 28)).astype(np.float32)
    a, b = (make_session(p, threads=1).run([GOODNESS], {INPUT: x})[0] for p in (BEFORE_FOLD, folded))
    assert (a == b).all()  # the same integer kernels on the same weights: bit-identical


def test_an_int8_export_has_no_constant_only_node_and_every_conv_fuses(int8_bundle: Path) -> None:
    b = open_bundle(int8_bundle)
    m = b.manifest
    assert m.fused is not None and m.head is not None
    for name in [layer.file for layer in m.layers] + [m.fused.file, m.head.file]:
        assert _constant_only(onnx.load(str(int8_bundle / name))) == [], name
    assert m.fused.ort_ops["QLinearConv"] == len(m.layers) and "Clip" not in m.fused.ort_ops
    assert fused_ops(int8_bundle / m.fused.file) == m.fused.ort_ops  # the count is the optimized graph's


def test_openvino_runs_the_folded_graph_in_int8(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from ffedge.runtime.engines import INT8_PRECISIONS, compile_openvino, conv_precisions

    model = onnx.load(str(BEFORE_FOLD))
    fold_constants(model)
    onnx.save(model, str(tmp_path / "net.onnx"))
    before = conv_precisions(compile_openvino(BEFORE_FOLD, threads=1))
    after = conv_precisions(compile_openvino(tmp_path / "net.onnx", threads=1))
    assert len(before) == len(after) == 3
    assert not set(before.values()) & set(INT8_PRECISIONS) and set(after.values()) <= set(INT8_PRECISIONS)
