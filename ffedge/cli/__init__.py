"""The ``ffedge`` command line: thin wrappers over library functions.

Each command group lives in its own module and registers itself on ``app``.
Importing this package is cheap; the command modules load in :func:`main` (or on
first access to ``app``), inside the handler that turns Ctrl-C into one line.
"""

from __future__ import annotations

import sys
from typing import Any

# Command modules register themselves on import (keep this list sorted).
COMMAND_MODULES = ("bench_cmd", "export_cmd", "finetune_cmd", "labels_cmd", "report_cmd", "rollback_cmd", "run_cmds", "train_cmd")


def load_app() -> Any:
    """The typer application with every command registered."""
    import importlib

    from ffedge.cli.app import app

    for name in COMMAND_MODULES:
        importlib.import_module(f"ffedge.cli.{name}")
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return load_app()
    if name == "run_app":
        from ffedge.cli.app import run_app

        return run_app
    raise AttributeError(name)


def main() -> None:
    """Console-script entry point."""
    try:
        application = load_app()
        from ffedge.cli.app import run_app
    except KeyboardInterrupt:  # Ctrl-C while the command modules were still loading
        print("interrupted while starting: nothing was done", file=sys.stderr)
        sys.exit(130)
    sys.exit(run_app(application))
