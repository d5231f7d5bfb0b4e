"""What `ffedge predict` of one image loads: nothing its memory budget (80 MB peak RSS, measured by
benchmarks/predict_memory.py) cannot afford and the command does not need: OpenSSL, pydantic, the trainer."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np

from tests.conftest import CLI_MAIN, python


def _modules_at_exit(out: Path) -> str:
    """Python source that writes the names of the loaded modules to ``out`` (JSON) as the process ends."""
    return f"import atexit, json\natexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"


def _one_image(golden_int8: Path, tmp_path: Path) -> Path:
    shape = json.loads((golden_int8 / "manifest.json").read_text())["input"]["shape"]
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(shape[-3:], np.uint8))
    return x


def _typer_uses_pydantic() -> bool:
    """typer >= 0.29 converts every CLI option with pydantic (which loads OpenSSL too); pyproject pins typer < 0.29."""
    major, minor = (int(v) for v in version("typer").split(".")[:2])
    return (major, minor) >= (0, 29)


def test_predicting_loads_no_openssl(golden_int8: Path, tmp_path: Path) -> None:
    """The bundle's sha256 checks use CPython's builtin sha256, not hashlib's OpenSSL (~3.5 MB)."""
    x, out = _one_image(golden_int8, tmp_path), tmp_path / "modules.json"
    code = "from ffedge.runtime import Runtime\nfrom ffedge.runtime.inputs import read_inputs\n"
    code += f"rt = Runtime({str(golden_int8)!r})\nrt.predict(read_inputs([{str(x)!r}], rt.bundle.input_shape)[0])\n"
    r = python(_modules_at_exit(out) + code)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(out.read_text()))
    assert "_hashlib" not in loaded and "hashlib" not in loaded


def test_ffedge_predict_loads_no_pydantic_nor_openssl(golden_int8: Path, tmp_path: Path) -> None:
    x, out = _one_image(golden_int8, tmp_path), tmp_path / "modules.json"
    r = python(_modules_at_exit(out) + CLI_MAIN, "predict", str(golden_int8), str(x), "--json")
    assert r.returncode == 0, r.stderr
    unwanted = {"ffedge.train"}
    if not _typer_uses_pydantic():
        unwanted |= {"pydantic", "_hashlib"}
    loaded = set(json.loads(out.read_text()))
    assert not loaded & unwanted, sorted(loaded & unwanted)
