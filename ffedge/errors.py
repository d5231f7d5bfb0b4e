"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

from typing import Any


class FFEdgeError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option).

    The CLI turns it into ``error: <message>`` and exit code 2, never a traceback.
    """


class MissingExtraError(FFEdgeError, ImportError):
    """A command needs an optional dependency group that is not installed.

    Also an ImportError, so tools that probe imports (pkgutil.walk_packages) skip it.
    """

    def __init__(self, extra: str, what: str) -> None:
        super().__init__(f"{what} needs the '{extra}' extra: pip install \"ffedge[{extra}]\"")


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
