"""The device side needs no training extra: every module of ffedge outside ffedge.train imports with torch blocked.

Each module is imported in its own interpreter where the training-only packages are
blocked as the other device-side tests block them (``tests.conftest.block``: ``sys.modules[name] = None``,
so ``import torch`` raises ImportError), so a module that imports torch, brevitas or onnx,
directly or through another ffedge module, fails here by name.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess

import pytest

import ffedge
from tests.conftest import REPO, TRAIN_ONLY, python

TRAIN = "ffedge.train"


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
    return python(f"import importlib\nimportlib.import_module({module!r})\n", cwd=REPO, timeout=120)


def test_the_walk_finds_every_concern_and_skips_training() -> None:
    for name in (
        "ffedge.errors",
        "ffedge.cli.inference_cmds",
        "ffedge.untrusted",
        "ffedge.labels.fourier",
        "ffedge.labels.draw",
        "ffedge.bundle.names",
        "ffedge.bundle.update",
        "ffedge.runtime.session",
        "ffedge.runtime.preprocess",
        "ffedge.finetuning.loop",
        "ffedge.finetuning.numerics",
    ):
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
