"""The machine's GEMM rate as onnxruntime reaches it: the physical-limit line of ``ffedge bench`` (device side).

One ``MatMulInteger`` (uint8 activations x int8 weights, the weights a constant as a
conv's are, so onnxruntime may pre-pack them) and one float ``MatMul``, each M x K x N,
built in memory without the ``onnx`` package (a few protobuf fields written by hand)
and run with the session options and thread count ffedge runs bundles with. The rate
is MACs (M*K*N) over the best of many timed runs (within a time budget), the best of two sizes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnxruntime as ort

from ffedge.bundle.onnx_patch import _encode_varint
from ffedge.runtime.session import session_options

# TensorProto.DataType
_FLOAT, _UINT8, _INT8, _INT32 = 1, 2, 3, 6


def _field(num: int, value: bytes | str | int) -> bytes:
    """One protobuf field: a varint (int) or a length-delimited value (bytes, str)."""
    if isinstance(value, int):
        return _encode_varint(num << 3) + _encode_varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _encode_varint(num << 3 | 2) + _encode_varint(len(data)) + data


def _value_info(name: str, elem_type: int, dims: tuple[int, ...]) -> bytes:
    """ValueInfoProto: name, TypeProto.tensor_type (elem_type, shape of dim_values)."""
    shape = b"".join(_field(1, _field(1, d)) for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, elem_type) + _field(2, shape)))


def _tensor(name: str, elem_type: int, a: np.ndarray) -> bytes:
    """TensorProto with raw_data (little-endian)."""
    dims = b"".join(_field(1, d) for d in a.shape)
    return (
        dims
        + _field(2, elem_type)
        + _field(8, name)
        + _field(9, np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
    )


def matmul_model(m: int, k: int, n: int, integer: bool = True, seed: int = 0) -> bytes:
    """A serialized ONNX model ``y = MatMulInteger(a, w)`` (uint8 a [m, k], int8 constant w [k, n], int32 y)
    or, with ``integer=False``, ``y = MatMul(a, w)`` in float32."""
    rng = np.random.default_rng(seed)
    if integer:
        w = rng.integers(-64, 64, size=(k, n), dtype=np.int8)
        op, a_type, w_type, y_type = "MatMulInteger", _UINT8, _INT8, _INT32
    else:
        w = rng.standard_normal((k, n)).astype(np.float32)
        op, a_type, w_type, y_type = "MatMul", _FLOAT, _FLOAT, _FLOAT
    node = _field(1, "a") + _field(1, "w") + _field(2, "y") + _field(3, "gemm") + _field(4, op)
    graph = (
        _field(1, node)
        + _field(2, "gemm_rate")
        + _field(5, _tensor("w", w_type, w))
        + _field(11, _value_info("a", a_type, (m, k)))
        + _field(12, _value_info("y", y_type, (m, n)))
    )
    opset = _field(1, "") + _field(2, 13)
    return _field(1, 8) + _field(2, "ffedge") + _field(7, graph) + _field(8, opset)


def gemm_gmacs(
    size: int = 1024, threads: int | None = None, integer: bool = True, repeats: int = 50, budget_s: float = 1.5
) -> float:
    """GMAC/s of one ``size``^3 GEMM in onnxruntime (``integer``: uint8 x int8 -> int32): the best of up to
    ``repeats`` runs (at least 3; no new run after ``budget_s`` seconds). Best of many, as the latency's min is:
    on a loaded machine a few runs may all be interrupted."""
    sess = ort.InferenceSession(
        matmul_model(size, size, size, integer), session_options(threads), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(size, size), dtype=np.uint8) if integer else rng.random((size, size), np.float32)
    sess.run(None, {"a": a})  # warm-up: thread pool, pre-packed weights
    best, start = float("inf"), time.perf_counter()
    for i in range(max(1, repeats)):
        if i >= 3 and time.perf_counter() - start > budget_s:
            break
        t = time.perf_counter()
        sess.run(None, {"a": a})
        best = min(best, time.perf_counter() - t)
    return size**3 / best / 1e9


def gemm_rates(
    size: int = 1024, threads: int | None = None, repeats: int = 50, budget_s: float = 1.5
) -> dict[str, Any]:
    """The int8 (``MatMulInteger``) and fp32 (``MatMul``) rates in GMAC/s, as ``ffedge bench --json`` reports them:
    the best of ``size``^3 and (``size`` / 2)^3, each size's in ``by_size`` (on a 2-core EPYC VM the fp32 rate at
    1024^3 was a fifth of the one at 512^3, the int8 rate the same)."""
    sizes = sorted({size, max(1, size // 2)}, reverse=True)
    by_size = {
        str(n): {
            "int8_gmacs": gemm_gmacs(n, threads, True, repeats, budget_s),
            "fp32_gmacs": gemm_gmacs(n, threads, False, repeats, budget_s),
        }
        for n in sizes
    }
    best = {key: max(r[key] for r in by_size.values()) for key in ("int8_gmacs", "fp32_gmacs")}
    return {"size": size, "sizes": sizes, "threads": threads, **best, "by_size": by_size}
