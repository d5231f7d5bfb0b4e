"""`ffedge export` and `ffedge verify` from the command line, on a real (tiny) trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffedge.errors import EXIT_FAILED
from tests.conftest import CLI_MAIN, assert_one_line_error, cli, cli_inprocess, python


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


def test_export_qonnx_and_verify_it(tmp_path: Path, tiny_run: Path, small_npz: str) -> None:
    """--format qonnx writes the QONNX file set and prints the executor check; verify repeats the check; bad uses
    are one error line (exit 2) and write nothing."""
    pytest.importorskip("qonnx")
    out = tmp_path / "q"
    r = cli("export", str(tiny_run), "--format", "qonnx", "--out", str(out), "--verify-samples", "20", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "QONNX with 4 Quant nodes" in r.stdout and "qonnx check on 20 held-out images" in r.stdout
    assert "agreement" in r.stdout and f"wrote {out} (qonnx)" in r.stdout
    r = cli_inprocess("verify", str(out), str(tiny_run), "--samples", "20", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["samples"] == 20 and report["executor"].startswith("qonnx") and report["agreement"] >= 0.95
    # the device side says what the folder is instead of failing on a missing key
    assert_one_line_error(cli_inprocess("info", str(out)), "QONNX file set")

    bad = tmp_path / "bad"
    assert_one_line_error(cli_inprocess("export", str(tiny_run), "--format", "finn", "--out", str(bad)), "--format")
    for flag in ("--fp32", "--master"):
        r = cli_inprocess("export", str(tiny_run), "--format", "qonnx", flag, "--out", str(bad))
        assert_one_line_error(r, flag)
    assert_one_line_error(
        cli_inprocess("export", str(tmp_path), "--format", "qonnx", "--out", str(bad)), "training run"
    )
    # without the qonnx package (the [train] extra leaves it out on Python 3.10): what to install, before any work
    r = python(CLI_MAIN, "export", str(tiny_run), "--format", "qonnx", "--out", str(bad), blocked=("qonnx",))
    assert_one_line_error(r, "pip install qonnx")
    float_run = tmp_path / "float-run"
    from ffedge.train import TrainConfig, train_run

    train_run(
        TrainConfig(dataset=small_npz, layers="8x5p", epochs=1, quant=False, head_epochs=1, eval_samples=20, threads=1),
        float_run,
    )
    r = cli_inprocess("export", str(float_run), "--format", "qonnx", "--out", str(bad))
    assert_one_line_error(r, "QONNX export needs a quantized run")
    assert not bad.exists()


def test_export_json_and_a_failed_parity_check_exits_1(
    tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "b"
    r = cli("export", str(tiny_run), "--out", str(out), "--verify-samples", "50", "--min-agreement", "0.9", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["bundle"] == str(out) and res["precision"] == "int8" and res["manifest"]["parity"]["samples"] == 50
    assert json.loads((out / "manifest.json").read_text())["parity"] == res["manifest"]["parity"]

    import ffedge.train.parity as parity

    real = parity.parity_report

    def broken(*a, **kw):  # type: ignore[no-untyped-def]
        report = real(*a, **kw)
        report["agreement"] = 0.5  # what a broken export (e.g. saturating kernels) looks like
        return report

    monkeypatch.setattr(parity, "parity_report", broken)
    r = cli_inprocess("verify", str(out), str(tiny_run), "--samples", "20", "--json")
    assert_one_line_error(r, "agreement 50.00% is below --min-agreement 99.00%", code=EXIT_FAILED)
    assert json.loads(r.stdout)["agreement"] == 0.5
    r = cli_inprocess("export", str(tiny_run), "--out", str(tmp_path / "bad"), "--verify-samples", "20")
    assert_one_line_error(r, "parity check failed", code=EXIT_FAILED)
    assert not (tmp_path / "bad").exists()
