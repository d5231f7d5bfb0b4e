"""`ffedge bench`: the int8 bundle against the fp32 one and the torch fp32 eager baseline of its training run
(needs torch: the run is trained here; the device side of bench is tested in tests/device/test_bench.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli


def test_bench_cli_compares_three_variants(int8_bundle: Path) -> None:
    r = cli(
        "bench", str(int8_bundle), "--limit", "100", "--iters", "5", "--warmup", "1", "--threads", "1",
        "--batch", "8", "--gemm-size", "64", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = {row["name"]: row for row in out["rows"]}
    assert set(rows) == {"fp32 ORT", "int8 ORT", "int8 ORT per-hypothesis", "torch fp32 eager"} and out["isolated"]
    assert rows["int8 ORT"]["limit"]["macs_per_image"] < rows["int8 ORT per-hypothesis"]["limit"]["macs_per_image"]
    assert rows["fp32 ORT"]["drop_pp"] == 0.0 and rows["torch fp32 eager"]["speedup"] == 1.0
    assert rows["int8 ORT"]["size_ratio"] < 0.5
    assert all(len(row["layer_ms"]) == 3 for row in rows.values())
    torch_row = rows["torch fp32 eager"]
    assert torch_row["init_ms"] > 0 and torch_row["min_ms"] <= torch_row["p50_ms"] and torch_row["peak_rss_mb"] > 0
    assert torch_row["limit"]["gemm"] == "fp32 MatMul" and torch_row["limit"]["min"]["pct"] > 0
    assert rows["int8 ORT"]["limit"]["gemm"] == "int8 MatMulInteger" and rows["int8 ORT"]["speedup_min"] > 0
