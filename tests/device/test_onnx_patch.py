"""ffedge.bundle.onnx_patch: reading and replacing initializers without the onnx package, checked against onnx itself.

The onnx package (the [train] extra) is the reference: on a device-only install the tests that build models with
it or compare with it are skipped; that the module imports without it is checked everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ffedge.bundle.onnx_patch import patch_initializers, read_initializers
from ffedge.errors import FFEdgeError
from tests.conftest import REPO, python, raises_one_line

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # a device-only install
    onnx = None

needs_onnx = pytest.mark.skipif(onnx is None, reason="the onnx package (the train extra) is the reference")
RNG = np.random.default_rng(0)


def _tensor(name: str, arr: np.ndarray, raw: bool) -> TensorProto:
    """``arr`` as raw_data (numpy_helper) or as the typed *_data fields (helper.make_tensor)."""
    if raw:
        return numpy_helper.from_array(arr, name)
    t = helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape, arr.flatten().tolist())
    assert not t.HasField("raw_data")
    return t


def _qcdq_values() -> dict[str, np.ndarray]:
    return {
        "in_scale": np.array(0.02, np.float32),
        "in_zp": np.array(0, np.int8),
        "conv_w_q": RNG.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8),
        "conv_w_scale": np.array([0.01, 0.02, 0.015], np.float32),
        "w_zp": np.zeros(3, np.int8),
        "conv_b_q": RNG.integers(-2000, 2000, 3).astype(np.int32),
        "conv_b_scale": np.array(2e-4, np.float32),
        "b_zp": np.array(0, np.int32),
        "head_w": RNG.normal(size=(3, 4)).astype(np.float32),
        "head_b": RNG.normal(size=4).astype(np.float32),
    }


def _qcdq_model(raw: bool) -> onnx.ModelProto:
    """A small QCDQ conv (int8 weights, per-channel float scale, int32 bias) feeding a float Gemm head."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "in_scale", "in_zp"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "in_scale", "in_zp"], ["xd"]),
        helper.make_node("DequantizeLinear", ["conv_w_q", "conv_w_scale", "w_zp"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["conv_b_q", "conv_b_scale", "b_zp"], ["b"]),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "head_w", "head_b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qcdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[_tensor(k, v, raw) for k, v in _qcdq_values().items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="test")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _run(path_or_model: Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    src = str(path_or_model) if isinstance(path_or_model, Path) else path_or_model.SerializeToString()
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feeds)


def _patched_by_onnx(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The reference: the same replacement done with the onnx package."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        if t.name in values:
            t.CopyFrom(
                numpy_helper.from_array(np.asarray(values[t.name]).astype(numpy_helper.to_array(t).dtype), t.name)
            )
    return ref


def _assert_same_arrays(got: dict[str, np.ndarray], model: onnx.ModelProto) -> None:
    want = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert list(got) == list(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr, err_msg=name)


def _varint(v: int) -> bytes:
    out = b""
    while v >= 0x80:
        out, v = out + bytes([v & 0x7F | 0x80]), v >> 7
    return out + bytes([v])


# --- reading -------------------------------------------------------------------------------------


@needs_onnx
@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed"])
def test_read_matches_onnx(tmp_path: Path, raw: bool) -> None:
    model = _qcdq_model(raw)
    got = read_initializers(_save(model, tmp_path / "m.onnx"))
    _assert_same_arrays(got, model)
    assert got["in_scale"].shape == () and got["conv_w_q"].dtype == np.int8 and got["conv_b_q"].dtype == np.int32


@needs_onnx
@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed"])
def test_read_all_dtypes(tmp_path: Path, raw: bool) -> None:
    arrays = {
        "f32": np.array([[1.5, -2.0, np.inf]], np.float32),
        "u8": np.array([0, 255], np.uint8),
        "i8": np.array([-128, 127, -1], np.int8),
        "u16": np.array([65535], np.uint16),
        "i16": np.array([-32768], np.int16),
        "i32": np.array([-(2**31), 2**31 - 1], np.int32),
        "i64": np.array([[-(2**63)], [2**63 - 1]], np.int64),
        "f16": np.array([0.5, -65504.0], np.float16),
        "f64": np.array(-1e300, np.float64),
        "empty": np.zeros((0, 3), np.float32),
    }
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "dtypes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[_tensor(k, v, raw) for k, v in arrays.items()],
    )
    model = helper.make_model(graph)
    got = read_initializers(_save(model, tmp_path / "d.onnx"))
    _assert_same_arrays(got, model)


@needs_onnx
def test_read_packed_dims_and_unpacked_data(tmp_path: Path) -> None:
    """Protobuf allows repeated scalars packed or not; onnx writes dims unpacked and *_data packed, so craft the reverse."""
    vals = np.array([[1.0, -2.5, 3.25], [0.0, 7.0, -1.0]], np.float32)
    head = TensorProto(name="odd", data_type=TensorProto.FLOAT).SerializeToString()
    dims = b"".join(_varint(d) for d in vals.shape)
    floats = b"".join(b"\x25" + v.tobytes() for v in vals.flatten())  # field 4, wire type 5, one by one
    ints = b"".join(b"\x28" + _varint(v & (2**64 - 1)) for v in (-3, 4))  # field 5, wire type 0, negatives as 10 bytes
    tensors = {
        "odd": head + b"\x0a" + _varint(len(dims)) + dims + floats,
        "odd_i8": TensorProto(name="odd_i8", data_type=TensorProto.INT8, dims=[2]).SerializeToString() + ints,
    }
    graph = helper.make_graph(
        [],
        "g",
        [],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        initializer=[numpy_helper.from_array(np.ones(1, np.float32), "x")],
    )
    gbytes = graph.SerializeToString() + b"".join(b"\x2a" + _varint(len(t)) + t for t in tensors.values())
    mbytes = helper.make_model(helper.make_graph([], "", [], [])).SerializeToString()
    model = onnx.ModelProto.FromString(mbytes)
    model.ClearField("graph")
    path = tmp_path / "odd.onnx"
    path.write_bytes(model.SerializeToString() + b"\x3a" + _varint(len(gbytes)) + gbytes)
    parsed = onnx.load(str(path))
    _assert_same_arrays(read_initializers(path), parsed)
    np.testing.assert_array_equal(read_initializers(path)["odd_i8"], [-3, 4])
    # and patching re-encodes such a tensor canonically
    patch_initializers(path, tmp_path / "p.onnx", {"odd": -vals, "odd_i8": np.array([5, -6])})
    patched = {t.name: t for t in onnx.load(str(tmp_path / "p.onnx")).graph.initializer}
    np.testing.assert_array_equal(numpy_helper.to_array(patched["odd"]), -vals)
    np.testing.assert_array_equal(numpy_helper.to_array(patched["odd_i8"]), [5, -6])
    assert patched["odd"].SerializeToString() == numpy_helper.from_array(-vals, "odd").SerializeToString()


# --- patching --------------------------------------------------------------------------------------


def _new_values() -> dict[str, np.ndarray]:
    v = _qcdq_values()
    return {
        "conv_w_q": np.clip(-v["conv_w_q"].astype(np.int16) + 3, -128, 127),  # int16 in, stored as int8
        "conv_w_scale": v["conv_w_scale"] * 1.5,
        "conv_b_q": v["conv_b_q"][::-1] * 2,
        "conv_b_scale": np.array(3e-4),  # float64 in, stored as float32
        "head_w": RNG.normal(size=(3, 4)).astype(np.float32),
    }


@needs_onnx
@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed"])
def test_patch_matches_onnx_package(tmp_path: Path, raw: bool) -> None:
    model = _qcdq_model(raw)
    src, dst = _save(model, tmp_path / "src.onnx"), tmp_path / "dst.onnx"
    before = src.read_bytes()
    new = _new_values()
    patch_initializers(src, dst, new)
    assert src.read_bytes() == before

    out = onnx.load(str(dst))
    onnx.checker.check_model(out, full_check=True)
    ref = _patched_by_onnx(model, new)
    _assert_same_arrays(read_initializers(dst), ref)
    for got, want, orig in zip(out.graph.initializer, ref.graph.initializer, model.graph.initializer):
        if got.name in new:
            assert got.HasField("raw_data") and not (got.float_data or got.int32_data)
            assert got == want
        else:
            assert got == orig  # untouched tensors keep their storage form
    assert (
        out.graph.node == model.graph.node
        and out.graph.input == model.graph.input
        and out.graph.output == model.graph.output
    )
    assert (out.ir_version, out.opset_import, out.producer_name) == (
        model.ir_version,
        model.opset_import,
        model.producer_name,
    )

    x = {"x": RNG.normal(size=(4, 2, 5, 5)).astype(np.float32)}
    got_y, ref_y, old_y = _run(dst, x)[0], _run(ref, x)[0], _run(src, x)[0]
    np.testing.assert_array_equal(got_y, ref_y)
    assert not np.allclose(got_y, old_y)


@needs_onnx
def test_patch_in_place_and_unchanged_is_byte_exact(tmp_path: Path) -> None:
    src = _save(_qcdq_model(raw=True), tmp_path / "m.onnx")
    before = src.read_bytes()
    patch_initializers(src, src, read_initializers(src))
    assert src.read_bytes() == before
    patch_initializers(src, src, {"head_b": np.arange(4)})
    np.testing.assert_array_equal(read_initializers(src)["head_b"], np.arange(4, dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"], "no temp files left behind"


# --- a real exported bundle ------------------------------------------------------------------------


def _feeds(path: Path) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    return {
        i.name: rng.uniform(0, 2, [d if isinstance(d, int) else 3 for d in i.shape]).astype(np.float32)
        for i in sess.get_inputs()
    }


@needs_onnx
def test_bundle_files_read_and_round_trip_byte_exact(golden_int8: Path, tmp_path: Path) -> None:
    files = sorted(golden_int8.glob("*.onnx"))
    assert {"layer0.onnx", "layer2.onnx", "net.onnx", "head.onnx"} <= {f.name for f in files}
    for f in files:
        model = onnx.load(str(f))
        got = read_initializers(f)
        _assert_same_arrays(got, model)
        patch_initializers(f, tmp_path / f.name, got)
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name
    layer = read_initializers(golden_int8 / "layer2.onnx")
    assert {"conv_w_q", "conv_w_scale", "conv_b_q", "conv_b_scale", "in_scale", "out_scale"} <= set(layer)
    assert layer["conv_w_q"].dtype == np.int8 and layer["conv_b_q"].dtype == np.int32
    assert {"l2_conv_w_q", "l0_conv_b_q"} <= set(read_initializers(golden_int8 / "net.onnx"))
    assert {"head_w", "head_b"} <= set(read_initializers(golden_int8 / "head.onnx"))


@needs_onnx
@pytest.mark.parametrize(
    ("file", "name"), [("layer2.onnx", "conv_w_q"), ("net.onnx", "l2_conv_w_q"), ("head.onnx", "head_w")]
)
def test_bundle_patch_matches_onnx_package(golden_int8: Path, tmp_path: Path, file: str, name: str) -> None:
    src, dst = golden_int8 / file, tmp_path / file
    old = read_initializers(src)[name]
    new = np.clip(-old.astype(np.int16), -128, 127) if old.dtype == np.int8 else -old
    patch_initializers(src, dst, {name: new})
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    feeds = _feeds(src)
    ref = _patched_by_onnx(onnx.load(str(src)), {name: new})
    got, want, before = _run(dst, feeds), _run(ref, feeds), _run(src, feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert any(not np.array_equal(g, b) for g, b in zip(got, before)), "the patch must change the output"


# --- errors ----------------------------------------------------------------------------------------


@needs_onnx
def test_bad_values_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    src, dst = _save(_qcdq_model(raw=True), tmp_path / "m.onnx"), tmp_path / "out.onnx"
    w = read_initializers(src)["conv_w_q"]
    cases = {
        "conv_w_q": w[:, :1],  # wrong shape
        "conv_b_q": np.array([1, 2, 3], np.float64) + 0.5,  # not integers
        "conv_w_scale": np.array([0.1, np.nan, 0.1], np.float32),  # not finite
        "head_b": np.array([1, 2, 3, 1e39]),  # overflows float32
        "in_zp": np.array(200),  # outside int8
        "in_scale": np.array("x"),  # not numeric
    }
    for name, value in cases.items():
        msg = raises_one_line(patch_initializers, src, dst, {name: value})
        assert f"'{name}'" in msg and str(src) in msg
    msg = raises_one_line(patch_initializers, src, dst, {"nope": w, "conv_w_q": w})
    assert "'nope'" in msg and "conv_w_q" in msg
    assert raises_one_line(patch_initializers, src, dst, {"conv_w_q": w.astype(np.int32) * 2}).endswith(
        "range [-128, 127]"
    )
    assert not dst.exists() and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@needs_onnx
def test_malformed_files_are_refused(tmp_path: Path) -> None:
    good = _save(_qcdq_model(raw=True), tmp_path / "m.onnx").read_bytes()
    cases = {
        "half": good[: len(good) // 2],
        "cut_one": good[:-1],
        "text": b"this is not an onnx model, just some text\n" * 4,
        "png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        "empty": b"",
        "overlong_varint": b"\x08" + b"\xff" * 20,
    }
    for what, data in cases.items():
        p = tmp_path / f"{what}.onnx"
        p.write_bytes(data)
        for fn, args in ((read_initializers, (p,)), (patch_initializers, (p, tmp_path / "o.onnx", {}))):
            msg = raises_one_line(fn, *args)
            assert msg.startswith(f"{p}: not a valid ONNX file ("), (what, msg)
    assert "cannot read" in raises_one_line(read_initializers, tmp_path / "missing.onnx")
    assert not (tmp_path / "o.onnx").exists()


@needs_onnx
@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed"])
def test_damaged_files_never_raise_anything_but_ffedge_error(tmp_path: Path, raw: bool) -> None:
    """Every truncation and a few hundred random byte flips: a value or a one-line FFEdgeError, never IndexError & co."""
    good = _qcdq_model(raw).SerializeToString()
    rng = np.random.default_rng(2)
    damaged = [good[:n] for n in range(len(good))]
    for _ in range(300):
        b = bytearray(good)
        b[rng.integers(len(b))] = rng.integers(256)
        damaged.append(bytes(b))
    p = tmp_path / "d.onnx"
    for data in damaged:
        p.write_bytes(data)
        try:
            values = read_initializers(p)
            patch_initializers(p, tmp_path / "o.onnx", dict(list(values.items())[:2]))
        except FFEdgeError as e:
            assert "\n" not in str(e)


@needs_onnx
def test_external_data_is_refused(tmp_path: Path) -> None:
    model = _qcdq_model(raw=True)
    t = model.graph.initializer[2]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="w.bin")
    p = tmp_path / "ext.onnx"
    p.write_bytes(model.SerializeToString())
    assert "external data" in raises_one_line(read_initializers, p)
    assert "external data" in raises_one_line(patch_initializers, p, p, {})


def test_imports_without_onnx_torch_or_protobuf() -> None:
    code = (
        "import ffedge.bundle.onnx_patch; assert not {'onnx', 'torch', 'google'} "
        "& {m.split('.')[0] for m in sys.modules if sys.modules[m]}"
    )
    r = python(code, blocked=("onnx", "torch", "google.protobuf"), cwd=REPO)
    assert r.returncode == 0, r.stderr
