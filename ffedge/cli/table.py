"""The CLI's tables as plain text: columns aligned, nothing cut or wrapped, the same on a terminal and in a pipe.

No rich: ``ffedge info`` prints a table and is paid per call on a small board, and rich's table costs about
20 ms of imports there. A column whose cells are all numbers (``12``, ``0.51``, ``+1.2``, ``95.70%``, ``-``) is
right-aligned, every other column left-aligned.
"""

from __future__ import annotations

import re

from ffedge.cli.app import say

_NUMBER = re.compile(r"[+-]?(\d[\d,]*(\.\d*)?|\.\d+)(e[+-]?\d+)?%?|-")
GAP = "  "


class Table:
    """Rows of text under a header, printed by :meth:`print` (one line per row, through :func:`ffedge.cli.app.say`)."""

    def __init__(self, *columns: str, title: str | None = None) -> None:
        self.columns = [str(c) for c in columns]
        self.title = title
        self.rows: list[list[str]] = []

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"a row of {len(cells)} cells in a table of {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def lines(self) -> list[str]:
        """The title (if any), the header, a rule of dashes, then the rows."""
        cols = list(zip(self.columns, *self.rows))
        widths = [max(len(c) for c in col) for col in cols]
        right = [bool(self.rows) and all(_NUMBER.fullmatch(c) for c in col[1:]) for col in cols]

        def line(cells: list[str]) -> str:
            parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
            return GAP.join(parts).rstrip()

        out = [self.title] if self.title else []
        return out + [line(self.columns), GAP.join("-" * w for w in widths)] + [line(r) for r in self.rows]

    def print(self) -> None:
        for text in self.lines():
            say(text)
