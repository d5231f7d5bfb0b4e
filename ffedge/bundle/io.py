"""The bundle: a folder of ONNX files, label arrays and ``manifest.json`` (device side).

This module is the contract between the exporter and the runtime: it reads the
manifest (typed and checked by :mod:`ffedge.bundle.manifest`), keeps every file it
names inside the bundle folder (no links, no absolute or ``..`` paths),
verifies every listed file by sha256, rejects missing and unexpected files,
and rebuilds the label encoding exactly as training used it. The format is
documented in ``export/README.md``.
"""

from __future__ import annotations

import json
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ffedge.bundle.manifest import RESERVED, HeadEntry, LayerEntry, Manifest, read_manifest_file
from ffedge.bundle.names import MANIFEST, REPLAY_IMAGES, REPLAY_LABELS, SAVED_MANIFEST_GLOB, VERSIONS
from ffedge.errors import FFEdgeError, quoted
from ffedge.fsutil import sha256_file
from ffedge.labels import LabelEncoding, encoding_from_config

# What numpy raises on a damaged .npy/.npz (a zip member with bad deflate data raises zlib.error).
_NPY_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError)


@dataclass
class Bundle:
    """A checked bundle: its folder, typed manifest and label encoding."""

    path: Path
    manifest: Manifest
    encoding: LabelEncoding

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the raw image, before the label is added."""
        return self.manifest.input.shape

    @property
    def layers(self) -> list[LayerEntry]:
        return list(self.manifest.layers)

    @property
    def predict_layers(self) -> list[int]:
        return list(self.manifest.predict_layers)

    @property
    def head(self) -> HeadEntry | None:
        return self.manifest.head

    def file(self, name: str) -> Path:
        return self.path / name

    def size_bytes(self) -> int:
        """Bytes of every file the manifest lists, plus the manifest."""
        return sum(self.file(n).stat().st_size for n in self.manifest.files) + self.file(MANIFEST).stat().st_size


def _fail(path: Path, msg: str) -> FFEdgeError:
    return FFEdgeError(f"{path}: {msg}")


def _shown(name: str) -> str:
    """A file name found on disk, as a message shows it (quoted when it holds odd characters)."""
    return name if name.isprintable() and "'" not in name else quoted(name)


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and check ``manifest.json`` (every key, not the files it lists)."""
    path = Path(bundle_dir)
    if not path.exists():
        raise FFEdgeError(f"{path}: no such bundle folder")
    if not path.is_dir():
        raise FFEdgeError(f"{path} is not a bundle folder (a bundle is a directory with {MANIFEST})")
    mpath = path / MANIFEST
    if mpath.is_symlink():
        raise _fail(path, f"{MANIFEST} is a symbolic link: a bundle holds its own files, not links")
    try:
        return read_manifest_file(mpath)
    except FileNotFoundError:
        raise _fail(path, f"not an ffedge bundle ({MANIFEST} is missing)") from None


def confined(bundle_dir: str | Path, name: str) -> Path:
    """``bundle_dir / name``, refused when any part of it inside the bundle is a symbolic link or it leaves the folder."""
    root = Path(bundle_dir)
    cur = root
    for part in Path(name).parts:
        cur = cur / part
        if cur.is_symlink():
            raise _fail(
                root, f"{quoted(name)} is or passes through a symbolic link: a bundle holds its own files, not links"
            )
    try:
        cur.resolve().relative_to(root.resolve())
    except ValueError:
        raise _fail(root, f"file name {quoted(name)} in the manifest leaves the bundle folder") from None
    return cur


def check_paths(bundle_dir: str | Path, manifest: Manifest) -> None:
    """Every listed file stays inside the bundle: no links (``versions`` included), no way out."""
    path = Path(bundle_dir)
    if (path / VERSIONS).is_symlink():
        raise _fail(path, f"'{VERSIONS}' is a symbolic link: a bundle holds its own files, not links")
    for name in manifest.files:
        confined(path, name)


def check_files(bundle_dir: str | Path, manifest: Manifest) -> None:
    """Every listed file is a regular file inside the bundle with its sha256; no unexpected file sits beside them.

    After in-place updates (``ffedge.bundle.update``) the current files may lie
    under ``versions/``, and the root keeps files of earlier versions: a root
    file a saved manifest (``versions/manifest.v*.json``) lists is expected too.
    Anything else under ``versions/`` (leftovers of an interrupted update) is ignored.
    """
    path = Path(bundle_dir)
    check_paths(path, manifest)
    for name, digest in manifest.files.items():
        f = path / name
        try:
            mode = f.lstat().st_mode
        except FileNotFoundError:
            raise _fail(path, f"missing file {quoted(name)} (listed in {MANIFEST})") from None
        except OSError as e:
            raise _fail(path, f"cannot read {quoted(name)}: {e.strerror or e}") from None
        if not stat.S_ISREG(mode):
            raise _fail(path, f"{quoted(name)} is not a regular file")
        if sha256_file(f) != digest:
            raise _fail(path, f"{quoted(name)} is corrupt or changed: its sha256 does not match {MANIFEST}")
    listed = {Path(n).parts[0] for n in manifest.files}
    extra = sorted(
        p.name for p in path.iterdir() if p.name not in listed and p.name not in RESERVED and not p.name.startswith(".")
    )
    if extra and (path / VERSIONS).is_dir():
        earlier: set[str] = set()
        for saved in (path / VERSIONS).glob(SAVED_MANIFEST_GLOB):
            try:
                earlier.update(
                    Path(n).parts[0] for n in json.loads(saved.read_text())["files"] if isinstance(n, str) and n
                )
            except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError):
                continue  # an unreadable saved manifest vouches for nothing
        extra = [n for n in extra if n not in earlier]
    if extra:
        raise _fail(path, f"unexpected file(s) not in {MANIFEST}: {', '.join(map(_shown, extra))}")


def load_npy(bundle_dir: str | Path, ref: str, what: str) -> np.ndarray:
    """One .npy array of the bundle: bounded before allocating, never unpickled; a damaged file is a one-line error."""
    from ffedge.untrusted import load_npy as read_bounded_npy

    root = Path(bundle_dir)
    try:
        return read_bounded_npy(confined(root, ref))
    except FFEdgeError as e:
        raise _fail(root, f"cannot read {what} {quoted(ref)}: {e}") from None
    except _NPY_ERRORS as e:
        raise _fail(root, f"cannot read {what} {quoted(ref)}: {_why(e)}") from None


def load_npz(bundle_dir: str | Path, ref: str, what: str) -> dict[str, np.ndarray]:
    """Every array of one .npz archive of the bundle: bounded, CRC-checked, never unpickled; a damaged file is one line."""
    from ffedge.untrusted import NpzArchive

    root = Path(bundle_dir)
    try:
        with NpzArchive(confined(root, ref)) as z:
            return {k: z.array(k) for k in z.files}
    except FFEdgeError as e:
        raise _fail(root, f"cannot read {what} {quoted(ref)}: {e}") from None
    except _NPY_ERRORS as e:
        raise _fail(root, f"cannot read {what} {quoted(ref)}: {_why(e)}") from None


def _why(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "it declares more data than fits in memory"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_label_arrays(bundle_dir: str | Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """The label-encoding arrays (.npy, never pickled) the manifest points to."""
    return {name: load_npy(bundle_dir, ref, "label array") for name, ref in (manifest.label_arrays or {}).items()}


def load_master(b: Bundle) -> dict[str, np.ndarray]:
    """The float master weights (``master.npz``) fine-tuning trains."""
    if b.manifest.master is None:
        raise FFEdgeError(f"{b.path} has no float master weights: export it with 'ffedge export RUN --int8 --master'")
    return load_npz(b.path, b.manifest.master.file, "the master weights")


def load_replay(b: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """The rehearsal examples (``replay.npz``: uint8 ``x`` [N, H, W, C], ``y`` [N]), checked against the bundle."""
    if b.manifest.replay is None:
        raise FFEdgeError(f"{b.path} has no replay examples")
    ref = b.manifest.replay.file
    z = load_npz(b.path, ref, "the replay examples")
    c, h, w = b.input_shape
    x, y = z.get(REPLAY_IMAGES), z.get(REPLAY_LABELS)
    ok = (
        x is not None
        and y is not None
        and x.dtype == np.uint8
        and x.ndim == 4
        and x.shape[1:] == (h, w, c)
        and y.ndim == 1
        and len(x) == len(y)
        and np.issubdtype(y.dtype, np.integer)
        and (len(y) == 0 or 0 <= y.min() <= y.max() < len(b.classes))
    )
    if not ok:
        raise _fail(b.path, f"the replay examples {quoted(ref)} do not fit the bundle")
    return x, y.astype(np.int64)


def open_bundle(bundle_dir: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle; with ``verify``, sha256-verify every listed file (the paths are checked always)."""
    path = Path(bundle_dir)
    m = read_manifest(path)
    if verify:
        check_files(path, m)
    else:
        check_paths(path, m)
    try:
        enc = encoding_from_config(m.encoding, load_label_arrays(path, m))
    except FFEdgeError as e:
        raise _fail(path, f"label encoding: {e}") from None
    if enc.image_shape != m.input.shape or enc.num_classes != len(m.classes):
        raise _fail(path, "the label encoding does not match the input shape or the classes")
    h, w = m.input.shape[1:]
    if m.layers[0].in_shape != (enc.out_channels, h, w):
        raise _fail(path, "layer 0 input shape does not match the encoded image")
    return Bundle(path, m, enc)
