"""The folder a bundle (or a QONNX file set) is exported into: which folders ``--force`` may replace, and the checks
before writing."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from ffedge.bundle.names import (
    VERSIONS,
    VERSION_DIR_PATTERN,
    LOCK,
    SAVED_MANIFEST_GLOB,
    SAVED_MANIFEST_PATTERN,
)
from ffedge.bundle import BUNDLE_FORMAT, MANIFEST, QONNX_FORMAT
from ffedge.errors import FFEdgeError
from ffedge.fsutil import check_out_folder, is_temp_of, ownership_problem


def _known_bundle_entry(listed: set[str]) -> Any:
    """Says which paths in a bundle folder ffedge writes: the manifest, listed files, ``versions/``, temp files."""
    root_names = listed | {MANIFEST}

    def known(rel: PurePosixPath, is_dir: bool) -> bool:
        parts = rel.parts
        if len(parts) == 1:
            return parts[0] == VERSIONS if is_dir else parts[0] in root_names or is_temp_of(parts[0], root_names)
        if parts[0] != VERSIONS:
            return False
        if len(parts) == 2:
            if is_dir:
                return re.fullmatch(VERSION_DIR_PATTERN, parts[1]) is not None
            return parts[1] == LOCK or re.fullmatch(rf"\.?{SAVED_MANIFEST_PATTERN}(\..*\.tmp)?", parts[1]) is not None
        return len(parts) == 3 and not is_dir and re.fullmatch(VERSION_DIR_PATTERN, parts[1]) is not None

    return known


def _listed_names(manifest: dict[str, Any]) -> set[str]:
    files = manifest.get("files")
    return {PurePosixPath(n).parts[0] for n in files if isinstance(n, str) and n} if isinstance(files, dict) else set()


def bundle_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a bundle or QONNX file set ffedge wrote (so ``--force`` may not replace it), or None.

    Either is recognized by its manifest; every other entry must be a file some
    manifest (current or saved under ``versions/``) lists, or ffedge's own bookkeeping.
    """

    def read(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            return None

    if not (folder / MANIFEST).is_file():
        return f"it has no {MANIFEST}"
    m = read(folder / MANIFEST)
    if (
        not isinstance(m, dict)
        or m.get("format") not in (BUNDLE_FORMAT, QONNX_FORMAT)
        or not isinstance(m.get("files"), dict)
    ):
        return f"its {MANIFEST} is not an ffedge bundle's"
    listed = _listed_names(m)
    if (folder / VERSIONS).is_dir() and not (folder / VERSIONS).is_symlink():
        for saved in sorted((folder / VERSIONS).glob(SAVED_MANIFEST_GLOB)):
            old = read(saved)
            listed |= _listed_names(old) if isinstance(old, dict) else set()
    return ownership_problem(folder, _known_bundle_entry(listed - {VERSIONS}))


def check_bundle_out(out: Path, force: bool) -> None:
    """``out`` can take the bundle: new, empty, or (with ``force``) a bundle ffedge wrote; its parent is writable."""
    if out.is_symlink():
        raise FFEdgeError(f"--out {out} is a symbolic link: name the folder itself")
    check_out_folder(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FFEdgeError(f"{out} already exists: pass --force to replace it")
        why = bundle_problem(out)
        if why is not None:
            raise FFEdgeError(
                f"--force replaces only a bundle ffedge wrote, and {out} is not one ({why}): nothing was deleted"
            )
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
