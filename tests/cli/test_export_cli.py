"""`ffedge export` and `ffedge verify` from the command line, on a real (tiny) trained run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import cli


def test_export_and_verify_cli(tmp_path: Path, tiny_run: Path) -> None:
    out = tmp_path / "cli-bundle"
    r = cli(
        "export",
        str(tiny_run),
        "--int8",
        "--out",
        str(out),
        "--verify-samples",
        "100",
        "--min-agreement",
        "0.9",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "QLinearConv" in r.stdout and "agreement" in r.stdout
    r = cli("verify", str(out), str(tiny_run), "--samples", "100", "--json", "--min-agreement", "0.9", timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["samples"] == 100
    r = cli("export", str(tiny_run), "--int8", "--fp32", "--out", str(tmp_path / "x"), timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
