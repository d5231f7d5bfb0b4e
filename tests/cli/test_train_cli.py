"""`ffedge train` from the command line: bad input is one line and leaves no run folder, an existing folder needs
--resume or --force, a real (tiny) run end to end, and without torch the command names the extra to install."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, cli, device_cli, needs_train

TINY = "8x5p,16x3p,16x3"


@needs_train
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "nosuch"], "nosuch"),
        (["--labels", "nosuch"], "nosuch"),
        (["--bits", "0"], "--bits"),
        (["--layers", "16x4"], "odd kernel"),
        (["--dataset", "npz:/nonexistent.npz"], "nonexistent"),
        (["--predict-layers", "9"], "layer 9"),
        (["--head-layers", "0,x"], "--head-layers takes comma-separated integers"),
        (["--dataset", "mnist", "--data-dir", ".", "--no-download"], "and downloading is off"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_run_dir(tmp_path: Path, args: list[str], needle: str) -> None:
    assert_one_line_error(cli("train", "--out", str(tmp_path / "run"), *args, cwd=tmp_path), needle)
    assert not (tmp_path / "run").exists()


@needs_train
def test_existing_out_dir_needs_resume_or_force(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("train", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    r = cli("train", "--out", str(out), "--resume", cwd=tmp_path)
    assert r.returncode == 2 and "no run to resume" in r.stderr


@needs_train
def test_cli_train_end_to_end(tmp_path: Path, small_npz: str) -> None:
    from ffedge.train.run_files import METRICS

    r = cli(
        "train",
        "--dataset",
        small_npz,
        "--layers",
        TINY,
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--eval-samples",
        "50",
        "--head-epochs",
        "2",
        "--threads",
        "1",
        "--out",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "held-out acc" in r.stdout and "epoch   1/1" in r.stdout
    assert json.loads((tmp_path / "run" / METRICS).read_text())["epochs"] == 1
    # --json: stdout is the run folder and its metrics alone; the log lines go to stderr.
    r = cli("train", "--resume", "--epochs", "2", "--out", str(tmp_path / "run"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["run"] == str(tmp_path / "run") and res["metrics"] == json.loads(
        (tmp_path / "run" / METRICS).read_text()
    )
    assert res["metrics"]["epochs"] == 2 and "epoch   2/2" in r.stderr


def test_training_without_torch_names_the_extra(tmp_path: Path) -> None:
    r = device_cli("train", "--out", "x", cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and 'pip install ".[train]"' in r.stderr and "Traceback" not in r.stderr
