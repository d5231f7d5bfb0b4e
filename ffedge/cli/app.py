"""The typer application, its commands imported on first use, the consoles and the error boundary of the CLI.

Start-up is paid per call, on a Pi too, so ``ffedge --help`` and ``--version`` import typer and this module only:
a command's module (with numpy, onnxruntime or torch behind it) is imported when that command runs or shows its
help (:data:`COMMANDS`, :class:`LazyCommands`), and rich when something is first printed. Help is click's plain
format (``rich_markup_mode=None``): typer's rich help formatter costs about 80 ms per call on its own.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Optional, Sequence

import typer
from typer.core import TyperGroup

import ffedge
from ffedge.errors import EXIT_SIGINT, FFEdgeError, one_line

if TYPE_CHECKING:
    from rich.console import Console

# Every command: the module that defines it (with ``@app.command(NAME)``) and its line in ``ffedge --help``,
# in the order listed there. A new command is one entry here (tests/device/test_cli_habits.py holds this
# table and the modules' commands equal).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ffedge.cli.train_cmd", "Train a quantization-aware Forward-Forward CNN (needs the train extra)."),
    "export": ("ffedge.cli.export_cmd", "Export a training run to a bundle (int8 or fp32 ONNX, manifest)."),
    "verify": ("ffedge.cli.export_cmd", "Check a bundle against its training run (parity, agreement)."),
    "report": ("ffedge.cli.report_cmd", "Draw what a trained run learned, as PNGs."),
    "info": ("ffedge.cli.info_cmd", "What a bundle holds, after verifying and loading every file."),
    "predict": ("ffedge.cli.inference_cmds", "Classify image files with a bundle."),
    "eval": ("ffedge.cli.inference_cmds", "Accuracy, confusion, latency, throughput and memory of a bundle."),
    "bench": ("ffedge.cli.bench_cmd", "Benchmark int8 vs fp32 vs torch, each in a fresh process."),
    "finetune": ("ffedge.cli.finetune_cmd", "Fine-tune a bundle on labelled data, on the device (no torch)."),
    "rollback": ("ffedge.cli.rollback_cmd", "Undo the last in-place update of a bundle."),
    "labels": ("ffedge.cli.labels_cmd", "Draw a label encoding's patterns as a PNG."),
}

DOWNLOAD_HELP = "Allow downloading a missing standard dataset (checked against its published md5s)."

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 a check failed (info: a file fails its sha256; verify, export: agreement "
    "below --min-agreement) or an unexpected error; 2 usage or bad input (an unknown option, a bad "
    "value, a missing or malformed file or bundle); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)."
)


def command(name: str) -> Any:
    """The click command ``ffedge NAME``, built from its module (imported now if it was not)."""
    importlib.import_module(COMMANDS[name][0])
    info = next(c for c in app.registered_commands if c.name == name)
    single = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)
    single.registered_commands.append(info)
    return typer.main.get_command(single)


class LazyCommands(TyperGroup):
    """The ``ffedge`` group: lists :data:`COMMANDS` without importing them, builds one when it is invoked."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = command(cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, summary) in COMMANDS.items()])


def _print_version(value: bool) -> None:
    if value:
        print(f"ffedge {ffedge.__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="ffedge",
    cls=LazyCommands,
    help="Train quantization-aware Forward-Forward CNNs, export them to int8 ONNX, run and fine-tune them on edge devices.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", is_eager=True, callback=_print_version, help="Print ffedge's version and exit."
    ),
) -> None:
    """Train quantization-aware Forward-Forward CNNs, export them to int8 ONNX, run and fine-tune them on edge devices."""


class _LazyConsole:
    """A rich console made on first use (``ffedge --help`` never imports rich); see :func:`ffedge.cli.output.make_console`."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from ffedge.cli.output import make_console

            self._console = make_console(self._stderr)
        return getattr(self._console, name)


console: Console = _LazyConsole(stderr=False)  # type: ignore[assignment]
err_console: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]


def print_json(obj: Any) -> None:
    """A command's result as JSON on stdout (``--json``): the one way every command prints it."""
    import json

    console.print_json(json.dumps(obj))


def print_error(message: str) -> None:
    """``error: MESSAGE`` on stderr, as one line."""
    from rich.text import Text

    err_console.print(Text.assemble(("error:", "bold red"), " ", one_line(message)), soft_wrap=True)


def shown(value: object) -> str:
    """A value from a bundle or the user (a class name, a file name) as one safe line of text."""
    from ffedge.errors import quoted

    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else quoted(text)


def say(text: str) -> None:
    """Print a line on stdout as it is: plain ``print``, so values in it are never read as markup, long lines are
    not wrapped, and a command that only says lines (``ffedge info``) never imports rich."""
    print(text)


def choice(names: Sequence[str]) -> Any:
    """The type of an option that takes one of ``names`` (typer turns a ``Literal`` into a checked choice, listed in
    the help and completed by the shell): ``mode: ModeName = typer.Option(...)`` with ``ModeName = choice(MODES)``."""
    from typing import Literal

    return Literal[tuple(names)]


def one_of(names: Sequence[str]) -> str:
    """Choices as help texts list them: ``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


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
    print_error(message)
    return typer.Exit(code)


def run_app(application: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run the app on ``args`` (default: the command line) and return the exit code (see :data:`EXIT_CODES_HELP`):
    a user error (:class:`FFEdgeError`) becomes one line on stderr and its ``exit_code``.

    With ``args`` the CLI can be driven in-process (tests, fuzzers): nothing calls ``sys.exit``.
    """
    try:
        # Without standalone mode click returns the code of a typer.Exit instead of raising it.
        extra = {} if args is None else {"args": list(args), "prog_name": "ffedge"}
        rv = application(standalone_mode=False, **extra)
        if isinstance(rv, int):
            return rv
    except FFEdgeError as e:
        print_error(str(e))
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return EXIT_SIGINT
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return EXIT_SIGINT
    except Exception as e:
        # Usage errors from typer's bundled click (an unknown option, a bad value): one line, as every error.
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # no command or argument given: the help, exit 2
            e.show()  # type: ignore[attr-defined]
        else:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print_error(f"{e.format_message()}{hint}")
        return int(e.exit_code)
    return 0
