"""The CLI's rich consoles (errors, JSON, messages on stderr): never read as markup, never cut in a pipe.

A command's result lines and tables are plain ``print`` (:func:`ffedge.cli.app.say`, :mod:`ffedge.cli.table`);
these consoles carry the rest. Values printed (paths, class names, a message naming ``ffedge[train]``) may hold
square brackets, which rich would otherwise take for markup and drop; styles are given as rich ``Text`` instead.
When stdout (stderr) is not a terminal, lines are printed at their full width rather than wrapped at 80 columns
(nor at $COLUMNS, which some shells and tools export with the terminal's width even when the output goes to a file).
"""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions

# Width when the output is not a terminal: nothing is wrapped.
PIPE_WIDTH = 100_000


class _CLIConsole(Console):
    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) without markup, emoji codes or highlighting; full width off a terminal."""
    return _CLIConsole(stderr=stderr, markup=False, emoji=False, highlight=False)
