"""The folder a training run is written into, and what is left of it when training stops early.

A new or empty folder is written in place (a checkpoint after every epoch, so an
interrupted run can be resumed; stopped before the first one, nothing is left).
``--force`` replaces only a run folder ffedge wrote (its own files, no links):
the new run is trained in a temp folder beside it and swapped in only when it is
complete, so the old run survives a failed or interrupted one. Ctrl-C and
SIGTERM raise :class:`TrainingInterrupted`, whose message says what was kept.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from ffedge.errors import FFEdgeError
from ffedge.fsutil import (
    Terminated,
    check_out_folder,
    is_temp_of,
    make_folders,
    ownership_problem,
    remove_made_folders,
    replace_folder,
)
from ffedge.train.distributed import RankLost
from ffedge.train.run_files import CONFIG, RUN_FILES
from ffedge.train.trainer import Diverged


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a training run; the message says what was kept."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # 130 after Ctrl-C (SIGINT), 143 after SIGTERM


def temp_folder_beside(out: Path) -> Path:
    """A new hidden temp folder next to ``out`` (same file system, so it can be renamed into place), with the
    permissions a plain new folder gets (mkdtemp makes 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    return tmp


def _known_run_entry(rel: PurePosixPath, is_dir: bool) -> bool:
    return not is_dir and len(rel.parts) == 1 and (rel.name in RUN_FILES or is_temp_of(rel.name, RUN_FILES))


def run_dir_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a run folder ffedge wrote (so ``--force`` may not replace it), or None."""
    why = ownership_problem(folder, _known_run_entry)
    if why is not None:
        return why
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        return f"it has no {CONFIG}"
    except (OSError, ValueError, RecursionError):
        cfg = None
    if not (isinstance(cfg, dict) and isinstance(cfg.get("format"), int) and isinstance(cfg.get("train"), dict)):
        return f"its {CONFIG} is not one ffedge wrote"
    return None


def out_mode(out: Path, resume: bool, force: bool) -> str:
    """``fresh`` (a new or empty folder), ``replace`` (``--force`` over a run ffedge wrote) or ``resume``."""
    check_out_folder(out)
    if resume:
        if not (out / CONFIG).is_file():
            raise FFEdgeError(f"--resume: {out} holds no run to resume ({CONFIG} missing)")
        return "resume"
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    if not force:
        raise FFEdgeError(f"{out} already exists: pass --resume to continue that run or --force to overwrite it")
    why = run_dir_problem(out)
    if why is not None:
        raise FFEdgeError(
            f"--force replaces only a run folder ffedge wrote, and {out} is not one ({why}): nothing was deleted"
        )
    return "replace"


class RunFolder:
    """Where a run is written, and what is left of it when training stops early.

    ``phase`` says what training is doing (for the message when it stops); the
    training steps update it.
    """

    def __init__(self, out: Path, mode: str, saved_epoch: int | None, writes: bool = True) -> None:
        self.out, self.mode = out, mode
        self.writes = writes  # False on the ranks other than 0 of a multi-process run: they never touch the folder
        self.dir = out
        self.tmp: Path | None = None  # replace mode: the folder the new run is trained in
        self.made: list[Path] = []
        self.opened = self.committed = False
        self.saved_epoch = saved_epoch  # the epoch of the checkpoint on disk
        self.phase = "while loading the data"

    def open(self) -> None:
        """Everything is checked: create the folder the run is written into."""
        if not self.writes:
            pass
        elif self.mode == "replace":
            self.tmp = temp_folder_beside(self.out)
            self.dir = self.tmp
        elif self.mode == "fresh":
            self.made = make_folders(self.out)
        self.opened = True

    def commit(self) -> None:
        """The run is complete: in replace mode, swap it in for the old one."""
        if self.tmp is not None:
            tmp, self.tmp = self.tmp, None  # from here on the new run is never discarded
            replace_folder(tmp, self.out, run_dir_problem)
        self.committed = True
        self.phase = "after the run was complete"

    def abandon(self) -> str:
        """Remove what must not stay after a failure; say what is kept."""
        if not self.writes:
            return f"rank 0 says what is kept in {self.out}"
        if self.committed:
            return f"the finished run is in {self.out}"
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return f"{self.out} is unchanged (the new run was discarded)"
        if self.mode == "replace":
            return f"{self.out} is unchanged"
        if self.saved_epoch is None:
            if self.mode == "fresh" and self.opened:
                for name in RUN_FILES:
                    (self.out / name).unlink(missing_ok=True)
                remove_made_folders(self.made)
            return "nothing was kept" if self.mode == "fresh" else "nothing new was kept"
        return (
            f"the checkpoint of epoch {self.saved_epoch} is kept; continue with: "
            f"ffedge train --resume --out {shlex.quote(str(self.out))}"
        )

    def stopped(self, e: BaseException) -> BaseException:
        """The error to raise for ``e`` that stopped training, after cleaning up."""
        kept = self.abandon()
        if isinstance(e, KeyboardInterrupt):
            if isinstance(e, Terminated):
                return TrainingInterrupted(f"terminated (SIGTERM) {self.phase}: {kept}", exit_code=143)
            return TrainingInterrupted(f"interrupted {self.phase}: {kept}")
        if isinstance(e, RankLost):
            return RankLost(f"{e}; {kept}")
        if isinstance(e, Diverged):
            return FFEdgeError(f"training diverged {self.phase}: {e} (try a smaller --lr or --alpha); {kept}")
        if isinstance(e, OSError) and self.opened:
            return FFEdgeError(f"cannot write the run in {self.dir}: {e.strerror or e}; {kept}")
        return e
