"""Engines and execution providers (``ffedge.runtime.engines``): OpenVINO's own runtime on the golden int8 bundle
against onnxruntime (agreement, every convolution in int8), and ``--providers`` / ``--engine`` on the CLI.

OpenVINO comes with the ``[openvino]`` extra, which ``[test]`` pulls in (CI checks it is there, so these tests
run there rather than skip).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ffedge.datasets import load_dataset
from ffedge.runtime import Runtime
from ffedge.runtime.bench import measure_ort, openvino_variant, ort_variants, run_bench
from ffedge.runtime.engines import INT8_PRECISIONS, check_providers
from tests.conftest import assert_one_line_error, device_cli, raises_one_line
from tests.device.conftest import GOLDEN

# The golden int8 bundle's net.onnx as the exporter wrote it before it folded the Clip Brevitas leaves on each
# int8 weight constant (commit 53db4ae): OpenVINO ran its convolutions in f32.
BEFORE_FOLD = GOLDEN / "net-before-fold.onnx"
openvino = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("mnist-5k")
    return ds.x_test, ds.y_test


def _int8_convs(precisions: dict[str, str]) -> bool:
    return bool(precisions) and all(p in INT8_PRECISIONS for p in precisions.values())


@pytest.mark.parametrize("mode", ["all", "head", "topk"])
def test_openvino_agrees_with_onnxruntime_on_the_held_out_digits(
    golden_int8: Path, digits: tuple[np.ndarray, np.ndarray], mode: str
) -> None:
    x, y = digits  # all 1000
    ort_pred = Runtime(golden_int8, threads=1).predict(x, mode=mode)
    ov_pred = Runtime(golden_int8, threads=1, engine="openvino").predict(x, mode=mode)
    assert (ov_pred.labels == ort_pred.labels).mean() >= 0.999
    assert abs((ov_pred.labels == y).mean() - (ort_pred.labels == y).mean()) <= 0.001
    finite = np.isfinite(ort_pred.scores)
    assert (np.isfinite(ov_pred.scores) == finite).all()
    assert np.allclose(ov_pred.scores[finite], ort_pred.scores[finite], atol=0.05)


def test_openvino_runs_every_convolution_in_int8(golden_int8: Path) -> None:
    rt = Runtime(golden_int8, threads=1, engine="openvino")
    fused = rt.fused_session.conv_precisions()
    assert len(fused) == len(rt.bundle.layers) and _int8_convs(fused), fused
    for graph in rt.layer_sessions:
        assert _int8_convs(graph.conv_precisions()), (graph.name, graph.conv_precisions())


def test_the_int8_check_fails_on_a_graph_exported_before_the_fold(
    golden_int8: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """The same weights with the Clip left on them: OpenVINO still agrees but runs no convolution in int8."""
    rt = Runtime(golden_int8, threads=1, engine="openvino", replaced={"net.onnx": BEFORE_FOLD})
    before = rt.fused_session.conv_precisions()
    assert len(before) == 3 and not _int8_convs(before) and not set(before.values()) & set(INT8_PRECISIONS)
    x = digits[0][:200]
    assert (rt.predict(x).labels == Runtime(golden_int8, threads=1).predict(x).labels).all()


def test_openvino_runs_net_onnx_not_the_shared_graph(golden_int8: Path) -> None:
    rt = Runtime(golden_int8, engine="openvino")
    assert rt.shared_session is None and rt.fused_session is not None


def test_engine_and_provider_errors_are_one_line(golden_int8: Path) -> None:
    assert "onnxruntime or openvino" in raises_one_line(lambda: Runtime(golden_int8, engine="tensorrt"))
    msg = raises_one_line(lambda: Runtime(golden_int8, providers=["NoSuchExecutionProvider"]))
    assert "'NoSuchExecutionProvider' is not available" in msg and "CPUExecutionProvider" in msg
    assert "--engine onnxruntime" in raises_one_line(lambda: Runtime(golden_int8, engine="openvino", stream=True))
    assert check_providers(" CPUExecutionProvider ") == ["CPUExecutionProvider"] and check_providers(None) is None
    raises_one_line(check_providers, "CPUExecutionProvider,")


@pytest.mark.parametrize("command", ["eval", "predict", "bench"])
def test_providers_not_available_is_a_one_line_error_with_exit_2(golden_int8: Path, command: str) -> None:
    extra = [str(golden_int8 / "labels_patterns.npy")] if command == "predict" else []
    r = device_cli(command, str(golden_int8), *extra, "--providers", "NoSuchExecutionProvider,CPUExecutionProvider")
    line = assert_one_line_error(r, "'NoSuchExecutionProvider' is not available", code=2)
    assert "available: " in line and "CPUExecutionProvider" in line.split("available: ")[1]


def test_eval_with_openvino_and_with_providers_on_the_command_line(golden_int8: Path) -> None:
    args = ["eval", str(golden_int8), "--limit", "200", "--latency-images", "5", "--json"]
    ort_run = device_cli(*args, "--providers", "CPUExecutionProvider")
    ov_run = device_cli(*args, "--engine", "openvino")
    assert ort_run.returncode == 0 and ov_run.returncode == 0, ort_run.stderr + ov_run.stderr
    a, b = json.loads(ort_run.stdout), json.loads(ov_run.stdout)
    assert a["providers"] == ["CPUExecutionProvider"] and b["engine"] == "openvino" and b["providers"] is None
    assert a["images"] == b["images"] == 200 and abs(a["accuracy"] - b["accuracy"]) <= 0.005


def test_bench_compares_openvino_with_onnxruntime(golden_int8: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits[0][:40], digits[1][:40]
    variants = [ort_variants(golden_int8, both_ways=False)[0], openvino_variant(golden_int8)]
    r = run_bench(variants, x, y, threads=1, warmup=1, iters=5, batch=4, gemm_size=32, isolate=False)
    ort_row, ov_row = r["rows"]
    assert ov_row["name"] == "int8 OpenVINO" and ov_row["agree_with"] == ort_row["name"] == "int8 ORT"
    assert ov_row["agreement"] >= 39 / 40 and ov_row["p50_ratio"] > 0  # at most one of the 40 differs
    assert len(ov_row["conv_precisions"]) == 3 and _int8_convs(ov_row["conv_precisions"])
    assert "labels" not in ov_row and "conv_precisions" not in ort_row


def test_bench_openvino_from_the_command_line(golden_int8: Path, tmp_path: Path) -> None:
    r = device_cli(
        "bench", str(golden_int8), "--engine", "openvino", "--limit", "20", "--warmup", "1", "--iters", "3",
        "--batch", "2", "--gemm-size", "32", "--threads", "1", "--in-process",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "int8 OpenVINO" in r.stdout and "top-1 agreement" in r.stdout and "u8" in r.stdout


def test_measure_ort_reports_its_engine(golden_int8: Path, tmp_path: Path, digits: tuple) -> None:
    data = tmp_path / "images.npz"
    np.savez(data, x=digits[0][:6], y=digits[1][:6])
    kw = {"bundle": str(golden_int8), "data": str(data), "threads": 1, "warmup": 0, "iters": 2, "batch": 2}
    r = measure_ort(**kw, engine="openvino")
    assert r["engine"] == "openvino" and r["shared_graph"] is False and _int8_convs(r["conv_precisions"])
    assert measure_ort(**kw, providers=["CPUExecutionProvider"])["providers"] == ["CPUExecutionProvider"]
