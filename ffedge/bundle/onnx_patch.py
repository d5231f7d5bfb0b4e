"""Read and replace ONNX initializers without the ``onnx`` package (numpy only).

On-device fine-tuning rewrites a few tensors (int8 conv weights, their scales, the
int32 bias, the float head) inside existing ONNX files, where only numpy and
onnxruntime are installed. This module speaks just enough of the protobuf wire
format for that: it walks ``ModelProto.graph`` (field 7) -> ``GraphProto.initializer``
(field 5, ``TensorProto``) and re-encodes only the tensors it replaces; every other
byte of the file is copied as is, and only the length prefixes of the enclosing
messages change. A file patched with its own values comes out byte-identical
(when its tensors stored ``raw_data``, as ``onnx.save`` of exported models does).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from ffedge.errors import FFEdgeError
from ffedge.fsutil import atomic_path

# TensorProto.data_type -> numpy dtype (stored little-endian)
_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    10: "float16",
    11: "float64",
}
_TYPED_FIELD = {1: 4, 7: 7, 11: 10}  # float_data, int64_data, double_data; every other type uses int32_data (5)
_DATA_FIELDS = {4, 5, 6, 7, 9, 10, 11}  # float/int32/string/int64/raw/double/uint64 data: dropped on re-encode
_RAW_DATA = 9


class _Bad(Exception):
    """Malformed protobuf; reported as ``<path>: not a valid ONNX file (...)``."""


class _Unsupported(Exception):
    """Valid ONNX this module does not handle; reported as ``<path>: <message>``."""


@contextlib.contextmanager
def _reporting(path: Path) -> Iterator[None]:
    """Turn the internal parse errors into one-line FFEdgeErrors naming ``path``."""
    try:
        yield
    except _Bad as e:
        raise FFEdgeError(f"{path}: not a valid ONNX file ({e})") from None
    except _Unsupported as e:
        raise FFEdgeError(f"{path}: {e}") from None


class _Field(NamedTuple):
    num: int
    wire: int
    start: int  # first byte of the key
    key_end: int  # first byte after the key (the length prefix for wire type 2)
    vstart: int  # first byte of the value (after the length prefix)
    end: int  # first byte after the value


class _Tensor(NamedTuple):
    field: _Field  # the initializer field inside the graph
    fields: list[_Field]  # the TensorProto's own fields
    name: str
    data_type: int
    dims: tuple[int, ...]


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode one varint at ``pos``; return (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Bad("truncated or overlong varint")
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if b < 0x80:
            return value, pos


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fields(buf: bytes, pos: int, end: int) -> Iterator[_Field]:
    """The fields of the message stored in ``buf[pos:end]``."""
    while pos < end:
        key, key_end = _varint(buf, pos, end)
        num, wire = key >> 3, key & 7
        vstart = key_end
        if wire == 0:
            stop = _varint(buf, key_end, end)[1]
        elif wire == 1 or wire == 5:
            stop = key_end + (8 if wire == 1 else 4)
        elif wire == 2:
            size, vstart = _varint(buf, key_end, end)
            stop = vstart + size
        else:
            raise _Bad(f"unsupported wire type {wire}")
        if num == 0 or stop > end:
            raise _Bad("truncated message" if num else "field number 0")
        yield _Field(num, wire, pos, key_end, vstart, stop)
        pos = stop


def _expect(f: _Field, *wires: int) -> _Field:
    if f.wire not in wires:
        raise _Bad(f"field {f.num} has wire type {f.wire}")
    return f


def _ints(buf: bytes, f: _Field) -> list[int]:
    """One occurrence of a repeated int32/int64 field, packed (wire 2) or not (wire 0), as signed ints."""
    vals, pos = [], (f.key_end if f.wire == 0 else _expect(f, 2).vstart)
    while pos < f.end:
        v, pos = _varint(buf, pos, f.end)
        v &= (1 << 64) - 1  # negatives are 10-byte two's complement varints
        vals.append(v - (1 << 64) if v >= 1 << 63 else v)
    return vals


def _graph_field(buf: bytes) -> _Field:
    """ModelProto.graph; requires ir_version (field 1) too, so random bytes are not taken for a model."""
    top = list(_fields(buf, 0, len(buf)))
    versions = [_expect(f, 0) for f in top if f.num == 1]
    graphs = [_expect(f, 2) for f in top if f.num == 7]
    if not versions or len(graphs) != 1:
        raise _Bad("no ir_version or not exactly one graph")
    return graphs[0]


def _tensors(buf: bytes, graph: _Field) -> Iterator[_Tensor]:
    for f in _fields(buf, graph.vstart, graph.end):
        if f.num != 5:
            continue
        fields = list(_fields(buf, _expect(f, 2).vstart, f.end))
        name, data_type, dims = "", 0, []
        for t in fields:
            if t.num == 8:
                name = buf[_expect(t, 2).vstart : t.end].decode("utf-8", errors="replace")
            elif t.num == 2:
                data_type = _varint(buf, _expect(t, 0).key_end, t.end)[0]
            elif t.num == 1:
                dims += _ints(buf, _expect(t, 0, 2))
            elif t.num in (3, 13) or (t.num == 14 and _ints(buf, _expect(t, 0)) != [0]):
                raise _Unsupported(f"initializer '{name}' uses segments or external data, which is not supported")
        if any(d < 0 for d in dims):
            raise _Bad(f"negative dim in '{name}'")
        yield _Tensor(f, fields, name, data_type, tuple(dims))


def _dtype(t: _Tensor) -> np.dtype:
    if t.data_type not in _DTYPES:
        raise _Unsupported(f"initializer '{t.name}' has unsupported data_type {t.data_type}")
    return np.dtype(_DTYPES[t.data_type]).newbyteorder("<")


def _array(buf: bytes, t: _Tensor) -> np.ndarray:
    dtype = _dtype(t)
    raw = [f for f in t.fields if f.num == _RAW_DATA]
    want = _TYPED_FIELD.get(t.data_type, 5)
    if raw:
        data = buf[_expect(raw[-1], 2).vstart : raw[-1].end]
        if len(data) % dtype.itemsize:
            raise _Bad(f"raw_data of '{t.name}' is not a whole number of {dtype.name}")
        arr = np.frombuffer(data, dtype).copy()
    elif want in (4, 10):  # float_data / double_data: packed or fixed-width, little-endian
        fmt = np.dtype("<f4" if want == 4 else "<f8")
        chunks = [buf[_expect(f, 2, 5 if want == 4 else 1).vstart : f.end] for f in t.fields if f.num == want]
        data = b"".join(chunks)
        if len(data) % fmt.itemsize:
            raise _Bad(f"float data of '{t.name}' is truncated")
        arr = np.frombuffer(data, fmt).astype(dtype)
    else:  # int32_data / int64_data: varints; float16 keeps its bit pattern in int32_data
        vals = [v for f in t.fields if f.num == want for v in _ints(buf, _expect(f, 0, 2))]
        arr = np.array(vals, np.int64)
        arr = arr.astype(np.uint16).view(np.float16) if t.data_type == 10 else arr.astype(dtype)
    if arr.size != math.prod(t.dims):
        raise _Bad(f"initializer '{t.name}' holds {arr.size} values but its shape {t.dims} needs {math.prod(t.dims)}")
    return arr.reshape(t.dims).astype(dtype.newbyteorder("="), copy=False)


def _load(path: Path) -> tuple[bytes, _Field, list[_Tensor]]:
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise FFEdgeError(f"{path}: cannot read ({e.strerror or e})") from None
    with _reporting(path):
        graph = _graph_field(buf)
        return buf, graph, list(_tensors(buf, graph))


def read_initializers(path: str | Path) -> dict[str, np.ndarray]:
    """Every initializer of the model's main graph, by name, with its dtype and shape (scalars are 0-d)."""
    path = Path(path)
    buf, _, tensors = _load(path)
    with _reporting(path):
        return {t.name: _array(buf, t) for t in tensors}


def _coerce(where: str, value: np.ndarray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` cast to ``dtype``, or FFEdgeError if that would change its shape or values."""
    a = np.asarray(value)
    if a.shape != shape:
        raise FFEdgeError(f"{where}: shape {a.shape} does not match the stored shape {shape}")
    if a.dtype.kind not in "biuf":
        raise FFEdgeError(f"{where}: dtype {a.dtype} cannot be stored as {dtype.name}")
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            out = a.astype(dtype)
        if not np.isfinite(out).all():
            raise FFEdgeError(f"{where}: values must be finite (and fit in {dtype.name})")
        return out
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise FFEdgeError(f"{where}: {dtype.name} tensor needs integer values")
    info = np.iinfo(dtype)
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise FFEdgeError(f"{where}: values outside the {dtype.name} range [{info.min}, {info.max}]")
    return a.astype(dtype)


def _encode_tensor(buf: bytes, t: _Tensor, data: bytes) -> bytes:
    """The TensorProto with its data as ``raw_data``, placed in field-number order; other fields kept as is."""
    keep = [f for f in t.fields if f.num not in _DATA_FIELDS]
    at = next((i for i, f in enumerate(keep) if f.num > _RAW_DATA), len(keep))
    raw = _encode_varint(_RAW_DATA << 3 | 2) + _encode_varint(len(data)) + data
    parts = [buf[f.start : f.end] for f in keep]
    return b"".join(parts[:at] + [raw] + parts[at:])


def _with_value(buf: bytes, f: _Field, value: bytes) -> bytes:
    """Field ``f`` (wire type 2) re-encoded around a new value: same key, fresh length prefix."""
    return buf[f.start : f.key_end] + _encode_varint(len(value)) + value


def patch_initializers(
    src: str | Path, dst: str | Path, values: dict[str, np.ndarray], present_only: bool = False
) -> None:
    """Copy the model at ``src`` to ``dst`` (atomically; may be ``src``) with the named initializers replaced.

    Each value needs the stored shape and values that fit the stored data type;
    replaced tensors are stored as ``raw_data``. Raises FFEdgeError before writing
    anything on an unknown name (``present_only``: names the graph lacks are skipped, for a graph that holds part
    of the net), a bad value or a malformed file.
    """
    src = Path(src)
    buf, graph, tensors = _load(src)
    by_name = {t.name: t for t in tensors}
    unknown = sorted(set(values) - set(by_name))
    if unknown and not present_only:
        raise FFEdgeError(
            f"{src}: no initializer named {', '.join(map(repr, unknown))} (has {', '.join(sorted(by_name))})"
        )
    parts, pos = [], graph.vstart
    for t in tensors:
        if t.name not in values:
            continue
        with _reporting(src):
            dtype = _dtype(t)
        data = _coerce(f"{src}: initializer '{t.name}'", values[t.name], dtype, t.dims).tobytes()
        parts += [buf[pos : t.field.start], _with_value(buf, t.field, _encode_tensor(buf, t, data))]
        pos = t.field.end
    parts.append(buf[pos : graph.end])
    out = buf[: graph.start] + _with_value(buf, graph, b"".join(parts)) + buf[graph.end :]
    with atomic_path(dst) as tmp:
        tmp.write_bytes(out)
