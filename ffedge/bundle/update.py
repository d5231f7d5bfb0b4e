"""Crash-safe, versioned in-place bundle updates and rollback (device side: no torch, no onnx).

On-device fine-tuning replaces some files of a bundle (e.g. ``layer2.onnx``,
``net.onnx``, ``head.onnx``). An update never overwrites a file a manifest
points to; the only in-place change is the atomic rename of ``manifest.json``,
which is the commit point. A crash or power loss at any moment leaves the
bundle readable as either the old or the new version, never a mix.

On-disk layout of an updated bundle::

    manifest.json               the current version (``bundle_version`` K; absent = 1)
    layer0.onnx ... head.onnx   version 1's files, as exported (never modified)
    versions/
      v2/head.onnx              files written by the update that made version 2
      v3/layer2.onnx ...
      manifest.v1.json          saved manifest of each version that was left,
      manifest.v2.json          by an update or a rollback
      .lock                     serializes updates (flock, where available)

``manifest["files"]`` of version K lists exactly the files K uses (some in the
root, some under ``versions/vJ/``), each with its sha256, and every reference
to a replaced file (``layers[i].file``, ``head.file``, ``fused.file``, ...)
points to its new path. ``manifest["history"]`` is the lineage: one entry per
update, ``{"version", "previous", "time", "files", ...}``.

Version numbers are never reused: an update makes version 1 + the highest
version the bundle ever had. ``rollback`` makes the current version's parent
current again: ``manifest.json`` becomes exactly the parent's saved manifest,
and the rolled-back manifest stays in ``versions/manifest.vN.json`` with a
``"rolled_back": {"time", "to"}`` mark (the audit trail). An update after a
rollback therefore never touches the rolled-back version's files.

Updates and rollbacks hold ``versions/.lock`` (:func:`update_lock`; a
fine-tune holds it from before its training to its commit), so a second one
refuses at once instead of silently building on a stale version; and a
commit made from a given version (``base_version``) refuses if another one
became current meanwhile. Nothing is written, deleted or read through a
symbolic link inside a bundle (:func:`check_no_links`): a link there is refused.

Leftovers of an interrupted update (files under ``versions/`` no manifest
lists, hidden temp files) are ignored by :func:`ffedge.bundle.io.check_files` and
cleared by the next update. Old versions' files are kept (that is what makes
rollback possible): each update costs the size of the files it replaces.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

from ffedge.bundle.io import check_files, check_paths, open_bundle, read_manifest
from ffedge.bundle.manifest import RESERVED, Manifest, parse_manifest, read_manifest_file, write_manifest
from ffedge.bundle.names import (  # noqa: F401  (version_path: part of this module's API)
    HEAD_FILE,
    LOCK,
    MANIFEST,
    SAVED_MANIFEST_GLOB,
    SAVED_MANIFEST_PATTERN,
    VERSION_DIR_PATTERN,
    VERSIONS,
    saved_manifest_name,
    version_dir,
    version_path,
)
from ffedge.errors import FFEdgeError, quoted
from ffedge.fsutil import atomic_path, find_link, fsync_dir, sha256

_SAVED = re.compile(SAVED_MANIFEST_PATTERN)
_VDIR = re.compile(VERSION_DIR_PATTERN)
# Manifest keys an update manages itself; ``manifest_changes`` must not set them.
MANAGED_KEYS = ("files", "history", "bundle_version")
# Keys whose values are not rewritten when files move (they record, they do not point).
_NOT_REPOINTED = ("files", "history")
_BUSY = "another fine-tune or rollback of this bundle is in progress"
_HELD = threading.local()  # bundles whose lock this thread holds (update_lock is re-entrant)


def bundle_version(manifest: Manifest | Mapping[str, Any]) -> int:
    """The manifest's ``bundle_version`` (1 when absent: a bundle as exported)."""
    if isinstance(manifest, Manifest):
        return manifest.current_version
    v = manifest.get("bundle_version")
    return 1 if v is None else int(v)


def logical_name(path: str) -> str:
    """``versions/v3/head.onnx`` -> ``head.onnx``; a root file name is its own logical name."""
    parts = PurePosixPath(path).parts
    if len(parts) == 3 and parts[0] == VERSIONS and _VDIR.fullmatch(parts[1]):
        return parts[2]
    return path


def saved_manifest_path(bundle_dir: str | Path, version: int) -> Path:
    return Path(bundle_dir) / VERSIONS / saved_manifest_name(version)


def repoint(obj: Any, mapping: Mapping[str, str]) -> Any:
    """A copy of ``obj`` in which every string equal to a key of ``mapping`` is replaced by its value.

    Walks nested dicts and lists (keys are never rewritten). This is how layer,
    head, fused and label-array entries follow their files to a new path.
    """
    if isinstance(obj, str):
        return mapping.get(obj, obj)
    if isinstance(obj, dict):
        return {k: repoint(v, mapping) for k, v in obj.items()}
    if isinstance(obj, list):
        return [repoint(v, mapping) for v in obj]
    return copy.deepcopy(obj)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _saved_versions(bundle_dir: Path) -> dict[int, Path]:
    """Saved manifests in ``versions/``: {version: path}."""
    vdir = bundle_dir / VERSIONS
    if vdir.is_symlink() or not vdir.is_dir():
        return {}
    out = {}
    for p in vdir.iterdir():
        m = _SAVED.fullmatch(p.name)
        if m and p.is_file() and not p.is_symlink():
            out[int(m.group(1))] = p
    return out


def _read_saved(path: Path) -> Manifest:
    try:
        return read_manifest_file(path)
    except FileNotFoundError:
        raise FFEdgeError(f"{path}: the saved manifest is missing") from None


def _parent(manifest: Manifest) -> int | None:
    """The version the current one was made from (None for a bundle as exported)."""
    n = manifest.current_version
    history = manifest.history or []
    if history and history[-1].version == n:
        last = history[-1]
        return last.previous if "previous" in last.key_order else n - 1
    return None


def os_reason(e: OSError) -> str:
    """An OSError as a short phrase for a one-line message ("no space left on device", "Permission denied", ...)."""
    return "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e)).splitlines()[0]


def _os_error(bundle_dir: Path, action: str, e: OSError, version: int) -> FFEdgeError:
    why = os_reason(e)
    where = f" ({e.filename})" if e.filename else ""
    return FFEdgeError(
        f"{bundle_dir}: cannot {action}: {why}{where}; the bundle is unchanged (still version {version})"
    )


def _link_error(path: Path) -> FFEdgeError:
    return FFEdgeError(f"{quoted(str(path))} is a symbolic link; ffedge does not follow links inside a bundle")


def _check_inside(root: Path, rel: str | Path) -> Path:
    """``root / rel``, after checking that no component of it (below ``root``) is a link and it stays inside ``root``."""
    parts = PurePosixPath(rel).parts if isinstance(rel, str) else Path(rel).parts
    if not parts or Path(*parts).is_absolute() or ".." in parts:
        raise FFEdgeError(f"{root}: file name {quoted(str(rel))} leaves the bundle folder")
    path = root
    for part in parts:
        path = path / part
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise _link_error(path)
        except (FileNotFoundError, NotADirectoryError):
            break  # not there (yet): nothing below it can be a link
    if not os.path.realpath(path).startswith(os.path.join(os.path.realpath(root), "")):
        raise FFEdgeError(f"{quoted(str(path))} resolves outside the bundle folder {root}")
    return root / Path(*parts)


def check_no_links(bundle_dir: str | Path, files: Any = None) -> None:
    """Refuse (one line) a symbolic link anywhere ffedge reads or writes in a bundle.

    Checked: ``manifest.json``, everything under ``versions/`` (the lock, saved
    manifests, every version's files) and every component of each path in
    ``files`` (default: the current manifest's ``files``, read once
    ``manifest.json`` is known not to be a link). The bundle folder itself may be a link.
    """
    root = Path(bundle_dir)
    _check_inside(root, MANIFEST)
    vdir = _check_inside(root, VERSIONS)
    link = find_link(vdir) if vdir.is_dir() else None
    if link is not None:
        raise _link_error(link)
    if files is None:
        files = read_manifest(root).files
    for name in files:
        _check_inside(root, name)


@contextlib.contextmanager
def update_lock(bundle_dir: str | Path) -> Iterator[None]:
    """Hold ``versions/.lock`` exclusively: one update or rollback at a time; a second one is refused.

    Re-entrant within a thread (a fine-tune holds it from its start and commits
    under it). The bundle is checked for links before and after the lock is taken.
    """
    bundle_dir = Path(bundle_dir)
    key = os.path.realpath(bundle_dir)
    held: set[str] = _HELD.__dict__.setdefault("dirs", set())
    if key in held:
        yield
        return
    check_no_links(bundle_dir, ())
    vdir = bundle_dir / VERSIONS
    if not vdir.is_dir():
        vdir.mkdir()
        fsync_dir(bundle_dir)
    fd = os.open(vdir / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "r+b") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, and no clearing of temp files another update may be writing
            yield
            return
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FFEdgeError(f"{bundle_dir}: {_BUSY}") from None
        held.add(key)
        try:
            check_no_links(bundle_dir, ())  # a link made before we got the lock
            _clear_temp_files(bundle_dir)
            yield
        finally:
            held.discard(key)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _clear_temp_files(bundle_dir: Path) -> None:
    """Remove temp manifests an interrupted update or rollback left (only updates write them; we hold the lock)."""
    for folder, pattern in (
        (bundle_dir, f".{MANIFEST}.*.tmp"),
        (bundle_dir / VERSIONS, f".{SAVED_MANIFEST_GLOB}.*.tmp"),
    ):
        for tmp in folder.glob(pattern):
            tmp.unlink(missing_ok=True)


def _check_name(name: str) -> None:
    p = PurePosixPath(name)
    if len(p.parts) != 1 or name in RESERVED or name.startswith(".") or "\\" in name or name in ("", ".", ".."):
        raise ValueError(f"'{name}' is not a plain bundle file name (e.g. '{HEAD_FILE}')")


def _write_file(dest: Path, src: bytes | str | Path) -> str:
    """Write ``src`` (bytes, or a file to copy) to ``dest`` atomically; returns its sha256."""
    h = sha256()
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            if isinstance(src, (bytes, bytearray, memoryview)):
                h.update(src)
                out.write(src)
            else:
                with open(src, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
    return h.hexdigest()


def commit_update(
    bundle_dir: str | Path,
    new_files: Mapping[str, bytes | str | Path],
    manifest_changes: Mapping[str, Any] | None = None,
    history_entry: Mapping[str, Any] | None = None,
    base_version: int | None = None,
) -> dict[str, Any]:
    """Make a new version of the bundle in place; returns its manifest.

    ``new_files`` maps logical file names (``"head.onnx"``) to their new content
    (bytes, or a path to copy); a name the bundle lacks is added.
    ``manifest_changes`` is applied as a shallow update of the manifest; then every
    string in the manifest (outside ``files`` and ``history``) that names a
    replaced file, by its logical name or its current path, and every logical
    name of a kept file, is pointed at that file's path in the new version.
    ``history_entry`` is appended to ``history`` with ``version``, ``previous``,
    ``time`` (UTC) and ``files`` (the logical names written) added.
    ``base_version``: the version the new files were made from; if another
    version is current when the lock is held, nothing is committed (one line).

    The current bundle must open and verify, with no link in it. An OSError (disk full, read-only
    folder) is a one-line FFEdgeError and leaves the bundle as it was.
    """
    bundle_dir = Path(bundle_dir)
    manifest_changes = dict(manifest_changes or {})
    bad = [k for k in MANAGED_KEYS if k in manifest_changes]
    if bad:
        raise ValueError(f"manifest_changes must not set {', '.join(bad)}: commit_update manages them")
    for name in new_files:
        _check_name(name)
    check_no_links(bundle_dir)
    verified = open_bundle(bundle_dir).manifest  # (1) read, check and sha256-verify the current version
    n = bundle_version(verified)
    try:
        with update_lock(bundle_dir):
            current = read_manifest(bundle_dir)
            if current != verified:  # changed before we got the lock: verify what is there now
                current = open_bundle(bundle_dir).manifest
            n = bundle_version(current)
            if base_version is not None and n != base_version:
                raise FFEdgeError(
                    f"{bundle_dir}: version {n} became current while this update was made from version {base_version}; "
                    f"nothing was committed (the bundle is still version {n})"
                )
            check_no_links(bundle_dir, current.files)
            return _commit(bundle_dir, current, new_files, manifest_changes, dict(history_entry or {}))
    except OSError as e:
        raise _os_error(bundle_dir, "update the bundle", e, n) from None


def _commit(
    bundle_dir: Path,
    current: Manifest,
    new_files: Mapping[str, bytes | str | Path],
    changes: dict[str, Any],
    entry: dict[str, Any],
) -> dict[str, Any]:
    n = bundle_version(current)
    k = max([n, *_saved_versions(bundle_dir)]) + 1
    vdir = bundle_dir / VERSIONS
    new_dir = vdir / version_dir(k)
    committed = False
    try:
        # (2) the new files, under a folder no manifest references yet
        if new_dir.exists():  # leftovers of an interrupted update: nothing points there (checked: no link)
            shutil.rmtree(new_dir)
        digests: dict[str, str] = {}
        if new_files:
            new_dir.mkdir()
            fsync_dir(vdir)
            for name, src in new_files.items():
                digests[name] = _write_file(new_dir / name, src)
            fsync_dir(new_dir)
        # (3) the manifest we are leaving, so the old version stays restorable
        write_manifest(saved_manifest_path(bundle_dir, n), current)
        # (4) the new manifest
        new = _next_manifest(current.to_dict(), k, digests, changes, entry)
        typed = _check_manifest(bundle_dir, new)
        check_files(bundle_dir, typed)  # every file it lists is on disk with its sha256
        # (5) the commit point
        write_manifest(bundle_dir / MANIFEST, typed)
        committed = True
        fsync_dir(bundle_dir)
        return new
    except BaseException:
        if not committed and not _is_current(bundle_dir, k):
            shutil.rmtree(new_dir, ignore_errors=True)
        raise


def _check_manifest(bundle_dir: Path, m: dict[str, Any]) -> Manifest:
    """The checks ``read_manifest`` makes, on a manifest not yet written."""
    return parse_manifest(m, f"{bundle_dir / MANIFEST} (as the update would write it)")


def _is_current(bundle_dir: Path, version: int) -> bool:
    try:
        return bundle_version(json.loads((bundle_dir / MANIFEST).read_text())) == version
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _next_manifest(
    current: dict[str, Any], k: int, digests: Mapping[str, str], changes: Mapping[str, Any], entry: Mapping[str, Any]
) -> dict[str, Any]:
    """Version ``k``'s manifest: ``current`` with ``changes``, the new files (``digests``) and a history entry."""
    new_path = {name: version_path(k, name) for name in digests}
    mapping: dict[str, str] = {}
    for path in current["files"]:
        logical = logical_name(path)
        if logical in new_path:
            mapping[path] = new_path[logical]
        elif logical != path:
            mapping[logical] = path  # a kept file, named logically in ``changes``
    mapping.update(new_path)
    m = {**copy.deepcopy(current), **copy.deepcopy(dict(changes))}
    m = {key: (value if key in _NOT_REPOINTED else repoint(value, mapping)) for key, value in m.items()}
    files: dict[str, str] = {}
    for path, digest in current["files"].items():
        logical = logical_name(path)
        if logical in digests:
            files[new_path[logical]] = digests[logical]
        else:
            files[path] = digest
    for name, digest in digests.items():
        files.setdefault(new_path[name], digest)
    m["files"] = files
    m["bundle_version"] = k
    rec = {"version": k, "previous": bundle_version(current), "time": _now(), "files": list(digests)}
    rec.update({key: copy.deepcopy(v) for key, v in entry.items() if key not in rec})
    m["history"] = [*copy.deepcopy(current.get("history") or []), rec]
    return m


def rollback(bundle_dir: str | Path) -> dict[str, Any]:
    """Make the version the current one was made from current again; returns its manifest.

    ``manifest.json`` becomes exactly that version's saved manifest (after its
    files are verified). The rolled-back manifest stays as
    ``versions/manifest.vN.json``, marked ``"rolled_back": {"time", "to"}``;
    its files stay too. The current version need not verify (rolling back a
    damaged update is what this is for), but its manifest must be readable.
    No link in the bundle is followed (refused, one line).
    """
    bundle_dir = Path(bundle_dir)
    check_no_links(bundle_dir)
    current = read_manifest(bundle_dir)
    check_paths(bundle_dir, current)
    n = bundle_version(current)
    if _parent(current) is None:
        raise FFEdgeError(f"{bundle_dir} (version {n}) has no earlier version to roll back to")
    try:
        with update_lock(bundle_dir):
            current = read_manifest(bundle_dir)
            n = bundle_version(current)
            p = _parent(current)
            if p is None:
                raise FFEdgeError(f"{bundle_dir} (version {n}) has no earlier version to roll back to")
            saved = saved_manifest_path(bundle_dir, p)
            if not saved.is_file():
                raise FFEdgeError(f"{bundle_dir}: cannot roll back to version {p}: {VERSIONS}/{saved.name} is missing")
            target = _read_saved(saved)
            if bundle_version(target) != p:
                raise FFEdgeError(f"{saved}: holds version {bundle_version(target)}, not {p}")
            check_no_links(bundle_dir, target.files)
            try:
                check_files(bundle_dir, target)
            except FFEdgeError as e:
                raise FFEdgeError(f"cannot roll back to version {p}, it is damaged: {e}") from None
            write_manifest(
                saved_manifest_path(bundle_dir, n), {**current.to_dict(), "rolled_back": {"time": _now(), "to": p}}
            )
            write_manifest(bundle_dir / MANIFEST, target)  # the commit point
            fsync_dir(bundle_dir)
            return target.to_dict()
    except OSError as e:
        raise _os_error(bundle_dir, "roll back", e, n) from None


def versions(bundle_dir: str | Path) -> list[dict[str, Any]]:
    """Every version of the bundle, oldest first: ``version``, ``time``, ``status`` and what its history entry holds.

    ``status`` is ``current``, ``earlier`` (an ancestor of the current version,
    restorable by rollbacks) or ``rolled back`` (with ``rolled_back``: time and
    the version restored). Version 1 is the export (``time``: its ``created``).
    """
    bundle_dir = Path(bundle_dir)
    current = read_manifest(bundle_dir)
    n = bundle_version(current)
    out: dict[int, dict[str, Any]] = {}

    def entry(m: Manifest) -> dict[str, Any]:
        v = m.current_version
        hist = m.history or []
        last = hist[-1] if hist and hist[-1].version == v else None
        return last.to_dict() if last else {"version": v, "time": m.created, "event": "export"}

    for v, path in _saved_versions(bundle_dir).items():
        try:
            m = _read_saved(path)
        except FFEdgeError:
            continue
        if bundle_version(m) != v or v == n:
            continue
        rec = entry(m)
        if m.rolled_back is not None:
            rec.update(status="rolled back", rolled_back=m.rolled_back.to_dict())
        out[v] = rec
    lineage = {1: {"version": 1, "time": current.created, "event": "export"}}
    lineage.update({h.version: h.to_dict() for h in current.history or []})
    for v, rec in lineage.items():
        out[v] = {**rec, "status": "current" if v == n else "earlier"}
    out.setdefault(n, {**entry(current), "status": "current"})
    return [{"version": v, **{k: x for k, x in out[v].items() if k != "version"}} for v in sorted(out)]
