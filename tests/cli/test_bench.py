"""`ffedge bench`: the int8 bundle against the fp32 one and the torch fp32 eager baseline of its training run
(needs torch: the run is trained here; the device-side CLI commands are tested in tests/device)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli


def test_bench_cli_compares_three_variants(int8_bundle: Path) -> None:
    r = cli("bench", str(int8_bundle), "--limit", "100", "--iters", "5", "--warmup", "1", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)["rows"]}
    assert set(rows) == {"fp32 ORT", "int8 ORT", "torch fp32 eager"}
    assert rows["fp32 ORT"]["drop_pp"] == 0.0 and rows["torch fp32 eager"]["speedup"] == 1.0
    assert rows["int8 ORT"]["size_ratio"] < 0.5
    assert all(len(row["layer_ms"]) == 3 for row in rows.values())
