"""The typer application object and the error boundary of the CLI."""

from __future__ import annotations

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


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print one error line and return an Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_app(application: typer.Typer) -> int:
    """Run the app; user errors become one line on stderr and exit code 2."""
    try:
        # Without standalone mode click returns the code of a typer.Exit instead of raising it.
        rv = application(standalone_mode=False)
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
