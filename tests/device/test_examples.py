"""The device walk-through runs as documented, with torch blocked, on the golden int8 bundle (the Python quick
start, which trains, is in tests/train/test_quickstart.py)."""

from __future__ import annotations

import re
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


def test_no_install_command_asks_pypi_for_ffedge() -> None:
    """ffedge is not published on PyPI: a documented `pip install ffedge` (or `"ffedge[train]"`) fails for the user
    (or, were the name ever taken, installs someone else's package). Install commands name the repository or a
    wheel; update this test when the package is published."""
    docs = [REPO / "README.md", REPO / "export" / "README.md", *sorted((REPO / "examples").glob("*.md"))]
    pypi = re.compile(r"pip install +[\"']?ffedge(\[[a-z,]+\])?[\"']?(\s|$)")
    offending = [
        f"{doc.relative_to(REPO)}: {line.strip()}"
        for doc in docs
        for line in doc.read_text().splitlines()
        if line.startswith("    ") and pypi.search(line)
    ]
    assert not offending, offending


def test_walkthrough_gives_the_aarch64_pip_command_and_its_evidence() -> None:
    text = (EXAMPLES / "raspberry-pi.md").read_text()
    for needle in (
        "--platform manylinux_2_28_aarch64",
        "onnxruntime>=1.17",
        "1.23.2",
        "32-bit",
        "scripts/check-aarch64",
    ):
        assert needle in text, needle
    assert (REPO / "scripts" / "check-aarch64").is_file()
