"""The exporter's graphs: ``net_shared.onnx`` against ``net.onnx`` at layer 0, where the split happens; when no
shared graph is written; and every exported ONNX file in onnx's reference evaluator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ffedge.bundle import MANIFEST
from ffedge.bundle.names import FUSED_FILE, LABELS, SHARED_FILE, TOPK_K
from ffedge.datasets import load_dataset
from ffedge.labels import make_encoding
from ffedge.runtime import Runtime
from ffedge.runtime.session import make_session
from ffedge.train.export_shared import NotSeparable, build_shared, write_shared


def _images(rt: Runtime, n: int) -> np.ndarray:
    return rt.normalize(load_dataset("mnist-5k").x_test[:n])


def _with_output(model: onnx.ModelProto, name: str, path: Path) -> Path:
    """``model`` with the inner tensor ``name`` as an extra output, saved to ``path``."""
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(path))
    return path


def _layer0_conv_output(model: onnx.ModelProto) -> str:
    return next(n.output[0] for n in model.graph.node if n.op_type == "Conv")


@pytest.mark.parametrize("bundle", ["int8_bundle", "fp32_bundle"])
def test_layer0_of_the_shared_graph_is_the_per_hypothesis_convolution(
    request: pytest.FixtureRequest, bundle: str, tmp_path: Path
) -> None:
    """The split convolution (image part + label constant + bias) equals layer 0's convolution of the encoded
    hypotheses up to float rounding: well under a tenth of layer 0's output quantization step, so the uint8
    activations differ by at most one step (where the sum falls on a rounding boundary)."""
    b = request.getfixturevalue(bundle)
    rt = Runtime(b, threads=1)
    fused = onnx.load(str(b / FUSED_FILE))
    conv_out = _layer0_conv_output(fused)
    shared = onnx.load(str(b / SHARED_FILE))  # its Reshape writes the same tensor name
    x = _images(rt, 40)
    k = rt.num_classes
    old = make_session(_with_output(fused, conv_out, tmp_path / "f.onnx"), 1).run(
        [conv_out], {"x": rt.encoding.encode_all(x)}
    )[0]
    rows = np.tile(np.arange(k), (len(x), 1))
    new = make_session(_with_output(shared, conv_out, tmp_path / "s.onnx"), 1).run([conv_out], {"x": x, LABELS: rows})[
        0
    ]
    assert new.shape == old.shape
    m = json.loads((b / MANIFEST).read_text())
    step = m["layers"][0]["quant"]["output_scale"] if m["precision"] == "int8" else 1.0
    assert np.abs(new - old).max() / step < 0.1
    if m["precision"] == "int8":
        codes = lambda a: np.clip(np.rint(np.maximum(a, 0) / step), 0, 255)  # noqa: E731
        assert np.abs(codes(new) - codes(old)).max() <= 1


def test_no_shared_graph_when_the_label_is_added_to_the_image(int8_bundle: Path, tmp_path: Path) -> None:
    """``--label-mode add`` mixes the label into the image's own channels: layer 0 does not split, no file."""
    enc = make_encoding("fourier", 10, (1, 28, 28), mode="add").to_config()
    (tmp_path / FUSED_FILE).write_bytes((int8_bundle / FUSED_FILE).read_bytes())
    assert write_shared(tmp_path, enc, 1) is None
    assert not (tmp_path / SHARED_FILE).exists()


def test_a_layer0_that_mixes_channels_before_its_convolution_does_not_split() -> None:
    """``--norm rms`` divides by a norm over all channels (label included): no shared graph."""
    w = numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "conv_w")
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3]),
        helper.make_node("Div", ["x", "m"], ["n"]),
        helper.make_node("Conv", ["n", "conv_w"], ["goodness"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 2, 8, 8])],
        [helper.make_tensor_value_info("goodness", onnx.TensorProto.FLOAT, None)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(NotSeparable, match="layer 0"):
        build_shared(model, np.zeros((3, 1, 8, 8), np.float32), 1)


@pytest.mark.parametrize("bundle", ["int8_bundle", "fp32_bundle"])
def test_every_exported_graph_runs_in_the_onnx_reference_evaluator(request: pytest.FixtureRequest, bundle: str) -> None:
    """One opset entry per domain (``net.onnx`` used to declare the default domain once per layer, which onnx's
    version converter and reference evaluator refuse); converted to opset 19, each graph gives onnxruntime's
    outputs: at most 1% of the values differ at all (beyond 1e-5 of the largest), and by at most one output
    quantization step (a layer's ``y``) or 1e-3 of the largest value (goodness, features, probabilities), where
    onnxruntime's integer convolution and the evaluator's float one round a tie differently."""
    b = request.getfixturevalue(bundle)
    rt = Runtime(b, threads=1)
    x = _images(rt, 3)
    enc = rt.encoding.encode_all(x)
    feeds = {
        "net.onnx": {"x": enc},
        "net_shared.onnx": {"x": x, LABELS: np.tile(np.arange(rt.num_classes), (len(x), 1))},
        "net_topk.onnx": {"x": x, TOPK_K: np.array([3])},
        "net_head.onnx": {"x": x},
        "head.onnx": None,
    }
    m = json.loads((b / MANIFEST).read_text())
    steps = dict.fromkeys(feeds, 0.0)
    cur = enc
    for layer in m["layers"]:
        feeds[layer["file"]] = {"x": cur}
        steps[layer["file"]] = layer["quant"]["output_scale"] if "quant" in layer else 0.0
        cur = make_session(b / layer["file"], 1).run(["y"], {"x": cur})[0]
    assert sorted(feeds) == sorted(p.name for p in b.glob("*.onnx"))  # every ONNX file of the bundle
    for name, feed in feeds.items():
        model = onnx.load(str(b / name))
        domains = [o.domain for o in model.opset_import]
        assert len(domains) == len(set(domains)), f"{name}: {domains}"
        if feed is None:  # the head: features of a neutral pass
            feed = dict(zip([i.name for i in model.graph.input], rt.neutral_features(x)))
        ref = ReferenceEvaluator(onnx.version_converter.convert_version(model, 19)).run(None, feed)
        sess = make_session(b / name, 1)
        got = sess.run(None, feed)
        assert len(ref) == len(got)
        for out, r, g in zip(sess.get_outputs(), ref, got):
            assert r.shape == g.shape
            scale = max(1.0, float(np.abs(g).max()))
            diff = np.abs(r - g)
            tol = max(1e-3 * scale, steps[name] * 1.0001 if out.name == "y" else 0.0)
            assert diff.max() <= tol, (name, out.name, float(diff.max()))
            assert (diff > 1e-5 * scale).mean() <= 1e-2, (name, out.name, float((diff > 1e-5 * scale).mean()))


@pytest.mark.parametrize("bundle", ["int8_bundle", "fp32_bundle"])
def test_where_only_goodness_reads_layer0_its_pool_runs_first(request: pytest.FixtureRequest, bundle: str) -> None:
    """The head reads layer 0 by default (every layer but the last): the neutral pass of ``net_topk.onnx`` pools
    after layer 0's activation (the head's feature reads the activation), but ``net_shared.onnx`` and the top-k
    candidates' pass pool first; and the one-call top-k gives what the three calls give."""
    b = request.getfixturevalue(bundle)
    m = json.loads((b / MANIFEST).read_text())
    assert m["head"]["layers"] == list(range(len(m["layers"]) - 1))

    def layer0_pool_reads(model: onnx.ModelProto, prefix: str) -> str:
        producer = {o: n for n in model.graph.node for o in n.output}
        pool = next(n for n in model.graph.node if n.op_type == "MaxPool" and n.name.startswith(prefix))
        return producer[pool.input[0]].op_type

    assert layer0_pool_reads(onnx.load(str(b / SHARED_FILE)), "") == "Reshape"  # layer 0's accumulator
    topk = onnx.load(str(b / "net_topk.onnx"))
    assert layer0_pool_reads(topk, "c/") == "Reshape"
    assert layer0_pool_reads(topk, "n/") != "Reshape"
    x = _images(Runtime(b, threads=1), 100)
    one = Runtime(b, threads=1)
    three = Runtime(b, threads=1)
    three.use_topk = False
    for k in (1, 2):
        got, want = one.predict_normalized(x, "topk", k), three.predict_normalized(x, "topk", k)
        assert one._topk is not None and (got.labels == want.labels).all()
        fin = np.isfinite(want.scores)
        assert np.array_equal(np.isfinite(got.scores), fin)
        np.testing.assert_allclose(got.scores[fin], want.scores[fin], rtol=1e-5, atol=1e-6)
