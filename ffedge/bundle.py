"""The bundle: a folder of ONNX files, label arrays and ``manifest.json`` (device side).

This module is the contract between the exporter and the runtime: it reads and
checks a manifest, verifies every listed file by sha256, rejects missing and
unexpected files, and rebuilds the label encoding exactly as training used it.
The format is documented in ``export/README.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffedge.errors import FFEdgeError
from ffedge.fsutil import sha256_file
from ffedge.labels import LabelEncoding, encoding_from_config

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "ffedge-bundle"
BUNDLE_VERSION = 1
PRECISIONS = ("int8", "fp32")
# Names inside a bundle folder the manifest does not list but that belong there.
RESERVED = (MANIFEST, "versions")
REQUIRED_KEYS = ("format", "version", "precision", "classes", "input", "encoding", "layers", "predict_layers", "files")
LAYER_KEYS = ("file", "in_shape", "out_shape")


@dataclass
class Bundle:
    """A checked bundle: its folder, parsed manifest and label encoding."""

    path: Path
    manifest: dict[str, Any]
    encoding: LabelEncoding

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the raw image, before the label is added."""
        c, h, w = self.manifest["input"]["shape"]
        return int(c), int(h), int(w)

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest["layers"])

    @property
    def predict_layers(self) -> list[int]:
        return [int(i) for i in self.manifest["predict_layers"]]

    @property
    def head(self) -> dict[str, Any] | None:
        return self.manifest.get("head")

    def file(self, name: str) -> Path:
        return self.path / name

    def size_bytes(self) -> int:
        """Bytes of every file the manifest lists, plus the manifest."""
        return sum(self.file(n).stat().st_size for n in self.manifest["files"]) + self.file(MANIFEST).stat().st_size


def _fail(path: Path, msg: str) -> FFEdgeError:
    return FFEdgeError(f"{path}: {msg}")


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Parse ``manifest.json`` and check its format, version and keys (not the files)."""
    path = Path(bundle_dir)
    if not path.exists():
        raise FFEdgeError(f"{path}: no such bundle folder")
    if not path.is_dir():
        raise FFEdgeError(f"{path} is not a bundle folder (a bundle is a directory with {MANIFEST})")
    mpath = path / MANIFEST
    try:
        m = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise _fail(path, f"not an ffedge bundle ({MANIFEST} is missing)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _fail(mpath, f"unreadable manifest ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(m, dict):
        raise _fail(mpath, "the manifest is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise _fail(mpath, f"the manifest lacks the key(s) {', '.join(missing)}")
    if m["format"] != BUNDLE_FORMAT:
        raise _fail(mpath, f"format '{m['format']}' is not '{BUNDLE_FORMAT}'")
    if m["version"] != BUNDLE_VERSION:
        raise _fail(mpath, f"bundle format version {m['version']} is not supported (this ffedge reads version {BUNDLE_VERSION})")
    if m["precision"] not in PRECISIONS:
        raise _fail(mpath, f"unknown precision '{m['precision']}'")
    _check_structure(mpath, m)
    return m


def _check_structure(mpath: Path, m: dict[str, Any]) -> None:
    files = m["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise _fail(mpath, "'files' must map file names to sha256 strings")
    inp = m["input"]
    if not isinstance(inp, dict) or not all(k in inp for k in ("shape", "mean", "std")) or len(inp["shape"]) != 3:
        raise _fail(mpath, "'input' must hold shape (C, H, W), mean and std")
    if not isinstance(m["layers"], list) or not m["layers"]:
        raise _fail(mpath, "'layers' must be a non-empty list")
    for i, layer in enumerate(m["layers"]):
        lack = [k for k in LAYER_KEYS if k not in layer]
        if lack:
            raise _fail(mpath, f"layer {i} lacks the key(s) {', '.join(lack)}")
        if layer["file"] not in files:
            raise _fail(mpath, f"layer {i} file '{layer['file']}' is not listed in 'files'")
    n = len(m["layers"])
    if not m["predict_layers"] or any(not isinstance(i, int) or not 0 <= i < n for i in m["predict_layers"]):
        raise _fail(mpath, f"'predict_layers' must list layers in 0..{n - 1}")
    head = m.get("head")
    if head is not None:
        if "file" not in head or "layers" not in head or head["file"] not in files:
            raise _fail(mpath, "'head' must name a listed file and its input layers")
    for name, ref in (m.get("label_arrays") or {}).items():
        if ref not in files:
            raise _fail(mpath, f"label array '{name}' file '{ref}' is not listed in 'files'")
    if len(m["classes"]) < 2:
        raise _fail(mpath, "a bundle needs at least 2 classes")


def check_files(bundle_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Every listed file exists with its sha256; no unexpected file sits beside them.

    After in-place updates (``ffedge.bundle_update``) the current files may lie
    under ``versions/``, and the root keeps files of earlier versions: a root
    file a saved manifest (``versions/manifest.v*.json``) lists is expected too.
    Anything else under ``versions/`` (leftovers of an interrupted update) is ignored.
    """
    path = Path(bundle_dir)
    for name, digest in manifest["files"].items():
        f = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise _fail(path, f"file name '{name}' in the manifest leaves the bundle folder")
        if not f.is_file():
            raise _fail(path, f"missing file '{name}' (listed in {MANIFEST})")
        if sha256_file(f) != digest:
            raise _fail(path, f"'{name}' is corrupt or changed: its sha256 does not match {MANIFEST}")
    listed = {Path(n).parts[0] for n in manifest["files"]}
    extra = sorted(p.name for p in path.iterdir() if p.name not in listed and p.name not in RESERVED and not p.name.startswith("."))
    if extra and (path / "versions").is_dir():
        earlier: set[str] = set()
        for saved in (path / "versions").glob("manifest.v*.json"):
            try:
                earlier.update(Path(n).parts[0] for n in json.loads(saved.read_text())["files"] if isinstance(n, str) and n)
            except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
                continue  # an unreadable saved manifest vouches for nothing
        extra = [n for n in extra if n not in earlier]
    if extra:
        raise _fail(path, f"unexpected file(s) not in {MANIFEST}: {', '.join(extra)}")


def load_label_arrays(bundle_dir: str | Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The label-encoding arrays (.npy, never pickled) the manifest points to."""
    out = {}
    for name, ref in (manifest.get("label_arrays") or {}).items():
        try:
            out[name] = np.load(Path(bundle_dir) / ref, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise _fail(Path(bundle_dir), f"cannot read label array '{ref}': {e}") from None
    return out


def open_bundle(bundle_dir: str | Path, verify: bool = True) -> Bundle:
    """Read, check and (with ``verify``) sha256-verify a bundle."""
    path = Path(bundle_dir)
    m = read_manifest(path)
    if verify:
        check_files(path, m)
    try:
        enc = encoding_from_config(m["encoding"], load_label_arrays(path, m))
    except FFEdgeError as e:
        raise _fail(path, f"label encoding: {e}") from None
    c, h, w = (int(v) for v in m["input"]["shape"])
    if enc.image_shape != (c, h, w) or enc.num_classes != len(m["classes"]):
        raise _fail(path, "the label encoding does not match the input shape or the classes")
    if list(m["layers"][0]["in_shape"]) != [enc.out_channels, h, w]:
        raise _fail(path, "layer 0 input shape does not match the encoded image")
    return Bundle(path, m, enc)
