"""The examples run as documented: the Python quick start, and the device walk-through with torch blocked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ffedge.datasets import load_dataset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BLOCK = "import runpy, sys\nfor m in ('torch', 'brevitas', 'onnx'): sys.modules[m] = None\n"


def test_quickstart_trains_exports_and_predicts(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), "--epochs", "1", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "int8 bundle" in r.stdout and "parity agreement" in r.stdout
    assert (tmp_path / "run-int8" / "manifest.json").is_file()


def _device(script: str, *args: str) -> subprocess.CompletedProcess:
    code = BLOCK + f"sys.argv = [{script!r}] + sys.argv[1:]\nrunpy.run_path({script!r}, run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_pi_walkthrough_without_torch(int8_bundle: Path, tmp_path: Path) -> None:
    ds = load_dataset("mnist-5k")
    files = []
    for i in range(3):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(ds.x_test[i, :, :, 0]).save(files[-1])
    r = _device(str(EXAMPLES / "pi_classify.py"), str(int8_bundle), *map(str, files))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all("ms/image" in line for line in lines)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(big)
    r = _device(str(EXAMPLES / "pi_classify.py"), str(int8_bundle), str(big))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    # The walk-through's ffedge commands, device side.
    cli = BLOCK + "from ffedge.cli import main\nsys.argv = ['ffedge'] + sys.argv[1:]\nmain()\n"
    for args in (["info", str(int8_bundle)], ["predict", str(int8_bundle), str(files[0]), "--json"],
                 ["eval", str(int8_bundle), "--dataset", "mnist-5k", "--limit", "50", "--latency-images", "5"],
                 ["bench", str(int8_bundle), "--limit", "50", "--iters", "3", "--warmup", "1"]):
        r = subprocess.run([sys.executable, "-c", cli, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (args, r.stderr)
    assert "torch is not installed" in r.stdout


def test_walkthrough_mentions_what_the_test_runs() -> None:
    text = (EXAMPLES / "raspberry-pi.md").read_text()
    for needle in ("ffedge info", "ffedge predict", "pi_classify.py", "ffedge eval", "ffedge bench", "--master"):
        assert needle in text
