"""The device walk-through runs as documented, with torch blocked, on the golden int8 bundle (the Python quick
start, which trains, is in tests/train/test_quickstart.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from ffedge.datasets import load_dataset
from tests.conftest import REPO, device_cli, python

EXAMPLES = REPO / "examples"


def _device(script: str, *args: str) -> subprocess.CompletedProcess:
    return python(
        f"import runpy\nsys.argv = [{script!r}] + sys.argv[1:]\nrunpy.run_path({script!r}, run_name='__main__')\n",
        *args,
    )


def test_pi_walkthrough_without_torch(golden_int8: Path, tmp_path: Path) -> None:
    ds = load_dataset("mnist-5k")
    files = []
    for i in range(3):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(ds.x_test[i, :, :, 0]).save(files[-1])
    r = _device(str(EXAMPLES / "pi_classify.py"), str(golden_int8), *map(str, files))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all("ms/image" in line for line in lines)
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(big)
    r = _device(str(EXAMPLES / "pi_classify.py"), str(golden_int8), str(big))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    # The walk-through's ffedge commands, device side.
    for args in (
        ["info", str(golden_int8)],
        ["predict", str(golden_int8), str(files[0]), "--json"],
        ["eval", str(golden_int8), "--dataset", "mnist-5k", "--limit", "50", "--latency-images", "5"],
        ["bench", str(golden_int8), "--limit", "50", "--iters", "3", "--warmup", "1"],
    ):
        r = device_cli(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert "torch is not installed" in r.stdout


def test_walkthrough_mentions_what_the_test_runs() -> None:
    text = (EXAMPLES / "raspberry-pi.md").read_text()
    for needle in ("ffedge info", "ffedge predict", "pi_classify.py", "ffedge eval", "ffedge bench", "--master"):
        assert needle in text
