"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

from typing import Any


# The CLI's exit codes, one convention for every command (``ffedge --help`` and README.md state it).
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and a check failed (checksums, parity, agreement), or an unexpected failure
EXIT_USAGE = 2  # usage or bad input: an unknown option, a bad value, a file that is missing or not what it must be
EXIT_SIGINT = 130  # interrupted by Ctrl-C (128 + the signal number, as a shell reports it)
EXIT_SIGTERM = 143  # terminated by SIGTERM


class FFEdgeError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option).

    The CLI turns it into ``error: <message>`` and exit code :data:`EXIT_USAGE` (2), never a traceback.
    """

    exit_code = EXIT_USAGE


class CheckFailed(FFEdgeError):
    """The input was fine and the work was done, but what it checks failed (a parity or agreement threshold,
    a checksum): the CLI prints ``error: <message>`` and exits :data:`EXIT_FAILED` (1)."""

    exit_code = EXIT_FAILED


class MissingExtraError(FFEdgeError, ImportError):
    """A command needs an optional dependency group that is not installed.

    Also an ImportError, so tools that probe imports (pkgutil.walk_packages) skip it.
    """

    def __init__(self, extra: str, what: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: {install_hint(extra)}")


def install_hint(extra: str) -> str:
    """How to install an extra while ffedge is not on PyPI: from its source folder (or its wheel, the same way)."""
    return f'pip install ".[{extra}]" in the ffedge source folder (or "WHEEL[{extra}]" for its wheel file)'


def quoted(value: Any, limit: int = 120) -> str:
    """An untrusted value (a manifest string, a file name) made safe for a one-line message.

    ``repr`` escapes newlines and control characters, so a crafted string cannot
    forge extra lines (a fake traceback); long values are cut.
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(message: str) -> str:
    """``message`` with every line break escaped: what the CLI prints is always one line."""
    return message.replace("\r", "\\r").replace("\n", "\\n")
