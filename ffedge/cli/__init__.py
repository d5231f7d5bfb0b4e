"""The ``ffedge`` command line: thin wrappers over library functions.

Each command lives in a module of this package that registers it on ``app`` with ``@app.command(NAME)``;
:data:`ffedge.cli.app.COMMANDS` says which module, so that a call imports only the command it runs.
"""

from __future__ import annotations

import sys

from ffedge.cli.app import COMMANDS, app, command, run_app


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_app(app))
