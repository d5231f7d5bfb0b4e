"""Shared fixtures: a small slice of the embedded digits, and (with torch) a tiny trained run and its bundles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffedge.datasets import load_dataset

TINY_EXPORT_LAYERS = "16x5p,64x5p,64x3"


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 600/200 slice of the embedded mnist-5k as an npz dataset."""
    ds = load_dataset("mnist-5k")
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x_train=ds.x_train[:600, :, :, 0], y_train=ds.y_train[:600], x_test=ds.x_test[:200, :, :, 0], y_test=ds.y_test[:200])
    return f"npz:{path}"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, small_npz: str) -> Path:
    """A small int8 QAT run (4 epochs on 600 digits): well above chance, trained in seconds."""
    pytest.importorskip("torch")
    pytest.importorskip("brevitas")
    from ffedge.train import TrainConfig, train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(dataset=small_npz, layers=TINY_EXPORT_LAYERS, epochs=4, batch_size=32, head_epochs=20, eval_samples=100, threads=1)
    train_run(cfg, out)
    return out


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    from ffedge.train.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-int8"
    export_bundle(tiny_run, out, precision="int8", verify_samples=200, min_agreement=0.95)
    return out


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    from ffedge.train.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-fp32"
    export_bundle(tiny_run, out, precision="fp32", verify_samples=200, min_agreement=0.95)
    return out


def cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """Run ``ffedge ARGS`` as a user does (a fresh process), capturing its output."""
    return subprocess.run([sys.executable, "-m", "ffedge.cli", *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_one_line_error(r: subprocess.CompletedProcess, needle: str = "", code: int = 2) -> str:
    """The process failed with ``code`` and printed exactly one ``error:`` line containing ``needle``."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and err.count("\n") == 0, r.stderr
    assert err.startswith("error:") and needle in err, r.stderr
    return err


def cli_inprocess(*args: str) -> subprocess.CompletedProcess:
    """Run ``ffedge ARGS`` in this process through the CLI's own entry point (``run_app``): the same code as
    :func:`cli` without a process start, for tables of cases. Returns what :func:`cli` returns."""
    import contextlib
    import io

    from ffedge.cli import app, run_app

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_app(app, list(args))
    return subprocess.CompletedProcess(["ffedge", *args], rc, out.getvalue(), err.getvalue())
