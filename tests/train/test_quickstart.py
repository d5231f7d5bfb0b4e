"""The Python quick start runs as documented: it trains, exports and predicts (the device walk-through is in
tests/device/test_examples.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

EXAMPLES = REPO / "examples"


def test_quickstart_trains_exports_and_predicts(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("torch")
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--epochs", "1", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "int8 bundle" in r.stdout and "parity agreement" in r.stdout
    assert (tmp_path / "run-int8" / "manifest.json").is_file()
