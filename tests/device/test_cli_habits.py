"""What users expect of a command line (torch-free): `--version`, `python -m ffedge`, shell completion, one
exit-code convention, one-line errors for bad options, choices checked by the parser, full tables in a pipe,
values never read as markup, `--json` on every command with a result, and a start-up that imports only what the
command needs (the time itself is measured by benchmarks/startup.py, not asserted here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ffedge
from ffedge.cli import COMMANDS, app
from ffedge.errors import EXIT_FAILED, EXIT_USAGE
from tests.conftest import BLOCK, REPO, assert_one_line_error, cli_inprocess, device_cli

# Runs `ffedge ARGS` as the console script does and, as the process ends, lists on stderr which of these
# modules it imported.
HEAVY = (
    "numpy",
    "onnxruntime",
    "rich",
    "PIL",
    "torch",
    "ffedge.datasets",
    *sorted({f"{m}" for m, _ in COMMANDS.values()}),
)
IMPORTED = (
    BLOCK + "import atexit\n"
    f"atexit.register(lambda: sys.stderr.write('IMPORTED ' + ' '.join(m for m in {HEAVY!r} if sys.modules.get(m))))\n"
    "from ffedge.cli import main\nsys.argv = ['ffedge'] + sys.argv[1:]\nmain()\n"
)


def _imported(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    r = subprocess.run([sys.executable, "-c", IMPORTED, *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    return r, set(r.stderr.rsplit("IMPORTED", 1)[1].split())


def _env_with_columns() -> dict[str, str]:
    """The environment with COLUMNS=80, as a shell or pytest may export it: a pipe still gets whole tables."""
    return {**os.environ, "COLUMNS": "80"}


def test_version_and_python_m_ffedge() -> None:
    r = subprocess.run([sys.executable, "-m", "ffedge", "--version"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout == f"ffedge {ffedge.__version__}\n", r
    r = subprocess.run([sys.executable, "-m", "ffedge", "info", "--help"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "--json" in r.stdout, r.stderr


def test_help_lists_every_command_and_the_exit_codes_and_imports_no_command() -> None:
    r, imported = _imported("--help")
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert f"\n  {name} " in r.stdout, name
    text = " ".join(r.stdout.split())
    assert "Exit codes: 0 success; 1 a check failed" in text and "2 usage or bad input" in text
    assert "--version" in text and "--install-completion" in text and "--show-completion" in text
    assert imported == set(), imported  # no numpy, onnxruntime, rich, nor any command's module: typer alone
    assert "\n" not in r.stderr.rsplit("IMPORTED", 1)[0]  # nothing else on stderr


def test_info_imports_what_it_needs_only(golden_int8: Path) -> None:
    r, imported = _imported("info", str(golden_int8))
    assert r.returncode == 0, r.stderr
    assert {"numpy", "onnxruntime", "ffedge.cli.info_cmd"} <= imported
    others = {m for m, _ in COMMANDS.values() if m != "ffedge.cli.info_cmd"}
    # Pillow: only where an image is decoded; rich: only for errors, JSON and progress (the table is plain text);
    # the dataset loaders: a bundle's arrays are read by ffedge.untrusted alone.
    assert not imported & {"torch", "PIL", "rich", "ffedge.datasets", *others}, imported


def test_the_command_table_is_what_the_modules_register() -> None:
    import importlib

    for module in {m for m, _ in COMMANDS.values()}:
        importlib.import_module(module)
    registered = {c.name: c.callback.__module__ for c in app.registered_commands}
    assert registered == {name: module for name, (module, _) in COMMANDS.items()}


@pytest.mark.parametrize(
    "words, cword, want",
    [
        ("ffedge in", 1, ["info"]),
        ("ffedge predict b x --mode ", 5, ["all", "head", "topk"]),
        ("ffedge labels --labels ", 3, ["fourier", "morph", "onehot"]),
    ],
)
def test_shell_completion(words: str, cword: int, want: list[str]) -> None:
    """What the script of `ffedge --install-completion` / `--show-completion` (for the shell it detects) asks for."""
    env = {**os.environ, "_FFEDGE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    r = device_cli(env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == want, (r.stdout, r.stderr)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--bogus"], "No such option: --bogus"),
        (["evl"], "No such command 'evl'"),
        (["predict"], "Missing argument 'bundle'"),
        (["predict", "b", "x.png", "--mode", "nosuch"], "'nosuch' is not one of 'all', 'head', 'topk'"),
        (["labels", "--labels", "nosuch"], "'nosuch' is not one of 'fourier', 'morph', 'onehot'"),
        (["labels", "--label-mode", "nosuch"], "'--label-mode': 'nosuch' is not one of"),
        (["info", "/nonexistent/[bold]b"], "[bold]b"),
    ],
)
def test_usage_and_input_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    err = assert_one_line_error(cli_inprocess(*args), needle, code=EXIT_USAGE)
    assert "--help" in err or args[0] == "info"


def test_a_failed_check_exits_1_with_its_report(golden_int8: Path, tmp_path: Path) -> None:
    b = Path(shutil.copytree(golden_int8, tmp_path / "b"))
    with open(b / "layer1.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = cli_inprocess("info", str(b))
    assert r.returncode == EXIT_FAILED and "checksums: FAILED" in r.stdout and "layer1.onnx" in r.stdout, r
    r = cli_inprocess("info", str(b), "--json")
    assert r.returncode == EXIT_FAILED and json.loads(r.stdout)["checksums"].startswith("FAILED")


def test_tables_are_whole_in_a_pipe(golden_int8: Path) -> None:
    r = device_cli("info", str(golden_int8), env=_env_with_columns(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    header = next(line for line in r.stdout.splitlines() if "layer" in line and "file" in line)
    for column in ("layer", "file", "in", "out", "norm", "conv", "bits w/a", "bytes", "integer kernels"):
        assert column in header, header
    r = device_cli(
        "eval", str(golden_int8), "--limit", "20", "--latency-images", "0", env=_env_with_columns(), timeout=120
    )
    assert r.returncode == 0 and "…" not in r.stdout, r.stdout
    assert "true \\ predicted" in r.stdout and all(f" {c} " in r.stdout for c in "0123456789")


def test_values_are_never_read_as_markup(tmp_path: Path) -> None:
    out = tmp_path / "a[b]" / "sheet[bold].png"
    out.parent.mkdir()
    r = cli_inprocess("labels", "--out", str(out))
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {out}", r
    r = cli_inprocess("labels", "--out", str(tmp_path / "j[i].png"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["file"] == str(tmp_path / "j[i].png"), r


def test_rollback_json(golden_int8: Path, tmp_path: Path) -> None:
    from ffedge.bundle.update import commit_update

    b = Path(shutil.copytree(golden_int8, tmp_path / "b"))
    commit_update(b, {"head.onnx": (b / "head.onnx").read_bytes()}, {}, {"event": "test"})  # version 2
    r = cli_inprocess("rollback", str(b), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"bundle": str(b), "rolled_back": 2, "current": 1}


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "{b}", "--dataset", "mnist"],
        ["bench", "{b}", "--dataset", "cifar10"],
        ["finetune", "{b}", "--data", "fashion-mnist", "--out", "{tmp}/ft"],
        ["labels", "--dataset", "mnist", "--out", "{tmp}/l.png"],
    ],
)
def test_no_download_on_every_command_that_loads_a_dataset(golden_int8: Path, tmp_path: Path, args: list[str]) -> None:
    argv = [a.format(b=golden_int8, tmp=tmp_path) for a in args] + ["--data-dir", str(tmp_path), "--no-download"]
    assert_one_line_error(cli_inprocess(*argv), "and downloading is off", code=EXIT_USAGE)
    assert not (tmp_path / "ft").exists() and not (tmp_path / "l.png").exists()


def test_plain_tables_align_numbers_right_and_cut_nothing() -> None:
    from ffedge.cli.table import Table

    t = Table("name", "accuracy", "ms", title="a title")
    t.add_row("int8 [ort]", "95.70%", "1.25")
    t.add_row("a-much-longer-variant-name", "-", "12.5")
    lines = t.lines()
    assert lines[0] == "a title" and lines[1].split() == ["name", "accuracy", "ms"] and set(lines[2]) == {"-", " "}
    assert lines[3].startswith("int8 [ort] ") and "a-much-longer-variant-name" in lines[4]
    assert lines[3].endswith(" 1.25") and lines[4].endswith("12.5")  # a numeric column: right-aligned
    assert lines[3].index("95.70%") + len("95.70%") == lines[4].index(" - ") + 2  # "-" counts as a number
    with pytest.raises(ValueError):
        t.add_row("too", "few")
