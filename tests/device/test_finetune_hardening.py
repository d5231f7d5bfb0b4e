"""Hardening of fine-tuning and rollback (issue 10) on the golden int8 bundle: links out of the bundle, concurrent
runs, options and outputs checked before training, a full temporary disk, SIGINT/SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ffedge.bundle import MANIFEST, open_bundle
from ffedge.bundle.update import bundle_version, commit_update
from ffedge.errors import FFEdgeError
from ffedge.finetuning import FinetuneConfig, finetune
from ffedge.progress import QuietReporter
from tests.conftest import assert_one_line_error, cli

QUICK = [
    "--epochs",
    "1",
    "--max-examples",
    "60",
    "--eval-examples",
    "20",
    "--head-epochs",
    "1",
    "--threads",
    "1",
    "--no-replay",
]
LINK = "is a symbolic link; ffedge does not follow links inside a bundle"
BUSY = "another fine-tune or rollback of this bundle is in progress"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def listing(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (links listed by their target) under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _version(bundle: Path) -> int:
    return bundle_version(json.loads((bundle / MANIFEST).read_text()))


def _finetune(bundle: Path, data: str, *extra: str, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return cli("finetune", str(bundle), "--data", data, *QUICK, *extra, **kw)


def _start(bundle: Path, data: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `ffedge finetune` and return once it is training (it printed its accuracy before)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "ffedge.cli", "finetune", str(bundle), "--data", data, *QUICK, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # As from an interactive shell: a test run started in the background (`cmd &` without job control)
        # inherits SIGINT ignored, and so would ffedge, which then could not be interrupted.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in p.stdout:  # type: ignore[union-attr]
        if "held-out accuracy before" in line:
            return p
    p.wait()
    pytest.fail(f"finetune ended before training (rc {p.returncode}): {p.stderr.read()}")  # type: ignore[union-attr]


# --- item 2: links -----------------------------------------------------------------------------


def test_versions_linked_out_of_the_bundle_is_refused_and_the_outside_untouched(
    golden_int8: Path, small_npz: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "v2").mkdir(parents=True)
    (outside / "notes.txt").write_text("my notes\n")
    (outside / "v2" / "thesis.txt").write_text("precious\n")  # old code: rmtree'd as a leftover 'v2'
    b = _copy(golden_int8, tmp_path / "b")
    (b / "versions").symlink_to(outside, target_is_directory=True)
    before = listing(outside)
    print("outside before:", before)
    assert_one_line_error(_finetune(b, small_npz), f"'{b / 'versions'}' {LINK}")
    assert_one_line_error(cli("rollback", str(b)), f"'{b / 'versions'}' {LINK}")
    print("outside after:", listing(outside))
    assert listing(outside) == before and _version(b) == 1


def test_linked_version_file_lock_and_manifest_are_refused(golden_int8: Path, small_npz: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # A bundle at version 2 whose versions/v2/head.onnx is a link to a file outside (same bytes: it verifies).
    b = _copy(golden_int8, tmp_path / "b")
    commit_update(b, {"head.onnx": (b / "head.onnx").read_bytes()})
    shutil.move(b / "versions" / "v2" / "head.onnx", outside / "head.onnx")
    (b / "versions" / "v2" / "head.onnx").symlink_to(outside / "head.onnx")
    # A bundle whose manifest.json is a link to a file outside.
    m = _copy(golden_int8, tmp_path / "m")
    shutil.move(m / MANIFEST, outside / MANIFEST)
    (m / MANIFEST).symlink_to(outside / MANIFEST)
    # A bundle whose versions/.lock is a link to a file outside (old code created and locked it).
    lk = _copy(golden_int8, tmp_path / "lk")
    (lk / "versions").mkdir()
    (lk / "versions" / ".lock").symlink_to(outside / "lockfile")
    before = listing(outside)
    assert_one_line_error(_finetune(b, small_npz), f"'{b / 'versions' / 'v2' / 'head.onnx'}' {LINK}")
    assert_one_line_error(cli("rollback", str(m)), f"'{m / MANIFEST}' {LINK}")
    assert_one_line_error(_finetune(lk, small_npz), f"'{lk / 'versions' / '.lock'}' {LINK}")
    assert listing(outside) == before and not (outside / "lockfile").exists()
    assert (m / MANIFEST).is_symlink() and _version(b) == 2  # nothing replaced, nothing committed or rolled back


# --- item 3: concurrent runs ---------------------------------------------------------------------


def test_a_second_finetune_or_rollback_is_refused_while_one_runs(
    golden_int8: Path, small_npz: str, tmp_path: Path
) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    commit_update(
        b, {"head.onnx": (b / "head.onnx").read_bytes()}, history_entry={"event": "test"}
    )  # version 2: rollback has a parent
    first = _start(b, small_npz, "--seed", "7")
    os.kill(first.pid, signal.SIGSTOP)  # frozen mid-training, holding the lock
    try:
        second = _finetune(b, small_npz)
        rolled = cli("rollback", str(b))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert_one_line_error(second, BUSY)
    assert_one_line_error(rolled, BUSY)
    m = json.loads((b / MANIFEST).read_text())
    assert [(h["version"], h["previous"]) for h in m["history"]] == [(2, 1), (3, 2)]
    assert (
        m["history"][-1]["event"] == "finetune" and m["history"][-1]["config"]["seed"] == 7
    )  # the first run's training is current
    open_bundle(b)


class _CommitMeanwhile:
    """A reporter that, once training has started, makes version 2 of ``bundle`` (as another process would)."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = bundle

    def log(self, message: str) -> None:
        if "held-out accuracy before" in message:
            commit_update(self.bundle, {"head.onnx": (self.bundle / "head.onnx").read_bytes()})

    def task(self, description: str, total: int):  # type: ignore[no-untyped-def]
        return QuietReporter().task(description, total)


def test_a_version_committed_during_training_is_never_overwritten(
    golden_int8: Path, small_npz: str, tmp_path: Path
) -> None:
    """The commit-time check: the version training started from must still be current (in place) or be what is copied (--out)."""
    cfg = FinetuneConfig(
        data=small_npz, epochs=1, max_examples=40, eval_examples=20, head_epochs=1, replay=False, threads=1
    )
    b = _copy(golden_int8, tmp_path / "b")
    with pytest.raises(
        FFEdgeError, match="version 2 became current while this update was made from version 1; nothing was committed"
    ):
        finetune(
            b, cfg, reporter=_CommitMeanwhile(b)
        )  # in process the lock is re-entrant: only the commit-time check stops it
    src = _copy(golden_int8, tmp_path / "src")
    with pytest.raises(FFEdgeError, match="became version 2 while this fine-tune of version 1 ran: .* was not written"):
        finetune(src, cfg, out=tmp_path / "new", reporter=_CommitMeanwhile(src))
    assert _version(b) == _version(src) == 2
    assert not (tmp_path / "new").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".new")] == []


# --- item 9: options and outputs before any work ---------------------------------------------------


def test_out_is_checked_before_training(golden_int8: Path, small_npz: str, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    user = tmp_path / "user"
    (user / "photos").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    before = listing(user)
    cases = [(tmp_path / "afile" / "sub", "is not a folder")]
    if Path("/proc/self").is_dir():
        cases.append((Path("/proc/x"), "cannot create /proc/x"))
    for out, needle in cases:
        r = _finetune(golden_int8, small_npz, "--out", str(out))
        assert_one_line_error(r, needle)
        assert "accuracy before" not in r.stdout  # refused before any work
    for out, needle in ((user, "already exists"), (golden_int8 / "copy", "lies inside the bundle")):
        with pytest.raises(FFEdgeError, match=needle):
            finetune(golden_int8, FinetuneConfig(data=small_npz), out=out)
    assert listing(user) == before and not (golden_int8 / "copy").exists()


def test_bad_numbers_are_one_line_before_any_work(golden_int8: Path, small_npz: str, tmp_path: Path) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    for args, needle in (
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--threads", "100000"], "--threads must be between 1 and"),
    ):
        assert_one_line_error(_finetune(b, small_npz, *args, timeout=60), needle)
    # The library checks them too (Python callers), before the bundle is even opened.
    for opts, needle in (
        (dict(epochs=-1), "--epochs must be >= 1"),
        (dict(lr=float("nan")), "--lr must be a finite number > 0"),
        (dict(anchor=-1.0), "--anchor"),
        (dict(anchor=1.0), "--anchor must be a finite number >= 0 and < 1"),
        (dict(threads=-1), "--threads"),
        (dict(batch_size=0), "--batch-size"),
        (dict(head_epochs=-3), "--head-epochs"),
        (dict(replay=-5), "replay must be True or False"),
        (dict(seed=-1), "--seed"),
    ):
        with pytest.raises(FFEdgeError, match=needle.replace("+", r"\+")):
            finetune(tmp_path / "no-such-bundle", FinetuneConfig(data=small_npz, **opts))
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in golden_int8.iterdir())


FULL_DISK = """\
import builtins, errno, io, os, shutil, sys
tmp = os.path.realpath(os.environ["TMPDIR"]) + os.sep
under = lambda f: isinstance(f, (str, bytes, os.PathLike)) and (os.path.realpath(os.fsdecode(f)) + os.sep).startswith(tmp)
if sys.argv[1] == "full":  # TMPDIR reports no free space
    real_usage = shutil.disk_usage
    shutil.disk_usage = lambda p: real_usage(p)._replace(free=0) if under(p) else real_usage(p)
else:  # TMPDIR fills up during the run: every write there fails with ENOSPC
    real_open = io.open
    def full_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and under(file):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(file))
        return real_open(file, mode, *a, **k)
    builtins.open = io.open = full_open
from ffedge.cli import main
sys.argv = ["ffedge", *sys.argv[2:]]
main()
"""


def test_full_temporary_disk_is_one_line_and_leaves_nothing(golden_int8: Path, small_npz: str, tmp_path: Path) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    cases = (
        ("full", "MB free, this fine-tune writes about"),
        ("fills", "no space left on device; the bundle is unchanged (still version 1)"),
    )
    for mode, needle in cases:
        r = subprocess.run(
            [sys.executable, "-c", FULL_DISK, mode, "finetune", str(b), "--data", small_npz, *QUICK],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert_one_line_error(r, needle)
        assert ("accuracy before" in r.stdout) == (mode == "fills")  # a full disk is seen before training
        assert [p for p in tmpdir.iterdir() if p.name.startswith("ffedge")] == []
    assert _version(b) == 1 and not (b / "versions" / "v2").exists()
    open_bundle(b)


# --- item 10: signals ------------------------------------------------------------------------------


SIGTERM_AT_COMMIT = """\
import os, signal, sys
import ffedge.finetuning.loop as ft
real, seen = ft.commit_update, sys.argv[1]
def commit(*a, **k):  # SIGTERM after scoring, while the temporary folder holds the candidate files
    with open(seen, "w") as f:
        f.write("\\n".join(os.listdir(os.environ["TMPDIR"])))
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
ft.commit_update = commit
from ffedge.cli import main
sys.argv = ["ffedge", *sys.argv[2:]]
main()
"""


def test_sigint_and_sigterm_say_what_is_kept_and_leave_no_temporaries(
    golden_int8: Path, small_npz: str, tmp_path: Path
) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    p = _start(
        b, small_npz, "--epochs", "100000", env=env
    )  # Ctrl-C while training (far more epochs than can finish first)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err.strip() == "interrupted: the bundle is unchanged (still version 1)", (
        p.returncode,
        err,
    )
    seen = tmp_path / "seen"
    r = subprocess.run(
        [sys.executable, "-c", SIGTERM_AT_COMMIT, str(seen), "finetune", str(b), "--data", small_npz, *QUICK],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 143 and r.stderr.strip() == "interrupted: the bundle is unchanged (still version 1)", (
        r.returncode,
        r.stderr,
    )
    assert any(n.startswith("ffedge-finetune-") for n in seen.read_text().split())  # there was a temporary folder ...
    assert [n.name for n in tmpdir.iterdir() if n.name.startswith("ffedge")] == []  # ... and it is gone
    assert _version(b) == 1 and not (b / "versions" / "v2").exists()
    open_bundle(b)
