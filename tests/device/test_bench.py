"""``ffedge bench`` on the device side: the GEMM-rate line, MAC counting, the isolated measurement and the CLI's
JSON and tables, on the golden bundles (no torch; the torch baseline is in tests/cli/test_bench.py). No timed
asserts: the figures only have to be there and be sane."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ffedge.bundle import MANIFEST, open_bundle
from ffedge.datasets import load_dataset
from ffedge.errors import FFEdgeError
from ffedge.runtime.bench import ORT_TARGET, measure_ort, ort_variants, run_bench
from ffedge.runtime.bench_worker import run_isolated
from ffedge.runtime.gemm_rate import gemm_gmacs, gemm_rates, matmul_model
from ffedge.runtime.macs import has_shared_graph, layer_macs, macs_per_image
from ffedge.runtime.session import session_options
from ffedge.runtime.timing import per_layer_ms
from tests.conftest import device_cli

STATS = {"init_ms", "first_ms", "accuracy", "p50_ms", "p90_ms", "min_ms", "max_ms", "std_ms", "images_per_s"}
STATS |= {"best_images_per_s", "batch", "peak_rss_mb", "layer_ms", "layer_ms_mean", "shared_graph", "size_bytes"}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    ds = load_dataset("mnist-5k")
    path = tmp_path_factory.mktemp("bench") / "images.npz"
    np.savez(path, x=ds.x_test[:12], y=ds.y_test[:12])
    return str(path)


def test_matmul_models_compute_the_product() -> None:
    rng = np.random.default_rng(0)
    w = rng.integers(-64, 64, size=(4, 5), dtype=np.int8)  # the weights matmul_model draws with seed 0
    a = rng.integers(0, 256, size=(3, 4), dtype=np.uint8)
    sess = ort.InferenceSession(matmul_model(3, 4, 5), session_options(1), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"a": a})
    assert out.dtype == np.int32 and (out == a.astype(np.int32) @ w.astype(np.int32)).all()
    sess = ort.InferenceSession(matmul_model(3, 4, 5, integer=False), session_options(1))
    (out,) = sess.run(None, {"a": np.eye(3, 4, dtype=np.float32)})
    assert out.shape == (3, 5) and out.dtype == np.float32


def test_gemm_rates_are_positive_and_finite() -> None:
    for integer in (True, False):
        g = gemm_gmacs(32, threads=1, integer=integer, repeats=2)
        assert math.isfinite(g) and g > 0
    r = gemm_rates(16, threads=1, repeats=1)
    assert r["sizes"] == [16, 8] and r["int8_gmacs"] == max(v["int8_gmacs"] for v in r["by_size"].values()) > 0
    assert r["fp32_gmacs"] > 0


def test_macs_of_the_golden_bundle_by_hand(golden_int8: Path) -> None:
    m = open_bundle(golden_int8, verify=False).manifest
    # layers (manifest): 2x28x28 -> 8 ch 5x5; 8x14x14 -> 32 ch 5x5; 32x7x7 -> 32 ch 3x3; 10 labels; 1 image channel
    l0, l1, l2 = 8 * 28 * 28 * 2 * 25, 32 * 14 * 14 * 8 * 25, 32 * 7 * 7 * 32 * 9
    assert [layer_macs(layer) for layer in m.layers] == [l0, l1, l2] == [313_600, 1_254_400, 451_584]
    assert macs_per_image(m) == macs_per_image(m, False) == 10 * (l0 + l1 + l2) == 20_195_840
    assert macs_per_image(m, shared_layer0=True) == 8 * 28 * 28 * 1 * 25 + 10 * (l1 + l2) == 17_216_640
    m.layers[1].kernel = None
    assert macs_per_image(m) is None


def _without_shared(bundle: Path, tmp_path: Path) -> Path:
    """The bundle as an exporter that did not write the shared graph made it (file and manifest key removed)."""
    out = Path(shutil.copytree(bundle, tmp_path / "plain"))
    m = json.loads((out / MANIFEST).read_text())
    entry = m.pop("shared")
    (out / entry["file"]).unlink()
    del m["files"][entry["file"]]
    (out / MANIFEST).write_text(json.dumps(m))
    return out


def test_a_bundle_with_a_shared_graph_is_benchmarked_both_ways(golden_int8: Path, tmp_path: Path, images: str) -> None:
    assert has_shared_graph(open_bundle(golden_int8, verify=False).manifest)
    a, b = ort_variants(golden_int8)
    assert (a.name, b.name) == ("int8 ORT", "int8 ORT per-hypothesis")
    assert "shared" not in a.kwargs and b.kwargs["shared"] is False
    plain = _without_shared(golden_int8, tmp_path)
    assert not has_shared_graph(open_bundle(plain, verify=False).manifest)
    (only,) = ort_variants(plain)
    assert only.name == "int8 ORT" and "shared" not in only.kwargs
    kw = {"bundle": str(golden_int8), "data": images, "threads": 1, "warmup": 0, "iters": 1, "batch": 1}
    assert measure_ort(**kw)["shared_graph"] is True
    assert measure_ort(**kw, shared=False)["shared_graph"] is False


def test_measure_ort_in_its_own_process(golden_int8: Path, images: str) -> None:
    kw = {"bundle": str(golden_int8), "data": images, "threads": 1, "warmup": 1, "iters": 3, "batch": 5}
    r = run_isolated(ORT_TARGET, kw)
    assert STATS <= set(r) and len(r["layer_ms"]) == 3 and r["shared_graph"] is True
    assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["max_ms"] and r["peak_rss_mb"] > 0
    assert set(measure_ort(**kw)) == set(r)  # the same function in this process


def test_run_isolated_reports_failures_on_one_line(images: str) -> None:
    with pytest.raises(FFEdgeError, match="not 'ffedge"):
        run_isolated("os:system", {})
    with pytest.raises(FFEdgeError) as e:
        run_isolated(
            ORT_TARGET, {"bundle": "/nonexistent", "data": images, "threads": 1, "warmup": 0, "iters": 1, "batch": 1}
        )
    assert "measure_ort (in its own process): " in str(e.value) and "\n" not in str(e.value)


def test_run_bench_rows_and_physical_limit(golden_int8: Path, golden_fp32: Path) -> None:
    ds = load_dataset("mnist-5k")
    variants = ort_variants(golden_fp32) + ort_variants(golden_int8)
    r = run_bench(variants, ds.x_test[:10], ds.y_test[:10], 1, 0, 2, batch=4, gemm_size=32, accuracy_base="fp32 ORT")
    names = ["fp32 ORT", "fp32 ORT per-hypothesis", "int8 ORT", "int8 ORT per-hypothesis"]
    assert [row["name"] for row in r["rows"]] == names and r["isolated"] is True
    assert r["gemm"]["int8_gmacs"] == max(r["gemm"]["int8_gmacs_runs"]) > 0 and len(r["gemm"]["fp32_gmacs_runs"]) == 2
    assert r["machine"]["onnxruntime"] == ort.__version__
    int8, per_hypothesis = r["rows"][2], r["rows"][3]
    assert int8["drop_pp"] is not None and int8["speedup"] is None  # no torch baseline here
    lim = int8["limit"]
    assert (lim["macs_per_image"], lim["macs_per_image_today"]) == (17_216_640, 20_195_840)
    assert per_hypothesis["limit"]["macs_per_image"] == per_hypothesis["limit"]["macs_per_image_today"] == 20_195_840
    assert lim["gemm"] == "int8 MatMulInteger" and lim["gemm_gmacs"] == r["gemm"]["int8_gmacs"]
    for at in ("p50", "min", "batch"):
        assert lim[at]["gmacs"] > 0 and lim[at]["pct"] == pytest.approx(100 * lim[at]["gmacs"] / lim["gemm_gmacs"])


def test_bench_cli_json_and_complete_tables(golden_int8: Path, golden_fp32: Path) -> None:
    args = ["bench", str(golden_int8), "--fp32", str(golden_fp32), "--limit", "20", "--iters", "3", "--warmup", "1"]
    args += ["--threads", "1", "--batch", "4", "--gemm-size", "32"]
    r = device_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"machine", "gemm", "rows", "batch", "isolated"} <= set(out)
    assert {"cpu", "gemm_flags", "onnxruntime", "numpy"} <= set(out["machine"])
    rows = {row["name"]: row for row in out["rows"]}
    assert set(rows) == {"fp32 ORT", "int8 ORT", "int8 ORT per-hypothesis"}
    assert all(
        STATS | {"limit", "drop_pp", "size_ratio", "speedup", "speedup_min"} <= set(row) for row in rows.values()
    )
    r = device_cli(*args)  # piped: no column may be cut
    assert r.returncode == 0, r.stderr
    for header in ("peak RSS MB", "std ms", "img/s at 4", "% at 4 today", "layer 2 ms", "MatMulInteger"):
        assert header in r.stdout, header
    assert "…" not in r.stdout
    assert 'pip install ".[train]"' in r.stdout  # printed as it is, not read as rich markup


def test_per_layer_ms_is_the_median_and_the_mean() -> None:
    sums = [0.0, 0.0]

    def step(i: int) -> None:  # layer 0: 1 ms, once 100 ms (a burst of load elsewhere); layer 1: 2 ms
        sums[0] += 0.1 if i == 0 else 0.001
        sums[1] += 0.002

    r = per_layer_ms(step, lambda: sums, 5, 5)
    assert r["layer_ms"] == pytest.approx([1.0, 2.0]) and r["layer_ms_mean"] == pytest.approx([104 / 5, 2.0])
