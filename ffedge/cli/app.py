"""The typer application object and the error boundary of the CLI."""

from __future__ import annotations

from typing import Any, Sequence

import typer
from rich.console import Console
from rich.markup import escape

from ffedge.errors import FFEdgeError, one_line

app = typer.Typer(
    name="ffedge",
    help="Train quantization-aware Forward-Forward CNNs, export them to int8 ONNX, run and fine-tune them on edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Train quantization-aware Forward-Forward CNNs, export them to int8 ONNX, run and fine-tune them on edge devices."""


console = Console()
err_console = Console(stderr=True)


def one_of(names: Sequence[str]) -> str:
    """Choices as help texts list them: ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def choice_option(default: str, flag: str, names: Sequence[str], help: str) -> Any:
    """A typer option that takes one of ``names``: ``--help`` and completion list them, any other value is one
    ``error:`` line (exit 2) before the command runs."""

    def check(value: str) -> str:
        if value not in names:
            raise FFEdgeError(f"{flag} {value!r} is not one of {one_of(list(names))}")
        return value

    return typer.Option(
        default,
        flag,
        help=help,
        metavar="[" + "|".join(names) + "]",
        callback=check,
        autocompletion=lambda: list(names),
        show_default=True,
    )


def dataset_help() -> str:
    """The datasets a ``--dataset`` option takes, from the registry of :mod:`ffedge.datasets.registry`."""
    from ffedge.datasets import dataset_choices

    return one_of(dataset_choices(notes=True))


def label_mode_help() -> str:
    """The fourier encoding's modes (``--label-mode``) and what each does, from :class:`ffedge.labels.FourierEncoding`."""
    import inspect

    from ffedge.labels import FourierEncoding

    default = inspect.signature(FourierEncoding.__init__).parameters["mode"].default
    modes = [f"'{m}' ({text}{', default' if m == default else ''})" for m, text in FourierEncoding.MODE_HELP.items()]
    return f"{FourierEncoding.name} only: {one_of(modes)}."


def mode_help() -> str:
    """The prediction modes a ``--mode`` option takes and what each does, from :mod:`ffedge.runtime.modes`."""
    from ffedge.runtime.modes import modes_help

    return modes_help()


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one error line and return an Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_app(application: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run the app on ``args`` (default: the command line); user errors become one line on stderr and exit code 2.

    With ``args`` the CLI can be driven in-process (tests, fuzzers): nothing calls ``sys.exit``.
    """
    try:
        # Without standalone mode click returns the code of a typer.Exit instead of raising it.
        extra = {} if args is None else {"args": list(args), "prog_name": "ffedge"}
        rv = application(standalone_mode=False, **extra)
        if isinstance(rv, int):
            return rv
    except FFEdgeError as e:
        err_console.print(f"[bold red]error:[/] {escape(one_line(str(e)))}", highlight=False, soft_wrap=True)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:
        # Usage errors from typer's bundled click: show them the click way.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return int(e.exit_code)
        raise
    return 0
