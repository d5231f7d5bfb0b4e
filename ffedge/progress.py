"""Progress reporting shared by long-running commands (training, fine-tuning, evaluation).

Library code reports through a :class:`Reporter`; the CLI passes a rich one, the
Python API a quiet one by default.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Protocol


class Reporter(Protocol):
    def log(self, message: str) -> None: ...

    def task(self, description: str, total: int) -> contextlib.AbstractContextManager["Advance"]: ...


class Advance(Protocol):
    def __call__(self, n: int = 1, **fields: object) -> None: ...


class QuietReporter:
    """Reports nothing."""

    def log(self, message: str) -> None:
        pass

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n=1, **fields: None


class RichReporter:
    """Rich progress bars on stderr, log lines on stdout (``log_to_stderr``: on stderr too, when stdout holds a
    command's JSON). Messages are printed as they are: never read as rich markup."""

    def __init__(self, log_to_stderr: bool = False) -> None:
        from rich.console import Console

        self.console = Console(stderr=log_to_stderr, markup=False, emoji=False, highlight=False)
        self.err = Console(stderr=True, markup=False, emoji=False, highlight=False)

    def log(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", markup=False),
        )
        with Progress(*columns, console=self.err, transient=True) as progress:
            tid = progress.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: object) -> None:
                info = " ".join(f"{k} {v}" for k, v in fields.items())
                progress.update(tid, advance=n, info=info)

            yield advance
