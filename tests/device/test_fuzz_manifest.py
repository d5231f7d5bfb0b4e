"""Manifest fuzzer: a mutated ``manifest.json`` gives success or ffedge's own one-line error, never another
exception, never a hang.

Each case copies a real bundle (an int8 export plus master weights and replay examples, as version 1 or after
one in-place update as version 2), applies 1-3 random mutations to its manifest (dropped keys, other types,
huge / negative / NaN / infinite numbers, wrong nesting, strings with newlines or markup, out-of-range
indices, unlisted or other listed files, a listed file overwritten by another one or truncated with its
sha256 updated, ...) and runs, in-process, under a per-case time limit:

- ``Runtime`` and ``predict`` in the modes all, head and topk (library);
- ``ffedge predict``, ``ffedge info``, ``ffedge info --json``, ``ffedge rollback`` (CLI, via ``run_app``);
- ``ffedge.bundle.update.commit_update`` with a trivial update (the head file, unchanged);
- ``ffedge.finetuning.finetune`` up to its first scoring: opening the bundle, master weights, replay
  examples, trainable layers, per-layer sessions (its data loading is stubbed, no training runs).

Library targets may raise only FFEdgeError (one line); CLI targets must exit 0, or 2 with exactly one
``error:`` line (``info`` also 1, with its "checksums: FAILED" report).

Run it:

    pytest tests/device/test_fuzz_manifest.py           # short fixed-seed profile (derandomized, CI)
    FFEDGE_FUZZ_SECONDS=600 FFEDGE_FUZZ_REPORT=fuzz-manifest.txt pytest tests/device/test_fuzz_manifest.py -s
                                                        # long profile: random cases for 600 s

The summary line (cases, outcomes, crashes by exception type) goes to the test output and, when
``FFEDGE_FUZZ_REPORT`` is set, to that file, followed by one example of each crash.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from ffedge.bundle import MANIFEST
from ffedge.errors import FFEdgeError
from tests.conftest import cli_inprocess

SHORT_EXAMPLES = 25
CASE_SECONDS = 30  # per case, all targets together: a case past this is a hang
FILES = (
    "layer0.onnx",
    "layer1.onnx",
    "layer2.onnx",
    "net.onnx",
    "head.onnx",
    "labels_patterns.npy",
    "master.npz",
    "replay.npz",
)
NASTY: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    99,
    10**6,
    10**12,
    2**63,
    -(2**63),
    10**400,
    0.5,
    -0.0,
    1e-300,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "two",
    "a\nb",
    'x\nTraceback (most recent call last):\n  File "x"',
    "[/]",
    "[bold red]error:[/] forged",
    ":thumbs_up:",
    "\x1b[2J",
    "\ud800",
    "é✓",
    "../x.onnx",
    "../../etc/passwd",
    "/etc/passwd",
    "versions",
    "versions/v2",
    "versions/../layer0.onnx",
    "manifest.json",
    ".hidden.onnx",
    "a\\b.onnx",
    "nosuch.onnx",
    *FILES,
    "versions/v2/head.onnx",
    [],
    {},
    [1, 2],
    [0],
    [99],
    [-1],
    [0, 0],
    [1, 10**6, 10**6],
    [1, 28, 28],
    [2, 28, 28],
    [1, 0, 28],
    [64, 4096, 4096],
    {"file": "layer0.onnx"},
    {"file": "nosuch.onnx"},
    {"file": 5},
    "x" * 3000,
    [[[[[[[[[[1]]]]]]]]]],
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


# ---------------------------------------------------------------- the bundles


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_fuzz_bundles(int8_bundle: Path, root: Path) -> dict[str, Path]:
    """Version 1 (a copy of ``int8_bundle`` with synthetic master weights and replay examples) and version 2
    (the same after one in-place update of the head)."""
    from ffedge.bundle.update import commit_update

    v1 = root / "v1"
    shutil.copytree(int8_bundle, v1)
    m = json.loads((v1 / MANIFEST).read_text())
    rng = np.random.default_rng(0)
    master: dict[str, np.ndarray] = {}
    for i, layer in enumerate(m["layers"]):
        cin, cout, k = layer["in_shape"][0], layer["out_shape"][0], layer["kernel"]
        master[f"layer{i}.weight"] = rng.normal(0, 0.1, (cout, cin, k, k))
        master[f"layer{i}.bias"] = np.zeros(cout)
        master[f"layer{i}.bn_mean"] = np.zeros(cin)
        master[f"layer{i}.bn_var"] = np.ones(cin)
        master[f"layer{i}.bn_eps"] = np.array(1e-5)
    feats = sum(m["layers"][i]["out_shape"][0] for i in m["head"]["layers"])
    master["head.weight"] = rng.normal(0, 0.1, (len(m["classes"]), feats))
    master["head.bias"] = np.zeros(len(m["classes"]))
    with open(v1 / "master.npz", "wb") as f:
        np.savez(f, **{k: v.astype(np.float32) for k, v in master.items()})
    c, h, w = m["input"]["shape"]
    with open(v1 / "replay.npz", "wb") as f:
        np.savez(
            f,
            x=rng.integers(0, 256, (20, h, w, c), dtype=np.uint8),
            y=np.arange(20, dtype=np.int64) % len(m["classes"]),
        )
    for name in ("master.npz", "replay.npz"):
        m["files"][name] = _sha(v1 / name)
    m["master"] = {"file": "master.npz"}
    m["replay"] = {"file": "replay.npz", "examples": 20}
    (v1 / MANIFEST).write_text(json.dumps(m, indent=2))
    v2 = root / "v2"
    shutil.copytree(v1, v2)
    commit_update(v2, {"head.onnx": (v1 / "head.onnx").read_bytes()}, {}, {"event": "fuzz base"})
    return {"v1": v1, "v2": v2}


# ---------------------------------------------------------------- mutations


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _draw_path(data: st.DataObject, m: dict[str, Any]) -> tuple:
    """Any value in the manifest; or a top-level key first (so every key gets its share), then a random descent."""
    if data.draw(st.booleans(), label="anywhere"):
        return data.draw(st.sampled_from(_paths(m)[1:]), label="path")
    path: tuple = (data.draw(st.sampled_from(sorted(m)), label="key"),)
    node = m[path[0]]
    while isinstance(node, (dict, list)) and len(node) and data.draw(st.booleans(), label="deeper"):
        key = data.draw(st.sampled_from(list(node) if isinstance(node, dict) else list(range(len(node)))), label="sub")
        path += (key,)
        node = node[key]
    return path


def _new_value(data: st.DataObject, old: Any, m: dict[str, Any]) -> Any:
    kind = data.draw(
        st.sampled_from(["nasty", "json", "near", "wrap", "swap", "stringify", "shrink", "grow"]), label="kind"
    )
    if kind == "nasty":
        return copy.deepcopy(data.draw(st.sampled_from(NASTY), label="nasty"))
    if kind == "json":
        return data.draw(json_values, label="json")
    if kind == "near" and isinstance(old, (int, float)) and not isinstance(old, bool):
        return old + data.draw(
            st.sampled_from([1, -1, -old - 1 if isinstance(old, int) else -2 * old, 10**6]), label="delta"
        )
    if kind == "wrap":
        return data.draw(st.sampled_from([[old], {"value": old}]), label="wrap")
    if kind == "swap":  # a value from elsewhere in the manifest: other files, other layers, other shapes
        return copy.deepcopy(_get(m, data.draw(st.sampled_from(_paths(m)[1:]), label="other")))
    if kind == "stringify":
        return json.dumps(old) if not isinstance(old, str) else old + "\n"
    if kind == "shrink" and isinstance(old, (list, dict)) and old:
        if isinstance(old, list):
            return old[:-1]
        return {k: v for k, v in list(old.items())[:-1]}
    if kind == "grow" and isinstance(old, list):
        return old + [copy.deepcopy(old[-1]) if old else 99]
    if kind == "grow" and isinstance(old, dict):
        return {
            **old,
            data.draw(st.sampled_from(["extra", "file", "layers", "\n"]), label="newkey"): data.draw(json_values),
        }
    return None


def _mutate_manifest(data: st.DataObject, m: dict[str, Any]) -> list[str]:
    path = _draw_path(data, m)
    parent, key = (_get(m, path[:-1]), path[-1])
    op = data.draw(st.sampled_from(["delete", "replace", "replace", "replace"]), label="op")
    if op == "delete":
        del parent[key]
        return [f"del {list(path)}"]
    value = _new_value(data, parent[key], m)
    parent[key] = value
    return [f"set {list(path)} = {json.dumps(value, allow_nan=True)[:120]}"]


def _mutate_file(data: st.DataObject, b: Path, m: dict[str, Any]) -> list[str]:
    """Overwrite a listed file with another one, or truncate it, and update its sha256 (a consistent but wrong bundle)."""
    names = sorted(m.get("files") or {}) if isinstance(m.get("files"), dict) else []
    names = [n for n in names if isinstance(n, str) and (b / n).is_file()]
    if not names:
        return []
    target = data.draw(st.sampled_from(names), label="file")
    if data.draw(st.booleans(), label="truncate"):
        raw = (b / target).read_bytes()
        (b / target).write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="cut")])
        what = f"truncate {target}"
    else:
        src = data.draw(st.sampled_from(names), label="source")
        shutil.copyfile(b / src, b / (target + ".tmp"))
        os.replace(b / (target + ".tmp"), b / target)
        what = f"copy {src} over {target}"
    m["files"][target] = _sha(b / target)
    return [what]


@dataclass
class Case:
    bundle: Path
    spare: Path  # a second copy, for the targets that change the bundle
    mutations: list[str]


def draw_case(data: st.DataObject, bases: dict[str, Path], work: Path) -> Case:
    base = bases[data.draw(st.sampled_from(sorted(bases)), label="base")]
    shutil.rmtree(work, ignore_errors=True)
    b = work / "b"
    shutil.copytree(base, b)
    m = json.loads((b / MANIFEST).read_text())
    done: list[str] = []
    if data.draw(st.integers(0, 5), label="file?") == 0:
        done += _mutate_file(data, b, m)
    for _ in range(data.draw(st.integers(1, 3), label="n")):
        if isinstance(m, dict) and m:
            done += _mutate_manifest(data, m)
    (b / MANIFEST).write_text(json.dumps(m, indent=1, allow_nan=True))
    spare = work / "spare"
    shutil.copytree(b, spare)
    return Case(b, spare, done)


# ---------------------------------------------------------------- targets


class Hang(Exception):
    """A case ran past CASE_SECONDS."""


@dataclass
class Stats:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    crashes: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    messages: Counter = field(default_factory=Counter)  # the errors seen, without the case's paths

    def error(self, target: str, case: Case, message: str) -> None:
        self.outcomes[f"{target} error"] += 1
        text = message.replace(str(case.bundle), "B").replace(str(case.spare), "B")
        self.messages[f"{target}: {text[:150]}"] += 1

    def crash(self, target: str, kind: str, case: Case, detail: str) -> None:
        key = f"{target}: {kind}"
        self.crashes[kind] += 1
        self.examples.setdefault(key, f"{key}\n  mutations: {case.mutations}\n  {detail}")

    def summary(self, seconds: float) -> str:
        by_type = ", ".join(f"{k} {v}" for k, v in self.crashes.most_common()) or "none"
        return (
            f"manifest fuzz: {self.cases} cases in {seconds:.0f} s; outcomes {dict(sorted(self.outcomes.items()))}; "
            f"crashes {sum(self.crashes.values())} ({by_type})"
        )


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    frames = [f for f in tb if "/ffedge/" in f.filename] or list(tb)
    last = frames[-1] if frames else None
    site = f"{Path(last.filename).name}:{last.lineno} {last.name}" if last else "?"
    return f"{type(e).__name__} at {site}: {str(e)[:300]!r}"


def _library(stats: Stats, case: Case, target: str, fn: Callable[[], Any]) -> Any:
    try:
        out = fn()
        stats.outcomes[f"{target} ok"] += 1
        return out
    except FFEdgeError as e:
        if "\n" in str(e) or "\r" in str(e):
            stats.crash(target, "multi-line FFEdgeError", case, repr(str(e))[:400])
        else:
            stats.error(target, case, str(e))
    except Hang:
        raise
    except Exception as e:  # the property: nothing else
        stats.crash(target, type(e).__name__, case, _where(e))
    return None


def _cli(stats: Stats, case: Case, target: str, args: list[str], allow_1: bool = False) -> None:
    try:
        r = cli_inprocess(*args)
    except Hang:
        raise
    except Exception as e:
        stats.crash(target, type(e).__name__, case, _where(e))
        return
    lines = r.stderr.strip().splitlines()
    if r.returncode == 0:
        stats.outcomes[f"{target} ok"] += 1
    elif r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"):
        stats.error(target, case, lines[0])
    elif r.returncode == 1 and allow_1 and "checksums: FAILED" in r.stdout and not lines:
        stats.outcomes[f"{target} checksums failed"] += 1
    else:
        stats.crash(target, f"exit {r.returncode} with {len(lines)} stderr line(s)", case, r.stderr[-600:])


class _Stop(Exception):
    """Raised in place of fine-tuning's first scoring: everything before it is the bundle handling."""


def _finetune_opening(bundle: Path) -> None:
    from ffedge.finetuning import loop as finetuning

    def data(b: Any, cfg: Any) -> tuple[np.ndarray, ...]:
        c, h, w = b.input_shape
        x = np.zeros((4, h, w, c), np.uint8)
        y = np.arange(4, dtype=np.int64) % len(b.classes)
        return x, y, x[:2], y[:2]

    def stop(*_: Any) -> float:
        raise _Stop

    cfg = finetuning.FinetuneConfig(data="npz:unused.npz", epochs=1, max_examples=4, eval_examples=2, threads=1)
    with mock.patch.object(finetuning, "_load_data", data), mock.patch.object(finetuning, "accuracy", stop):
        try:
            finetuning.finetune(bundle, cfg)
        except _Stop:
            pass


def run_case(case: Case, images: np.ndarray, head_bytes: bytes, stats: Stats) -> None:
    from ffedge.bundle.update import commit_update
    from ffedge.runtime import Runtime

    b = str(case.bundle)
    x_path = case.bundle.parent / "x.npy"
    np.save(x_path, images[:2, :, :, 0])
    rt = _library(stats, case, "Runtime", lambda: Runtime(b, threads=1))
    if rt is not None:
        for mode in ("all", "head", "topk"):
            _library(stats, case, f"predict {mode}", lambda: rt.predict(images[:3], mode, k=2))
    _cli(stats, case, "cli predict", ["predict", b, str(x_path), "--mode", "head", "--threads", "1"])
    _cli(stats, case, "cli info", ["info", b], allow_1=True)
    _cli(stats, case, "cli info --json", ["info", b, "--json"], allow_1=True)
    _library(stats, case, "finetune", lambda: _finetune_opening(case.bundle))
    _cli(stats, case, "cli rollback", ["rollback", b])
    _library(
        stats,
        case,
        "commit_update",
        lambda: commit_update(case.spare, {"head.onnx": head_bytes}, {}, {"event": "fuzz"}),
    )
    stats.cases += 1


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang(f"a case ran past {CASE_SECONDS} s")


def campaign(
    bases: dict[str, Path], work: Path, images: np.ndarray, stats: Stats, examples: int, seed_value: int | None
) -> None:
    """Run ``examples`` cases (fixed-seed, derandomized, when ``seed_value`` is None)."""
    head_bytes = (bases["v1"] / "head.onnx").read_bytes()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed_value is None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        case = draw_case(data, bases, work)
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(CASE_SECONDS)
        try:
            run_case(case, images, head_bytes, stats)
        except Hang as e:
            stats.crash("case", "hang", case, str(e))
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    (seed(seed_value)(prop) if seed_value is not None else prop)()


# ---------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def fuzz_bases(golden_int8: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_fuzz_bundles(golden_int8, tmp_path_factory.mktemp("fuzz-bases"))


def test_mutated_manifests_give_success_or_one_line_errors(fuzz_bases: dict[str, Path], tmp_path: Path) -> None:
    from ffedge.datasets import load_dataset

    images = load_dataset("mnist-5k").x_test[:3]
    stats = Stats()
    t0 = time.monotonic()
    budget = float(os.environ.get("FFEDGE_FUZZ_SECONDS") or 0)
    if budget > 0:
        chunk = 0
        while time.monotonic() - t0 < budget:
            campaign(fuzz_bases, tmp_path / "case", images, stats, 10, seed_value=chunk + int(t0))
            chunk += 1
    else:
        campaign(fuzz_bases, tmp_path / "case", images, stats, SHORT_EXAMPLES, seed_value=None)
    line = stats.summary(time.monotonic() - t0)
    print(line)
    report = os.environ.get("FFEDGE_FUZZ_REPORT")
    if report:
        Path(report).write_text("\n".join([line, *stats.examples.values()]) + "\n")
    assert stats.cases > 0
    assert not stats.crashes, line + "\n" + "\n".join(stats.examples.values())
