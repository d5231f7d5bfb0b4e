"""The bundle manifest (``manifest.json``) as one typed structure (device side: no numpy, no torch).

:func:`parse_manifest` is the one reader: it checks every key the exporter,
fine-tuning and rollback write, and turns a malformed manifest into one
:class:`~ffedge.errors.FFEdgeError` line naming the key, e.g.
``manifest.json: 'input.std' must be ...``. :meth:`Manifest.to_dict`,
:func:`manifest_json` and :func:`write_manifest` are the one writer.

Unknown keys, at the top level and inside known entries, are kept as they are
(a manifest written by a newer ffedge round-trips through this one); nothing
reads them. Sizes are bounded before anything is allocated (``MAX_*`` below),
every file a key points to must be listed in ``files`` under a plain relative
path, and each kind of file has its suffix (``.onnx``, ``.npy``, ``.npz``), so a
reference cannot make one loader read another kind of file.
"""

from __future__ import annotations

import copy
import json
import math
import re
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from ffedge.bundle.names import MANIFEST, VERSION_DIR_PATTERN, VERSIONS
from ffedge.errors import FFEdgeError, quoted
from ffedge.ff.measures import MAX_HEAD_GRID

BUNDLE_FORMAT = "ffedge-bundle"
BUNDLE_VERSION = 1
# The manifest format of ``ffedge export --format qonnx``'s file set (for qonnx / FINN, not for the runtime).
QONNX_FORMAT = "ffedge-qonnx"
PRECISIONS = ("int8", "fp32")
# Names inside a bundle folder the manifest does not list but that belong there.
RESERVED = (MANIFEST, VERSIONS)
REQUIRED_KEYS = ("format", "version", "precision", "classes", "input", "encoding", "layers", "predict_layers", "files")

# Bounds, checked before anything is allocated.
MAX_MANIFEST_BYTES = 16 << 20
MAX_DEPTH = 64  # JSON nesting
MAX_INPUT_CHANNELS = 64
MAX_SIDE = 4096  # image height and width
MAX_CHANNELS = 1 << 16  # channels of a layer
MAX_KERNEL = 63
MAX_LAYERS = 1024
MAX_CLASSES = 100_000
MAX_ENCODED_VALUES = 1 << 28  # classes x C x H x W of the label encoding's arrays
MAX_FILES = 100_000
MAX_VERSION = 10**9
MAX_PATH = 1024
BITS = (2, 16)
# The normalization at the start of a layer (``layers[i].norm``; the trainer's --norm): BatchNorm (frozen
# statistics) or per-sample rms; absent = batch (bundles written before the key existed).
NORMS = ("batch", "rms")
_SHA256 = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")
_ABSENT = object()


# ---------------------------------------------------------------- checks of single values


def _fail(where: str, key: str, must: str, value: Any = _ABSENT) -> FFEdgeError:
    got = "" if value is _ABSENT else f", got {quoted(value, 80)}"
    return FFEdgeError(f"{where}: '{key}' must {must}{got}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    """A finite JSON number (an int too large for a float is not: every user converts it to one)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return abs(v) < 1e300 if isinstance(v, int) else math.isfinite(v)


def _int(where: str, key: str, v: Any, lo: int, hi: int) -> int:
    if not _is_int(v) or not lo <= v <= hi:
        raise _fail(where, key, f"be an integer in {lo}..{hi}", v)
    return v


def _num(where: str, key: str, v: Any, positive: bool = False, unit: bool = False) -> float:
    if not _is_num(v) or (positive and v <= 0) or (unit and not 0 <= v <= 1):
        rng = " > 0" if positive else (" in 0..1" if unit else "")
        raise _fail(where, key, f"be a finite number{rng}", v)
    return float(v)


def _str(where: str, key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _fail(where, key, "be a string", v)
    return v


def _choice(where: str, key: str, v: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise _fail(where, key, f"be one of {', '.join(choices)}", v)
    return v


def _bool(where: str, key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(where, key, "be true or false", v)
    return v


def _obj(where: str, key: str, v: Any, what: str = "an object") -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _fail(where, key, f"be {what}", v)
    return v


def _list(where: str, key: str, v: Any, what: str, lo: int = 0, hi: int = MAX_FILES) -> list[Any]:
    if not isinstance(v, list) or not lo <= len(v) <= hi:
        raise _fail(where, key, f"be {what}", v)
    return v


def _opt(d: Mapping[str, Any], name: str, check: Callable[[Any], T]) -> T | None:
    """``check(d[name])``, or None when the key is absent or null."""
    v = d.get(name)
    return None if v is None else check(v)


def _shape(where: str, key: str, v: Any, max_channels: int) -> tuple[int, int, int]:
    ok = isinstance(v, list) and len(v) == 3 and all(_is_int(s) for s in v)
    if not ok or not (1 <= v[0] <= max_channels and 1 <= v[1] <= MAX_SIDE and 1 <= v[2] <= MAX_SIDE):
        raise _fail(where, key, f"be [C, H, W] with C in 1..{max_channels}, H and W in 1..{MAX_SIDE}", v)
    return (v[0], v[1], v[2])


def _indices(where: str, key: str, v: Any, n: int) -> list[int]:
    ok = (
        isinstance(v, list) and 1 <= len(v) <= n and all(_is_int(i) and 0 <= i < n for i in v) and len(set(v)) == len(v)
    )
    if not ok:
        raise _fail(where, key, f"list distinct layer numbers in 0..{n - 1}", v)
    return list(v)


def check_file_name(where: str, key: str, name: Any) -> str:
    """A path as ``files`` lists it: relative, POSIX, inside the bundle, no hidden or reserved parts."""
    if not isinstance(name, str) or not name or len(name) > MAX_PATH:
        raise _fail(where, key, "be a file name inside the bundle", name)
    parts = name.split("/")
    bad = (
        name.startswith("/")
        or "\\" in name
        or not name.isprintable()
        or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
        or parts[0] == MANIFEST
        or (parts[0] == VERSIONS and len(parts) == 1)
    )
    if bad:
        raise _fail(
            where, key, "be a plain relative path inside the bundle (no '..', no absolute or hidden parts)", name
        )
    return name


def _ref(where: str, key: str, v: Any, files: Mapping[str, str], suffix: str) -> str:
    """A file a key points to: listed in ``files``, with the suffix of its kind."""
    name = _str(where, key, v)
    if name not in files:
        raise _fail(where, key, "name a listed file (one in 'files')", name)
    if not name.endswith(suffix):
        raise _fail(where, key, f"name a {suffix} file", name)
    return name


# ---------------------------------------------------------------- the typed structure


def _plain(v: Any) -> Any:
    """A value as JSON holds it: entries become dicts, tuples lists, everything else a copy."""
    if isinstance(v, _Entry):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return copy.deepcopy(v)


@dataclass
class _Entry:
    """A JSON object with known keys (the fields) and unknown ones (``extra``, kept as they are).

    ``key_order`` is the order of the keys as read, so that writing back a parsed
    manifest gives the same JSON; a known key that was present with ``null``
    stays ``null``, one that was absent stays absent.
    """

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)
    key_order: tuple[str, ...] = field(default=(), kw_only=True, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("extra", "key_order"):
                continue
            value = getattr(self, f.name)
            if value is None and f.name not in self.key_order:
                continue
            out[f.name] = _plain(value)
        out.update(copy.deepcopy(self.extra))
        rank = {k: i for i, k in enumerate(self.key_order)}
        return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _split(d: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """Keyword arguments ``extra`` and ``key_order`` for an entry of type ``cls`` read from ``d``."""
    known = {f.name for f in fields(cls)} - {"extra", "key_order"}
    return {"extra": {k: copy.deepcopy(v) for k, v in d.items() if k not in known}, "key_order": tuple(d)}


@dataclass
class InputSpec(_Entry):
    """The raw image: ``shape`` (C, H, W); pixels become ``(x/255 - mean)/std`` per channel."""

    shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]


@dataclass
class Quant(_Entry):
    """Quantization facts of an int8 layer (per tensor)."""

    input_scale: float
    weight_scale: float
    output_scale: float
    weight_bits: int
    act_bits: int


@dataclass
class LayerEntry(_Entry):
    """One FF layer file: ``x`` [N, *in_shape] -> ``y`` [N, *out_shape], ``goodness`` [N], ``feature`` [N, C' * g * g] (g: head grid)."""

    file: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    channels: int | None = None
    kernel: int | None = None
    pool: bool | None = None
    ort_ops: dict[str, int] | None = None
    quant: Quant | None = None
    norm: str | None = None

    @property
    def norm_kind(self) -> str:
        """``norm``, or ``batch`` when absent (bundles made before the key existed)."""
        return self.norm if self.norm is not None else "batch"


@dataclass
class HeadEntry(_Entry):
    """The softmax head: inputs ``f{i}`` [N, C_i * grid * grid] for each of ``layers``, output ``probs`` [N, K].

    ``grid``: each head layer's ``feature`` is its activity averaged over a grid x grid grid of cells
    (absent in bundles made before the key existed: 1, the global mean).
    """

    file: str
    layers: list[int]
    grid: int | None = None

    @property
    def cells(self) -> int:
        """Cells per head feature: grid * grid (1 when ``grid`` is absent)."""
        g = self.grid if self.grid is not None else 1
        return g * g

    @property
    def grid_size(self) -> int:
        """``grid``, or 1 when absent (bundles made before the key existed)."""
        return self.grid if self.grid is not None else 1


@dataclass
class FusedEntry(_Entry):
    """The whole-net graph: ``x`` -> ``goodness`` and ``feature{i}`` for the head layers (``fused``); also the
    top-k graph (``topk``): ``x``, ``k`` -> ``goodness``, ``candidates``, ``probs``; and the one-pass head graph
    (``head_net``): ``x`` -> ``probs``."""

    file: str
    ort_ops: dict[str, int] | None = None


@dataclass
class SharedEntry(_Entry):
    """The whole-net graph with layer 0's image part once per image: ``x`` [N, C, H, W] and ``labels`` [N, K']
    (rows of its label table; ``neutral`` is the neutral label's row) -> ``goodness`` [N, K']."""

    file: str
    neutral: int
    ort_ops: dict[str, int] | None = None


@dataclass
class FileEntry(_Entry):
    """A file with nothing more to say about it (``master``)."""

    file: str


@dataclass
class ReplayEntry(_Entry):
    """Rehearsal examples for fine-tuning."""

    file: str
    examples: int | None = None


@dataclass
class Source(_Entry):
    """Where the bundle came from."""

    run: str | None = None
    dataset: str | None = None
    epochs: int | None = None
    run_test_accuracy: float | None = None


@dataclass
class Objective(_Entry):
    """The FF loss of training, reused by fine-tuning."""

    loss: str | None = None
    alpha: float | None = None
    threshold: float | None = None
    negatives: str | None = None

    def options(self) -> dict[str, Any]:
        """The set values only (fine-tuning's defaults apply to the others)."""
        return {
            k: v
            for k, v in (
                ("loss", self.loss),
                ("alpha", self.alpha),
                ("threshold", self.threshold),
                ("negatives", self.negatives),
            )
            if v is not None
        }


@dataclass
class Parity(_Entry):
    """The export-time check (the keys ``ffedge info`` shows; the rest is kept in ``extra``)."""

    samples: int | None = None
    agreement: float | None = None
    bundle_accuracy: float | None = None


@dataclass
class HistoryEntry(_Entry):
    """One in-place update: the version it made, the one it was made from, when, which files."""

    version: int
    previous: int | None = None
    time: str | None = None
    files: list[str] | None = None


@dataclass
class RolledBack(_Entry):
    """The mark on a saved manifest whose version was rolled back."""

    time: str | None = None
    to: int | None = None


@dataclass
class Manifest(_Entry):
    """A checked ``manifest.json``; see export/README.md for what each key means."""

    format: str
    version: int
    precision: str
    classes: list[str]
    input: InputSpec
    encoding: dict[str, Any]
    layers: list[LayerEntry]
    predict_layers: list[int]
    files: dict[str, str]
    created: str | None = None
    ffedge_version: str | None = None
    source: Source | None = None
    label_arrays: dict[str, str] | None = None
    objective: Objective | None = None
    head: HeadEntry | None = None
    fused: FusedEntry | None = None
    shared: SharedEntry | None = None
    topk: FusedEntry | None = None
    head_net: FusedEntry | None = None
    quantization: dict[str, Any] | None = None
    parity: Parity | None = None
    master: FileEntry | None = None
    replay: ReplayEntry | None = None
    history: list[HistoryEntry] | None = None
    bundle_version: int | None = None
    rolled_back: RolledBack | None = None

    @property
    def current_version(self) -> int:
        """``bundle_version``, 1 when absent (a bundle as exported)."""
        return self.bundle_version if self.bundle_version is not None else 1

    def references(self) -> dict[str, str]:
        """Every file a key points to -> what it is (``"layer 0"``, ``"head"``, ...)."""
        refs: dict[str, str] = {}
        for i, layer in enumerate(self.layers):
            refs.setdefault(layer.file, f"layer {i}")
        for what, entry in (
            ("fused graph", self.fused),
            ("shared-layer-0 graph", self.shared),
            ("top-k graph", self.topk),
            ("one-pass head graph", self.head_net),
            ("head", self.head),
            ("master weights", self.master),
            ("replay examples", self.replay),
        ):
            if entry is not None:
                refs.setdefault(entry.file, what)
        for name, ref in (self.label_arrays or {}).items():
            refs.setdefault(ref, f"label array {name!r}")
        return refs


# ---------------------------------------------------------------- the reader


def parse_manifest(obj: Any, where: str | Path = MANIFEST) -> Manifest:
    """Check a manifest (as JSON decodes it) and return it typed; one FFEdgeError line naming the key otherwise."""
    w = str(where)
    if not isinstance(obj, dict):
        raise FFEdgeError(f"{w}: the manifest is not a JSON object")
    if obj.get("format") == QONNX_FORMAT:
        raise FFEdgeError(
            f"{w}: this is a QONNX file set (ffedge export --format qonnx) for qonnx and FINN, not a bundle: "
            "export the run with --format onnx to run it here"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise FFEdgeError(f"{w}: the manifest lacks the key(s) {', '.join(missing)}")
    if obj["format"] != BUNDLE_FORMAT:
        raise FFEdgeError(f"{w}: format {quoted(obj['format'])} is not '{BUNDLE_FORMAT}'")
    if not _is_int(obj["version"]) or obj["version"] != BUNDLE_VERSION:
        raise FFEdgeError(
            f"{w}: bundle format version {quoted(obj['version'])} is not supported (this ffedge reads version {BUNDLE_VERSION})"
        )
    if obj["precision"] not in PRECISIONS:
        raise FFEdgeError(
            f"{w}: unknown precision {quoted(obj['precision'])} (expected one of {', '.join(PRECISIONS)})"
        )
    files = _files(w, obj["files"])
    classes = _classes(w, obj["classes"])
    inp = _input(w, obj["input"])
    encoding = _encoding(w, obj["encoding"], classes, inp)
    layers = _layers(w, obj["layers"], files, inp)
    n = len(layers)
    label_arrays = _opt(obj, "label_arrays", lambda v: _label_arrays(w, v, files))
    m = Manifest(
        format=obj["format"],
        version=obj["version"],
        precision=obj["precision"],
        classes=classes,
        input=inp,
        encoding=encoding,
        layers=layers,
        predict_layers=_indices(w, "predict_layers", obj["predict_layers"], n),
        files=files,
        created=_opt(obj, "created", lambda v: _str(w, "created", v)),
        ffedge_version=_opt(obj, "ffedge_version", lambda v: _str(w, "ffedge_version", v)),
        source=_opt(obj, "source", lambda v: _source(w, v)),
        label_arrays=label_arrays,
        objective=_opt(obj, "objective", lambda v: _objective(w, v)),
        head=_opt(obj, "head", lambda v: _head(w, v, files, layers)),
        fused=_opt(obj, "fused", lambda v: _fused(w, v, files)),
        topk=_opt(obj, "topk", lambda v: _fused(w, v, files, "topk")),
        head_net=_opt(obj, "head_net", lambda v: _fused(w, v, files, "head_net")),
        shared=_opt(obj, "shared", lambda v: _shared(w, v, files, len(classes))),
        quantization=_opt(obj, "quantization", lambda v: copy.deepcopy(_obj(w, "quantization", v))),
        parity=_opt(obj, "parity", lambda v: _parity(w, v)),
        master=_opt(obj, "master", lambda v: _file_entry(w, "master", v, files, ".npz", FileEntry)),
        replay=_opt(obj, "replay", lambda v: _replay(w, v, files)),
        history=_opt(obj, "history", lambda v: _history(w, v)),
        bundle_version=_int(w, "bundle_version", obj["bundle_version"], 1, MAX_VERSION)
        if "bundle_version" in obj
        else None,
        rolled_back=_opt(obj, "rolled_back", lambda v: _rolled_back(w, v)),
        **_split(obj, Manifest),
    )
    _check_versions(w, m)
    return m


def _check_versions(w: str, m: Manifest) -> None:
    """The lineage is consistent: updates numbered upwards, none newer than the current version, nor any file it lists."""
    n = m.current_version
    last = 0
    for i, h in enumerate(m.history or []):
        if not last < h.version <= n or (h.previous is not None and h.previous >= h.version):
            raise _fail(
                w,
                f"history[{i}].version",
                f"increase along the history, up to 'bundle_version' ({n}), each above its 'previous'",
                h.version,
            )
        last = h.version
    for name in m.files:
        parts = name.split("/")
        if (
            len(parts) == 3
            and parts[0] == VERSIONS
            and re.fullmatch(VERSION_DIR_PATTERN, parts[1])
            and int(parts[1][1:]) > n
        ):
            raise _fail(w, "files", f"list only files of versions up to 'bundle_version' ({n})", name)


def _files(w: str, v: Any) -> dict[str, str]:
    files = _obj(w, "files", v, "an object mapping file names to sha256 digests")
    if not files or len(files) > MAX_FILES:
        raise _fail(w, "files", f"list 1..{MAX_FILES} files", f"{len(files)} files")
    for name, digest in files.items():
        check_file_name(w, "files", name)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _fail(w, "files", f"map {quoted(name)} to a sha256 digest (64 lowercase hex digits)", digest)
    return dict(files)


def _classes(w: str, v: Any) -> list[str]:
    classes = _list(w, "classes", v, f"a list of 2..{MAX_CLASSES} class names", 2, MAX_CLASSES)
    for i, c in enumerate(classes):
        _str(w, f"classes[{i}]", c)
    return list(classes)


def _input(w: str, v: Any) -> InputSpec:
    d = _obj(w, "input", v)
    for key in ("shape", "mean", "std"):
        if key not in d:
            raise _fail(w, "input", "hold shape (C, H, W), mean and std", d)
    shape = _shape(w, "input.shape", d["shape"], MAX_INPUT_CHANNELS)
    c = shape[0]
    stats = {}
    for key in ("mean", "std"):
        vals = d[key]
        ok = isinstance(vals, list) and len(vals) == c and all(_is_num(x) and (key == "mean" or x > 0) for x in vals)
        if not ok:
            what = "finite number(s)" if key == "mean" else "finite number(s) > 0"
            raise _fail(w, f"input.{key}", f"be a list of {c} {what} (one per channel)", vals)
        stats[key] = [float(x) for x in vals]
    return InputSpec(shape=shape, mean=stats["mean"], std=stats["std"], **_split(d, InputSpec))


def _encoding(w: str, v: Any, classes: list[str], inp: InputSpec) -> dict[str, Any]:
    """The label encoding's config; its own checks are ``ffedge.labels.encoding_from_config``'s.

    Here: that it fits the classes and the input, before anything builds it.
    """
    d = _obj(w, "encoding", v)
    _str(w, "encoding.name", d.get("name"))
    if d.get("num_classes") != len(classes) or not _is_int(d.get("num_classes")):
        raise _fail(w, "encoding.num_classes", f"be the number of classes ({len(classes)})", d.get("num_classes"))
    shape = d.get("image_shape")
    if not (
        isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) for s in shape) and tuple(shape) == inp.shape
    ):
        raise _fail(w, "encoding.image_shape", f"be the input shape {list(inp.shape)}", shape)
    c, h, wd = inp.shape
    if len(classes) * c * h * wd > MAX_ENCODED_VALUES:
        raise FFEdgeError(
            f"{w}: {len(classes)} classes of {c}x{h}x{wd} images are more than this ffedge encodes "
            f"({MAX_ENCODED_VALUES} values)"
        )
    return copy.deepcopy(d)


def _layers(w: str, v: Any, files: Mapping[str, str], inp: InputSpec) -> list[LayerEntry]:
    items = _list(w, "layers", v, f"a list of 1..{MAX_LAYERS} layer entries", 1, MAX_LAYERS)
    out: list[LayerEntry] = []
    for i, d in enumerate(items):
        k = f"layers[{i}]"
        _obj(w, k, d, "a layer entry (an object with file, in_shape and out_shape)")
        for key in ("file", "in_shape", "out_shape"):
            if key not in d:
                raise FFEdgeError(f"{w}: layer {i} lacks the key(s) {key}")
        layer = LayerEntry(
            file=_ref(w, f"{k}.file", d["file"], files, ".onnx"),
            in_shape=_shape(w, f"{k}.in_shape", d["in_shape"], MAX_CHANNELS),
            out_shape=_shape(w, f"{k}.out_shape", d["out_shape"], MAX_CHANNELS),
            channels=_opt(d, "channels", lambda x: _int(w, f"{k}.channels", x, 1, MAX_CHANNELS)),
            kernel=_opt(d, "kernel", lambda x: _int(w, f"{k}.kernel", x, 1, MAX_KERNEL)),
            pool=_opt(d, "pool", lambda x: _bool(w, f"{k}.pool", x)),
            ort_ops=_opt(d, "ort_ops", lambda x: _op_counts(w, f"{k}.ort_ops", x)),
            quant=_opt(d, "quant", lambda x: _quant(w, f"{k}.quant", x)),
            norm=_opt(d, "norm", lambda x: _choice(w, f"{k}.norm", x, NORMS)),
            **_split(d, LayerEntry),
        )
        want_in = (inp.shape[1], inp.shape[2]) if i == 0 else out[-1].out_shape
        if (i == 0 and layer.in_shape[1:] != want_in) or (i > 0 and layer.in_shape != want_in):
            raise _fail(
                w,
                f"{k}.in_shape",
                "continue from the input (H, W)" if i == 0 else f"be layer {i - 1}'s out_shape {list(want_in)}",
                list(layer.in_shape),
            )
        if layer.channels is not None and layer.channels != layer.out_shape[0]:
            raise _fail(w, f"{k}.channels", f"be out_shape's channel count {layer.out_shape[0]}", layer.channels)
        if layer.pool is not None:
            h, wd = layer.in_shape[1:]
            want = (h // 2, wd // 2) if layer.pool else (h, wd)
            if layer.out_shape[1:] != want:
                raise _fail(
                    w,
                    f"{k}.out_shape",
                    f"have H, W = {list(want)} ({'with' if layer.pool else 'without'} pooling)",
                    list(layer.out_shape),
                )
        out.append(layer)
    return out


def _op_counts(w: str, key: str, v: Any) -> dict[str, int]:
    d = _obj(w, key, v, "an object of op counts")
    if not all(isinstance(k, str) and _is_int(n) and n >= 0 for k, n in d.items()):
        raise _fail(w, key, "map op names to counts", d)
    return dict(d)


def _quant(w: str, key: str, v: Any) -> Quant:
    d = _obj(w, key, v)
    for name in ("input_scale", "weight_scale", "output_scale", "weight_bits", "act_bits"):
        if name not in d:
            raise _fail(w, f"{key}.{name}", "be present (a quantized layer's scales and bit widths)")
    return Quant(
        input_scale=_num(w, f"{key}.input_scale", d["input_scale"], positive=True),
        weight_scale=_num(w, f"{key}.weight_scale", d["weight_scale"], positive=True),
        output_scale=_num(w, f"{key}.output_scale", d["output_scale"], positive=True),
        weight_bits=_int(w, f"{key}.weight_bits", d["weight_bits"], *BITS),
        act_bits=_int(w, f"{key}.act_bits", d["act_bits"], *BITS),
        **_split(d, Quant),
    )


def _label_arrays(w: str, v: Any, files: Mapping[str, str]) -> dict[str, str]:
    d = _obj(w, "label_arrays", v, "an object mapping array names to .npy files")
    return {
        name: _ref(w, f"label_arrays.{name}" if name.isidentifier() else "label_arrays", ref, files, ".npy")
        for name, ref in d.items()
    }


def _file_entry(w: str, key: str, v: Any, files: Mapping[str, str], suffix: str, cls: type) -> Any:
    d = _obj(w, key, v, "an object with a 'file'")
    return cls(file=_ref(w, f"{key}.file", d.get("file"), files, suffix), **_split(d, cls))


def _head(w: str, v: Any, files: Mapping[str, str], layers: list[LayerEntry]) -> HeadEntry:
    d = _obj(w, "head", v, "an object with a 'file' and its input 'layers'")
    head = HeadEntry(
        file=_ref(w, "head.file", d.get("file"), files, ".onnx"),
        layers=_indices(w, "head.layers", d.get("layers"), len(layers)),
        grid=_opt(d, "grid", lambda x: _int(w, "head.grid", x, 1, MAX_HEAD_GRID)),
        **_split(d, HeadEntry),
    )
    for i in head.layers:  # the grid's cells must fit each head layer's activity (before pooling: in_shape's H, W)
        if head.grid_size > min(layers[i].in_shape[1:]):
            raise _fail(
                w, "head.grid", f"fit layer {i}'s {layers[i].in_shape[1]}x{layers[i].in_shape[2]} activity", head.grid
            )
    return head


def _fused(w: str, v: Any, files: Mapping[str, str], key: str = "fused") -> FusedEntry:
    """The entry ``key`` of a graph file with nothing more to say than its op counts (``fused``, ``topk``,
    ``head_net``)."""
    d = _obj(w, key, v, "an object with a 'file'")
    return FusedEntry(
        file=_ref(w, f"{key}.file", d.get("file"), files, ".onnx"),
        ort_ops=_opt(d, "ort_ops", lambda x: _op_counts(w, f"{key}.ort_ops", x)),
        **_split(d, FusedEntry),
    )


def _shared(w: str, v: Any, files: Mapping[str, str], n_classes: int) -> SharedEntry:
    d = _obj(w, "shared", v, "an object with a 'file' and 'neutral'")
    if "neutral" not in d:
        raise _fail(w, "shared.neutral", "be present (the label table's neutral row)")
    return SharedEntry(
        file=_ref(w, "shared.file", d.get("file"), files, ".onnx"),
        neutral=_int(w, "shared.neutral", d["neutral"], n_classes, n_classes),
        ort_ops=_opt(d, "ort_ops", lambda x: _op_counts(w, "shared.ort_ops", x)),
        **_split(d, SharedEntry),
    )


def _replay(w: str, v: Any, files: Mapping[str, str]) -> ReplayEntry:
    d = _obj(w, "replay", v, "an object with a 'file'")
    return ReplayEntry(
        file=_ref(w, "replay.file", d.get("file"), files, ".npz"),
        examples=_opt(d, "examples", lambda x: _int(w, "replay.examples", x, 0, 10**9)),
        **_split(d, ReplayEntry),
    )


def _source(w: str, v: Any) -> Source:
    d = _obj(w, "source", v)
    return Source(
        run=_opt(d, "run", lambda x: _str(w, "source.run", x)),
        dataset=_opt(d, "dataset", lambda x: _str(w, "source.dataset", x)),
        epochs=_opt(d, "epochs", lambda x: _int(w, "source.epochs", x, 0, 10**9)),
        run_test_accuracy=_opt(d, "run_test_accuracy", lambda x: _num(w, "source.run_test_accuracy", x, unit=True)),
        **_split(d, Source),
    )


def _objective(w: str, v: Any) -> Objective:
    d = _obj(w, "objective", v)
    return Objective(
        loss=_opt(d, "loss", lambda x: _str(w, "objective.loss", x)),
        alpha=_opt(d, "alpha", lambda x: _num(w, "objective.alpha", x)),
        threshold=_opt(d, "threshold", lambda x: _num(w, "objective.threshold", x)),
        negatives=_opt(d, "negatives", lambda x: _str(w, "objective.negatives", x)),
        **_split(d, Objective),
    )


def _parity(w: str, v: Any) -> Parity:
    d = _obj(w, "parity", v)
    return Parity(
        samples=_opt(d, "samples", lambda x: _int(w, "parity.samples", x, 0, 10**9)),
        agreement=_opt(d, "agreement", lambda x: _num(w, "parity.agreement", x, unit=True)),
        bundle_accuracy=_opt(d, "bundle_accuracy", lambda x: _num(w, "parity.bundle_accuracy", x, unit=True)),
        **_split(d, Parity),
    )


def _history(w: str, v: Any) -> list[HistoryEntry]:
    items = _list(w, "history", v, "a list of update records", 0, MAX_VERSION)
    out = []
    for i, d in enumerate(items):
        k = f"history[{i}]"
        _obj(w, k, d, "an update record (an object with a 'version')")
        if "version" not in d:
            raise _fail(w, f"{k}.version", "be present (the version the update made)")
        files = _opt(d, "files", lambda x: _list(w, f"{k}.files", x, "a list of file names"))
        if files is not None and not all(isinstance(f, str) for f in files):
            raise _fail(w, f"{k}.files", "be a list of file names", files)
        out.append(
            HistoryEntry(
                version=_int(w, f"{k}.version", d["version"], 1, MAX_VERSION),
                previous=_opt(d, "previous", lambda x: _int(w, f"{k}.previous", x, 1, MAX_VERSION)),
                time=_opt(d, "time", lambda x: _str(w, f"{k}.time", x)),
                files=None if files is None else list(files),
                **_split(d, HistoryEntry),
            )
        )
    return out


def _rolled_back(w: str, v: Any) -> RolledBack:
    d = _obj(w, "rolled_back", v)
    return RolledBack(
        time=_opt(d, "time", lambda x: _str(w, "rolled_back.time", x)),
        to=_opt(d, "to", lambda x: _int(w, "rolled_back.to", x, 1, MAX_VERSION)),
        **_split(d, RolledBack),
    )


# ---------------------------------------------------------------- JSON in and out


def _check_tree(obj: Any) -> None:
    """Nesting depth and text of decoded JSON: deep nesting would exhaust the stack of every later walk."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(v, str):
            v.encode("utf-8")  # a lone surrogate (\ud800) raises UnicodeEncodeError, a ValueError
        elif isinstance(v, dict):
            stack.extend((x, depth + 1) for x in (*v.keys(), *v.values()))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def loads(text: str) -> Any:
    """Decode manifest JSON with bounded nesting and valid text.

    NaN and Infinity decode as Python's JSON does (free-form records, such as a
    diverged fine-tuning loss in ``history``, may hold them); every typed number is
    checked finite by :func:`parse_manifest`.
    """
    obj = json.loads(text)
    _check_tree(obj)
    return obj


def read_manifest_file(path: str | Path) -> Manifest:
    """Read, decode and check one manifest file (``manifest.json`` or a saved ``versions/manifest.vN.json``)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a named pipe would block the read forever
            raise ValueError("not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        obj = loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        why = str(e).splitlines()[0] if str(e) else ""
        raise FFEdgeError(f"{path}: unreadable manifest ({type(e).__name__}: {why})") from None
    return parse_manifest(obj, path)


def manifest_json(m: Manifest) -> str:
    """The manifest's JSON text, as every writer writes it."""
    return json.dumps(m.to_dict(), indent=2) + "\n"


def write_manifest(path: str | Path, m: Manifest | Mapping[str, Any]) -> Manifest:
    """Check ``m`` (a Manifest or its dict) and write it to ``path`` atomically; returns what was written."""
    from ffedge.fsutil import atomic_write_text

    typed = m if isinstance(m, Manifest) else parse_manifest(dict(m), path)
    atomic_write_text(path, manifest_json(typed))
    return typed
