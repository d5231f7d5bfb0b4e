"""The device side needs no training extra: every module of ffedge outside ffedge.train imports with torch blocked.

Each module is imported in its own interpreter where the training-only packages are
blocked as the other device-side tests block them (``sys.modules[name] = None``, so
``import torch`` raises ImportError), so a module that imports torch, brevitas or onnx,
directly or through another ffedge module, fails here by name.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ffedge

REPO = Path(__file__).resolve().parents[1]
TRAIN = "ffedge.train"
# The [train] extra, blocked as in tests/test_runtime.py.
TRAIN_ONLY = ("torch", "brevitas", "onnx", "onnxscript", "onnxoptimizer")
BLOCK = "import sys\nfor m in %r: sys.modules[m] = None\n" % (TRAIN_ONLY,)


def device_modules() -> list[str]:
    """``ffedge`` and every module and package under it but ``ffedge.train``, which is skipped unimported.

    The top level is listed with ``pkgutil.iter_modules``; each device package is walked with
    ``pkgutil.walk_packages`` (which imports the packages it descends into: only device ones).
    """
    names = ["ffedge"]
    for info in pkgutil.iter_modules(ffedge.__path__, "ffedge."):
        if info.name == TRAIN:
            continue
        names.append(info.name)
        if info.ispkg:
            package = importlib.import_module(info.name)
            names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{info.name}.")]
    return names


DEVICE_MODULES = device_modules()


def _import_blocked(module: str) -> subprocess.CompletedProcess:
    code = BLOCK + f"import importlib\nimportlib.import_module({module!r})\n"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_walk_finds_every_concern_and_skips_training() -> None:
    for name in ("ffedge.errors", "ffedge.cli.inference_cmds", "ffedge.datasets.files", "ffedge.labels.fourier",
                 "ffedge.labels.draw", "ffedge.bundle.names", "ffedge.bundle.update", "ffedge.runtime.session",
                 "ffedge.runtime.preprocess", "ffedge.finetuning.loop", "ffedge.finetuning.numerics"):
        assert name in DEVICE_MODULES, name
    assert not [m for m in DEVICE_MODULES if m == TRAIN or m.startswith(f"{TRAIN}.")]


@pytest.mark.parametrize("module", DEVICE_MODULES)
def test_device_module_imports_without_torch(module: str) -> None:
    r = _import_blocked(module)
    assert r.returncode == 0, f"{module} needs a training-only package ({', '.join(TRAIN_ONLY)}):\n{r.stderr}"


@pytest.mark.parametrize("module", ["torch", "brevitas", "onnx", "ffedge.train.export"])
def test_the_block_catches_training_imports(module: str) -> None:
    """The check above fails for a module that imports torch (or the other blocked packages), installed or not."""
    r = _import_blocked(module)
    assert r.returncode != 0 and "Error" in r.stderr
