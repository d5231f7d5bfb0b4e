"""Crash-safe file writing and hashing: files a user owns are never left half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

from ffedge.errors import FFEdgeError, quoted

# CPython's own sha256 (``_sha2`` from 3.12, ``_sha256`` before) instead of hashlib's, which loads OpenSSL
# (``_hashlib``, about 3.5 MB of resident memory in every process that checks a bundle); same digests,
# hashlib's only where the builtin module is missing (other interpreters, builds without it).
try:
    from _sha2 import sha256 as _sha256_impl  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        from _sha256 import sha256 as _sha256_impl  # type: ignore[import-not-found,no-redef]
    except ImportError:
        from hashlib import sha256 as _sha256_impl  # type: ignore[assignment]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after a rename) to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is fsynced and renamed over ``path``.

    On any exception the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Let ``writer(tmp_path)`` produce the file, then move it into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def sha256(data: bytes = b"") -> Any:
    """A sha256 hash object (``update``, ``hexdigest``) like ``hashlib.sha256(data)``, without loading OpenSSL."""
    return _sha256_impl(data)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    h = sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- folders ffedge writes


def is_temp_of(name: str, names: Iterable[str]) -> bool:
    """``name`` is a temp file :func:`atomic_path` makes for one of ``names`` (``.NAME.xxxx.tmp``)."""
    return any(name.startswith(f".{n}.") and name.endswith(".tmp") for n in names)


def find_link(root: Path) -> Path | None:
    """The first symbolic link at or under ``root`` (walked without following links), or None."""
    if root.is_symlink():
        return root
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            if Path(dirpath, name).is_symlink():
                return Path(dirpath, name)
    return None


def foreign_entries(folder: Path, known: Callable[[PurePosixPath, bool], bool]) -> list[str]:
    """Entries under ``folder`` that ffedge did not write: ``known(relative_path, is_dir)`` says no,
    or they are links or special files. Walked without following links; a foreign folder is not entered."""
    foreign: list[str] = []

    def walk(d: Path, rel: PurePosixPath) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            r = rel / entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.is_symlink() or not (is_dir or entry.is_file(follow_symlinks=False)) or not known(r, is_dir):
                foreign.append(f"{r}/" if is_dir else str(r))
            elif is_dir:
                walk(Path(entry.path), r)

    walk(folder, PurePosixPath())
    return foreign


def ownership_problem(folder: Path, known: Callable[[PurePosixPath, bool], bool]) -> str | None:
    """Why ``folder`` may not be replaced as one ffedge wrote (links, files it did not write), or None."""
    link = find_link(folder)
    if link is not None:
        return f"{link} is a symbolic link"
    try:
        foreign = foreign_entries(folder, known)
    except OSError as e:
        return f"cannot list it ({e.strerror or e})"
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        return f"it holds files ffedge did not write: {', '.join(quoted(f) for f in foreign[:5])}{more}"
    return None


def check_out_folder(path: Path, option: str = "--out") -> None:
    """``path`` is a folder, or can be made one, and can be written in; else one clear error.

    Checked by creating (and removing) a probe folder in ``path`` or its nearest
    existing parent, so read-only mounts, ``/proc`` and files in the way fail here,
    before any work, and nothing is left behind.
    """
    where = path
    try:
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise FFEdgeError(f"{option} {path} exists and is not a folder")
        else:
            where = path.absolute().parent
            while not where.exists():
                where = where.parent
            if not where.is_dir():
                raise FFEdgeError(f"{option} {path}: {where} is not a folder")
        os.rmdir(tempfile.mkdtemp(prefix=".ffedge-probe-", dir=where))
    except OSError as e:
        raise FFEdgeError(f"{option} {path}: cannot create a folder in {where} ({e.strerror or e})") from None


def make_folders(path: Path) -> list[Path]:
    """``mkdir -p path``; returns the folders it created, outermost first (for :func:`remove_made_folders`)."""
    missing = []
    p = path.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_made_folders(made: list[Path]) -> None:
    """Remove the folders :func:`make_folders` created, innermost first, where they are still empty."""
    for p in reversed(made):
        try:
            p.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while a few steps must all happen; one that came meanwhile acts after.

    (Python-level deferral: masking the main thread alone would not do, as the
    kernel may hand the signal to any of torch's threads.) Main thread only;
    elsewhere, a no-op.
    """
    pending: list[int] = []
    old: dict[int, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not None:  # None: a handler not set from Python, left alone
                old[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            handler = old[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(pending[0])


def replace_folder(new: Path, out: Path, problem: Callable[[Path], str | None]) -> None:
    """Rename the finished folder ``new`` to ``out``.

    An existing ``out`` is moved aside and deleted only after the rename, and only
    if ``problem(out)`` (checked again now) finds it is still a folder ffedge wrote;
    otherwise nothing is deleted and ``new`` stays where it is. Ctrl-C and SIGTERM
    wait until the swap is done.
    """
    with signals_held():
        old = None
        if out.is_symlink() or (out.exists() and any(out.iterdir())):
            why = problem(out)
            if why is not None:
                raise FFEdgeError(f"{out} was not replaced: {why}; the new result is kept in {new}")
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        elif out.exists():
            out.rmdir()  # an empty folder
        os.replace(new, out)
        fsync_dir(out.absolute().parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised by :func:`sigterm_as_interrupt`): handled as Ctrl-C, exit status 143."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Raise :class:`Terminated` on SIGTERM, so cleanup runs as for Ctrl-C (main thread only; an ignored SIGTERM stays ignored)."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    old: Any = None
    installed = False
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
            old = signal.signal(signal.SIGTERM, handler)
            installed = True
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
