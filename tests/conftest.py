"""What every wing of the tests shares: running ``ffedge`` as a user does, with the training extra blocked or not,
checking its one-line errors, a small slice of the embedded digits, and (with torch) a tiny trained run.

The suite mirrors the wings of ffedge (see tests/README.md):

- ``tests/device/``: the device side (runtime, bundle, manifest, labels, datasets, fine-tuning, ...). It runs
  against the committed golden bundles in ``tests/golden/`` and never trains; it passes on a device-only
  install (``pip install -e ".[test]"``, no torch).
- ``tests/train/``: training, export and everything else that needs torch and Brevitas.
- ``tests/cli/``: the command line of the training side (train, export, report, bench with its torch baseline).

This module imports no training-only package: ``tests/device`` loads it on a device-only install. Helpers are
imported from it as ``from tests.conftest import cli, assert_one_line_error, ...``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pytest

from ffedge.datasets import load_dataset
from ffedge.errors import FFEdgeError

REPO = Path(__file__).resolve().parents[1]
TINY_EXPORT_LAYERS = "16x5p,64x5p,64x3"

# The [train] extra: what the device side must never need. Importing any of these is blocked in the
# device-side subprocess tests (see block()).
TRAIN_ONLY = ("torch", "brevitas", "onnx", "onnxscript", "onnxoptimizer", "qonnx")


def installed(*modules: str) -> bool:
    """Whether every one of ``modules`` can be imported (looked up, not imported: torch is never loaded here)."""
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_train = pytest.mark.skipif(
    not installed("torch", "brevitas"), reason='needs the [train] extra (pip install "ffedge[train]")'
)


# ---------------------------------------------------------------- processes with packages blocked


def block(modules: Iterable[str] = TRAIN_ONLY) -> str:
    """Python source that makes ``import M`` fail with ImportError for each of ``modules``, installed or not
    (``sys.modules[M] = None``), and imports ``sys``: the prefix of every "torch blocked" snippet."""
    return "import sys\nfor _m in %r: sys.modules[_m] = None\n" % (tuple(modules),)


BLOCK = block()  # the training extra blocked


def python(
    code: str, *args: str, blocked: Iterable[str] = TRAIN_ONLY, timeout: float = 300, **kwargs
) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """Run ``python -c CODE ARGS`` in a fresh interpreter where ``blocked`` cannot be imported, capturing its output."""
    return subprocess.run(
        [sys.executable, "-c", block(blocked) + code, *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


CLI_MAIN = "from ffedge.cli import main\nsys.argv = ['ffedge'] + sys.argv[1:]\nmain()\n"


def cli(*args: str, timeout: float = 300, torch_free: bool = False, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """Run ``ffedge ARGS`` as a user does (a fresh process), capturing its output; ``torch_free``: as on a device,
    with the training extra (:data:`TRAIN_ONLY`) blocked."""
    if torch_free:
        return python(CLI_MAIN, *args, timeout=timeout, **kwargs)
    return subprocess.run(
        [sys.executable, "-m", "ffedge.cli", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def device_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """``ffedge ARGS`` as on a device: :func:`cli` with the training extra blocked."""
    return cli(*args, timeout=timeout, torch_free=True, **kwargs)


def cli_inprocess(*args: str) -> subprocess.CompletedProcess:
    """Run ``ffedge ARGS`` in this process through the CLI's own entry point (``run_app``): the same code as
    :func:`cli` without a process start, for tables of cases. Returns what :func:`cli` returns."""
    from ffedge.cli import app, run_app

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_app(app, list(args))
    return subprocess.CompletedProcess(["ffedge", *args], rc, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------- one-line errors


def assert_one_line_error(
    r: subprocess.CompletedProcess, needle: str = "", code: int | None = 2, prefix: str = "error:"
) -> str:
    """The process failed with exit ``code`` (None: any non-zero code) and printed exactly one line on stderr,
    starting with ``prefix`` ("": any) and containing ``needle``, and no traceback. Returns that line."""
    if code is None:
        assert r.returncode != 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    else:
        assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and err.count("\n") == 0, r.stderr
    assert err.startswith(prefix) and needle in err, r.stderr
    return err


def raises_one_line(fn: Callable, *args) -> str:  # type: ignore[no-untyped-def]
    """``fn(*args)`` raises FFEdgeError with a non-empty one-line message; returns the message (the library's
    counterpart of :func:`assert_one_line_error`)."""
    with pytest.raises(FFEdgeError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def bundle_without(src: Path, key: str, dst: Path) -> Path:
    """A copy of the bundle ``src`` at ``dst`` without its optional graph ``key`` (``topk``, ``head_net``): the entry,
    the file and its checksum gone, as in a bundle made before the graph existed."""
    import json
    import shutil

    from ffedge.bundle import MANIFEST
    from ffedge.bundle.manifest import write_manifest

    b = Path(shutil.copytree(src, dst))
    m = json.loads((b / MANIFEST).read_text())
    entry = m.pop(key)
    (b / entry["file"]).unlink()
    del m["files"][entry["file"]]
    write_manifest(b / MANIFEST, m)
    return b


# ---------------------------------------------------------------- data and (with torch) a trained run


def mnist_5k_slice(path: Path, n_train: int, n_test: int) -> str:
    """The first ``n_train`` / ``n_test`` digits of the embedded mnist-5k written to ``path``: its ``npz:`` spec."""
    ds = load_dataset("mnist-5k")
    np.savez(
        path,
        x_train=ds.x_train[:n_train, :, :, 0],
        y_train=ds.y_train[:n_train],
        x_test=ds.x_test[:n_test, :, :, 0],
        y_test=ds.y_test[:n_test],
    )
    return f"npz:{path}"


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 600/200 slice of the embedded mnist-5k as an npz dataset."""
    return mnist_5k_slice(tmp_path_factory.mktemp("data") / "small.npz", 600, 200)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, small_npz: str) -> Path:
    """A small int8 QAT run (4 epochs on 600 digits): well above chance, trained in seconds (training side only:
    tests/device uses the golden bundles instead)."""
    pytest.importorskip("torch")
    pytest.importorskip("brevitas")
    from ffedge.train import TrainConfig, train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(
        dataset=small_npz,
        layers=TINY_EXPORT_LAYERS,
        epochs=4,
        batch_size=32,
        head_epochs=20,
        eval_samples=100,
        threads=1,
    )
    train_run(cfg, out)
    return out


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """``tiny_run`` exported to int8 (parity-checked)."""
    from ffedge.train.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-int8"
    export_bundle(tiny_run, out, precision="int8", verify_samples=200, min_agreement=0.95)
    return out


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """``tiny_run`` exported to fp32 (parity-checked)."""
    from ffedge.train.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-fp32"
    export_bundle(tiny_run, out, precision="fp32", verify_samples=200, min_agreement=0.95)
    return out


@pytest.fixture(scope="session")
def master_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """``tiny_run`` exported to int8 with its float master weights and replay examples (no parity check: fast)."""
    from ffedge.train.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-master"
    export_bundle(tiny_run, out, master=True, verify_samples=0)
    return out
