"""Which runtime executes a bundle's graphs: onnxruntime (with the execution providers asked for) or OpenVINO.

- ``onnxruntime`` (the default): :func:`check_providers` turns ``--providers A,B`` into a list onnxruntime takes,
  or a one-line error naming the providers this onnxruntime has (onnxruntime itself only warns and falls back to
  the CPU).
- ``openvino``: OpenVINO's own runtime (the ``openvino`` extra), imported only when asked for.
  :class:`OpenVINOGraph` compiles a bundle file for OpenVINO's CPU plugin behind the interface of
  :class:`ffedge.runtime.session.Graph`, so :class:`~ffedge.runtime.session.Runtime` runs it unchanged. It runs
  ``net.onnx`` (every hypothesis encoded), never ``net_shared.onnx``: in the shared graph layer 0 is a float
  convolution by design and OpenVINO does not fold its label part into a constant, while in ``net.onnx`` every
  convolution runs in int8 (:func:`conv_precisions`). Operators outside the int8 pattern run in f32 (OpenVINO's
  default on CPUs with bf16 would be bf16), as in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from ffedge.errors import FFEdgeError, install_hint, quoted

ENGINES = ("onnxruntime", "openvino")
DEFAULT_ENGINE = "onnxruntime"
# Runtime precisions of an integer convolution in OpenVINO's executed graph (rt_info ``runtimePrecision``).
INT8_PRECISIONS = ("u8", "i8")
_OV_TYPES = {"f32": "float", "i64": "int64"}


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a one-line error."""
    if engine not in ENGINES:
        raise FFEdgeError(f"unknown engine {quoted(engine)}: use {' or '.join(ENGINES)}")
    return engine


def check_providers(providers: str | Sequence[str] | None) -> list[str] | None:
    """onnxruntime execution providers, comma-separated text or a list, in priority order; None: the default.

    A provider this onnxruntime does not have is a one-line error that lists the ones it has.
    """
    if providers is None:
        return None
    names = [p.strip() for p in (providers.split(",") if isinstance(providers, str) else providers)]
    if not names or not all(names):
        raise FFEdgeError(f"--providers {quoted(providers)}: give provider names separated by commas")
    import onnxruntime as ort

    have = ort.get_available_providers()
    missing = [p for p in names if p not in have]
    if missing:
        raise FFEdgeError(
            f"execution provider {', '.join(map(quoted, missing))} is not available in this onnxruntime "
            f"({ort.__version__}); available: {', '.join(have)}"
        )
    return names


def import_openvino() -> Any:
    """The ``openvino`` module, or a one-line error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise FFEdgeError(f"OpenVINO is not installed: {install_hint('openvino')}") from None
    return openvino


def openvino_version() -> str | None:
    """The installed OpenVINO's version, None without it (no import of the runtime itself)."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


class TensorInfo(NamedTuple):
    """An input or output as onnxruntime describes one (what :func:`~ffedge.runtime.session.check_graph` reads)."""

    name: str
    type: str
    shape: list[int | str]


def _info(port: Any) -> TensorInfo:
    kind = _OV_TYPES.get(port.get_element_type().get_type_name(), port.get_element_type().get_type_name())
    dims = [d.get_length() if d.is_static else "n" for d in port.get_partial_shape()]
    return TensorInfo(port.get_any_name(), f"tensor({kind})", dims)


def compile_openvino(path: str | Path, threads: int | None = None) -> Any:
    """A bundle file compiled by OpenVINO for its CPU plugin (f32 outside the int8 pattern); one-line errors.

    Threads are not pinned to cores (OpenVINO pins them on Linux by default): on a 2-core machine shared with
    other processes, pinned threads waited for their core and the batch-1 p50 was 21 ms instead of 0.94 ms
    (min 0.58 ms both); onnxruntime does not pin either.
    """
    ov = import_openvino()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return ov.Core().compile_model(str(path), "CPU", config)
    except Exception as e:  # OpenVINO raises RuntimeError (and its own types) for files it cannot read
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FFEdgeError(f"{path}: OpenVINO cannot load it: {msg}") from None


def conv_precisions(compiled: Any) -> dict[str, str]:
    """Each convolution of OpenVINO's executed graph -> the precision it runs in (``u8``/``i8``: integer)."""
    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) == "Convolution":
            out[op.get_friendly_name()] = rt["runtimePrecision"].astype(str)
    return out


class OpenVINOGraph:
    """A bundle file run by OpenVINO, with the interface of :class:`ffedge.runtime.session.Graph`."""

    def __init__(self, path: str | Path, name: str, threads: int | None = None) -> None:
        self.name = name
        self.compiled = compile_openvino(path, threads)
        self.request = self.compiled.create_infer_request()

    def run(self, outputs: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(outputs) if outputs is not None else [o.name for o in self.get_outputs()]
        try:
            result = self.request.infer(feeds)
            # The request's output buffers are reused by its next call: copies.
            return [np.array(result[self.compiled.output(n)]) for n in names]
        except Exception as e:  # OpenVINO's errors: RuntimeError and its own types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FFEdgeError(f"{quoted(self.name)}: OpenVINO failed to run it: {msg}") from None

    def get_inputs(self) -> list[TensorInfo]:
        return [_info(p) for p in self.compiled.inputs]

    def get_outputs(self) -> list[TensorInfo]:
        return [_info(p) for p in self.compiled.outputs]

    def conv_precisions(self) -> dict[str, str]:
        return conv_precisions(self.compiled)
