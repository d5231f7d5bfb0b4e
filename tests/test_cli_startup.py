"""The CLI's start-up: Ctrl-C while the command modules load is one line, never a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("delay", [0.15, 0.3, 0.45, 0.6])
def test_ctrl_c_during_start_up_is_one_line(delay: float, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-m", "ffedge.cli", "info", str(tmp_path / "none")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    if proc.returncode == 130:  # interrupted: during start-up or in the command
        assert err.strip().count("\n") == 0 and "interrupted" in err, err
    elif proc.returncode == 2:  # it finished first: the command's own one-line error
        assert err.startswith("error:") and "no such bundle folder" in err, err
    else:  # the signal came before Python's own handler was installed
        assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
