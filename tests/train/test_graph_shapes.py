"""Static reshape targets (:mod:`ffedge.train.graph_shapes`): the chains torch writes for ``reshape(b, c, h * w)``
become constants where every dimension is fixed or is the batch of the tensor reshaped, with the same outputs at
every batch size; a target with another run-time dimension stays as it is. Exported bundles carry no such chain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffedge.bundle import MANIFEST
from ffedge.runtime.session import make_session
from ffedge.train.graph_shapes import fold_reshape_targets


def _int(name: str, v: int) -> onnx.TensorProto:
    """A scalar int64 initializer."""
    return numpy_helper.from_array(np.array(v, np.int64), name)


def _model() -> onnx.ModelProto:
    """``x`` [n, 4, 3, 3] -> reshape(n, 4, 9) -> MatMul [9, 2] -> reshape(n, 4 * 2) -> ``y``; and ``z`` [n, m]
    -> reshape(n, m, 1) -> ``w`` (m is known only at run time)."""
    g = []
    for i in range(3):
        g += [helper.make_node("Shape", ["x"], [f"s{i}"]), helper.make_node("Gather", [f"s{i}", f"i{i}"], [f"d{i}"])]
    g += [
        helper.make_node("Shape", ["x"], ["s3"]),
        helper.make_node("Gather", ["s3", "i3"], ["d3"]),
        helper.make_node("Mul", ["d2", "d3"], ["hw"]),
        *[helper.make_node("Unsqueeze", [d, "ax"], [f"u{d}"]) for d in ("d0", "d1", "hw")],
        helper.make_node("Concat", ["ud0", "ud1", "uhw"], ["t1"], axis=0),
        helper.make_node("Reshape", ["x", "t1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "pool"], ["p"]),
        helper.make_node("Mul", ["d1", "two"], ["c2"]),
        helper.make_node("Unsqueeze", ["c2", "ax"], ["uc2"]),
        helper.make_node("Concat", ["ud0", "uc2"], ["t2"], axis=0),
        helper.make_node("Reshape", ["p", "t2"], ["y"]),
        helper.make_node("Shape", ["z"], ["sz"]),
        helper.make_node("Gather", ["sz", "i0"], ["z0"]),
        helper.make_node("Gather", ["sz", "i1"], ["z1"]),
        helper.make_node("Unsqueeze", ["z0", "ax"], ["uz0"]),
        helper.make_node("Unsqueeze", ["z1", "ax"], ["uz1"]),
        helper.make_node("Concat", ["uz0", "uz1", "one"], ["tz"], axis=0),
        helper.make_node("Reshape", ["z", "tz"], ["w"]),
    ]
    inits = [_int(f"i{i}", i) for i in range(4)] + [_int("two", 2)]
    inits += [
        numpy_helper.from_array(np.array([0], np.int64), "ax"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.random.default_rng(0).normal(size=(9, 2)).astype(np.float32), "pool"),
    ]
    graph = helper.make_graph(
        g,
        "t",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 3, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", "m"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n", "m", 1]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model: onnx.ModelProto, path: Path, b: int) -> list[np.ndarray]:
    onnx.save(model, str(path))
    rng = np.random.default_rng(b)
    feeds = {"x": rng.normal(size=(b, 4, 3, 3)).astype(np.float32), "z": rng.normal(size=(b, 5)).astype(np.float32)}
    return make_session(path, 1).run(None, feeds)


def test_static_targets_become_constants_and_compute_the_same(tmp_path: Path) -> None:
    model = _model()
    onnx.checker.check_model(model, full_check=True)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_reshape_targets(folded) == 2  # x's two reshapes; z's depends on m
    onnx.checker.check_model(folded, full_check=True)
    targets = {n.output[0]: n.input[1] for n in folded.graph.node if n.op_type == "Reshape"}
    consts = {t.name: numpy_helper.to_array(t).tolist() for t in folded.graph.initializer}
    assert consts[targets["r1"]] == [0, 4, 9] and consts[targets["y"]] == [0, 8]
    assert targets["w"] not in consts  # computed at run time, as before
    assert sum(n.op_type == "Shape" for n in folded.graph.node) == 1  # z's; x's four are gone
    for b in (1, 3, 7):
        for a, c in zip(_run(model, tmp_path / "a.onnx", b), _run(folded, tmp_path / "b.onnx", b)):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("bundle", ["int8_bundle", "fp32_bundle"])
def test_exported_graphs_compute_no_reshape_target(request: pytest.FixtureRequest, bundle: str) -> None:
    b = request.getfixturevalue(bundle)
    files = [layer["file"] for layer in json.loads((b / MANIFEST).read_text())["layers"]] + ["head.onnx", "net.onnx"]
    for name in files:
        ops = [n.op_type for n in onnx.load(str(b / name)).graph.node]
        assert "Shape" not in ops, (name, ops.count("Shape"))
