"""The ``ffedge`` command line: thin wrappers over library functions.

Each command group lives in its own module and registers itself on ``app``.
"""

from __future__ import annotations

import sys

from ffedge.cli.app import app, run_app

# Command modules register themselves on import, in the order ``ffedge --help`` lists their commands.
from ffedge.cli import (
    bench_cmd,
    export_cmd,
    finetune_cmd,
    labels_cmd,
    report_cmd,
    rollback_cmd,
    inference_cmds,
    train_cmd,
)  # noqa: F401,E402


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_app(app))
