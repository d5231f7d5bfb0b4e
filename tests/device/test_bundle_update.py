"""Versioned in-place bundle updates of the golden int8 bundle: commit, rollback, bundle checks, crash safety
(SIGKILL), disk full, CLI."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ffedge.bundle import MANIFEST, open_bundle
from ffedge.bundle.onnx_patch import patch_initializers, read_initializers
from ffedge.bundle.update import bundle_version, commit_update, logical_name, repoint, rollback, versions
from ffedge.datasets import load_dataset
from ffedge.errors import FFEdgeError
from ffedge.runtime import Runtime
from tests.conftest import BLOCK, assert_one_line_error, cli


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_dataset("mnist-5k").x_test[:32]


# What fine-tuning replaces: the last FF layer (per-layer and fused graphs) and the head.
@pytest.fixture(scope="module")
def retrained(golden_int8: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Genuinely different, valid replacements: the last layer's output channels reversed
    (in its layer file and in both fused nets), and a head with changed weights and biases
    (written as fine-tuning writes them, with ffedge.bundle.onnx_patch: no onnx package needed)."""
    out = tmp_path_factory.mktemp("retrained")
    last = len(json.loads((golden_int8 / MANIFEST).read_text())["layers"]) - 1

    def edit(name: str, change) -> Path:
        new = {}
        for init, value in read_initializers(golden_int8 / name).items():
            changed = change(init, value)
            if changed is not None:
                new[init] = np.ascontiguousarray(changed)
        assert len(new) == 2, f"{name}: expected 2 named initializers to edit, edited {len(new)}"
        patch_initializers(golden_int8 / name, out / name, new)
        return out / name

    layer_names = ("conv_w_q", "conv_b_q")
    return {
        f"layer{last}.onnx": edit(f"layer{last}.onnx", lambda n, a: a[::-1] if n in layer_names else None),
        **{
            net: edit(net, lambda n, a: a[::-1] if n in {f"l{last}_{t}" for t in layer_names} else None)
            for net in ("net.onnx", "net_shared.onnx")
        },
        "head.onnx": edit(
            "head.onnx", lambda n, a: a * 0.5 if n == "head_w" else (np.roll(a, 1) + 1.0 if n == "head_b" else None)
        ),
    }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _head_scores(bundle: Path, x: np.ndarray) -> np.ndarray:
    return Runtime(bundle, threads=1).predict(x, "head").scores


def _snapshot(bundle: Path) -> dict[str, bytes]:
    """Every file outside versions/ (the manifest and version 1's files), hidden ones included."""
    return {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}


def test_commit_then_rollback(
    golden_int8: Path, retrained: dict[str, Path], images: np.ndarray, tmp_path: Path
) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    before = _snapshot(b)
    old_manifest = json.loads((b / MANIFEST).read_text())
    old = _head_scores(b, images)

    new_files = {name: path.read_bytes() for name, path in retrained.items()}
    new_files["head.onnx"] = retrained["head.onnx"]  # a path is copied
    m = commit_update(b, new_files, {"finetune": {"epochs": 1}}, {"reason": "test", "samples": 32})
    assert m == json.loads((b / MANIFEST).read_text())
    assert bundle_version(m) == 2 and m["finetune"] == {"epochs": 1}
    last = len(m["layers"]) - 1
    assert m["layers"][last]["file"] == f"versions/v2/layer{last}.onnx"
    assert m["fused"]["file"] == "versions/v2/net.onnx" and m["head"]["file"] == "versions/v2/head.onnx"
    assert m["layers"][0]["file"] == "layer0.onnx" and m["label_arrays"] == old_manifest["label_arrays"]
    assert list(m["files"]) == [f"versions/v2/{n}" if n in new_files else n for n in old_manifest["files"]]
    entry = m["history"][-1]
    assert entry["version"] == 2 and entry["previous"] == 1 and entry["reason"] == "test" and entry["samples"] == 32
    assert sorted(entry["files"]) == sorted(new_files) and entry["time"].endswith("Z")
    assert _snapshot(b) == {**before, MANIFEST: (b / MANIFEST).read_bytes()}  # version 1's files untouched
    assert json.loads((b / "versions" / "manifest.v1.json").read_text()) == old_manifest

    rt = Runtime(b, threads=1)
    new = rt.predict(images, "head").scores
    assert not np.allclose(new, old, atol=1e-3)
    # The per-layer files and the fused net of version 2 agree (both were replaced).
    x = rt.encoding.neutral(rt.normalize(images[:8]))
    np.testing.assert_allclose(rt.run_layers(x, [last])[1][0], rt.forward(x, [last])[1][0], rtol=1e-5, atol=1e-5)
    assert [(v["version"], v["status"]) for v in versions(b)] == [(1, "earlier"), (2, "current")]

    restored = rollback(b)
    assert restored == old_manifest == json.loads((b / MANIFEST).read_text())
    np.testing.assert_array_equal(_head_scores(b, images), old)
    assert _snapshot(b) == before
    vs = versions(b)
    assert [(v["version"], v["status"]) for v in vs] == [(1, "current"), (2, "rolled back")]
    assert vs[1]["rolled_back"]["to"] == 1 and vs[1]["reason"] == "test"
    with pytest.raises(FFEdgeError, match="has no earlier version to roll back to"):
        rollback(b)

    # An update after a rollback gets a new number and leaves the rolled-back version's files alone.
    v2_head = (b / "versions/v2/head.onnx").read_bytes()
    m3 = commit_update(b, {"head.onnx": retrained["head.onnx"]}, {}, {})
    assert bundle_version(m3) == 3 and m3["history"][-1]["previous"] == 1 and m3["fused"]["file"] == "net.onnx"
    assert (b / "versions/v2/head.onnx").read_bytes() == v2_head
    assert [(v["version"], v["status"]) for v in versions(b)] == [(1, "earlier"), (2, "rolled back"), (3, "current")]


def test_manifest_repointing(golden_int8: Path, retrained: dict[str, Path], tmp_path: Path) -> None:
    assert repoint({"a": ["x.onnx", {"file": "x.onnx"}], "b": 3, "x.onnx": "y"}, {"x.onnx": "v/x.onnx"}) == {
        "a": ["v/x.onnx", {"file": "v/x.onnx"}],
        "b": 3,
        "x.onnx": "y",
    }
    assert logical_name("versions/v12/head.onnx") == "head.onnx" and logical_name("head.onnx") == "head.onnx"
    b = _copy(golden_int8, tmp_path / "b")
    head = json.loads((b / MANIFEST).read_text())["head"]
    m2 = commit_update(b, {"net.onnx": retrained["net.onnx"]}, {}, {})
    # Changes may name files logically: a replaced file goes to its new path, a kept one to where it is now.
    m3 = commit_update(
        b,
        {"head.onnx": retrained["head.onnx"], "notes.txt": b"retrained on device\n"},
        {"head": {**head, "file": "head.onnx"}, "fused": {**m2["fused"], "file": "net.onnx"}, "notes": "notes.txt"},
        {},
    )
    assert m3["head"]["file"] == "versions/v3/head.onnx" and m3["fused"]["file"] == "versions/v2/net.onnx"
    assert m3["notes"] == "versions/v3/notes.txt" and "versions/v3/notes.txt" in m3["files"]
    assert m3["history"][-2]["files"] == ["net.onnx"]  # past entries are not rewritten
    open_bundle(b)
    with pytest.raises(ValueError, match="manages them"):
        commit_update(b, {}, {"files": {}}, {})
    for bad in ("../x.onnx", "versions", "manifest.json", ".hidden", "a/b.onnx"):
        with pytest.raises(ValueError, match="plain bundle file name"):
            commit_update(b, {bad: b"x"}, {}, {})
    with pytest.raises(FFEdgeError, match="must name a listed file"):
        commit_update(b, {}, {"head": {**head, "file": "nosuch.onnx"}}, {})
    assert bundle_version(open_bundle(b).manifest) == 3


def test_bundle_checks_after_updates(golden_int8: Path, retrained: dict[str, Path], tmp_path: Path) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    commit_update(b, {"head.onnx": retrained["head.onnx"]}, {}, {})
    # Leftovers of an interrupted update inside versions/ are ignored ...
    (b / "versions" / "v7").mkdir()
    (b / "versions" / "v7" / "head.onnx").write_bytes(b"half written")
    (b / "versions" / ".manifest.v2.json.x.tmp").write_text("{")
    open_bundle(b)
    # ... a stray file in the root is not; a file of the current version is sha256-checked.
    (b / "stray.bin").write_bytes(b"x")
    with pytest.raises(FFEdgeError, match="unexpected file.*: stray.bin$"):
        open_bundle(b)
    (b / "stray.bin").unlink()
    (b / "versions" / "v2" / "head.onnx").write_bytes(b"tampered")
    with pytest.raises(FFEdgeError, match="'versions/v2/head.onnx' is corrupt or changed"):
        open_bundle(b)
    # Version 1's head.onnx is expected only while a saved manifest lists it.
    c = _copy(golden_int8, tmp_path / "c")
    commit_update(c, {"head.onnx": retrained["head.onnx"]}, {}, {})
    (c / "versions" / "manifest.v1.json").unlink()
    with pytest.raises(FFEdgeError, match="unexpected file.*: head.onnx$"):
        open_bundle(c)
    # A damaged bundle is not updated, and nothing is written to it.
    d = _copy(golden_int8, tmp_path / "d")
    (d / "layer0.onnx").write_bytes(b"x")
    with pytest.raises(FFEdgeError, match="corrupt or changed"):
        commit_update(d, {"head.onnx": b"x"}, {}, {})
    assert not (d / "versions").exists()
    # Rolling back rescues a damaged update; rolling back to a damaged version is refused.
    with pytest.raises(FFEdgeError, match="corrupt or changed"):
        open_bundle(b)
    assert bundle_version(rollback(b)) == 1
    open_bundle(b)
    e = _copy(golden_int8, tmp_path / "e")
    commit_update(e, {"head.onnx": retrained["head.onnx"]}, {}, {})
    (e / "head.onnx").write_bytes(b"x")
    with pytest.raises(FFEdgeError, match="cannot roll back to version 1, it is damaged"):
        rollback(e)
    assert bundle_version(open_bundle(e).manifest) == 2


def _fail_nth_fsync(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    """Make the n-th fsync of a regular file raise ENOSPC (where a full disk shows up); returns the call count."""
    real = os.fsync
    calls = [0]

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls[0] += 1
            if calls[0] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_disk_full_leaves_the_old_version(
    golden_int8: Path, retrained: dict[str, Path], images: np.ndarray, tmp_path: Path
) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    old = _head_scores(b, images)
    before = _snapshot(b)
    files = {name: path.read_bytes() for name, path in retrained.items()}
    # Fail every regular-file fsync in turn: the new files, the saved manifest, the new manifest (the commit point).
    fsyncs = len(files) + 2
    for n in range(1, fsyncs + 1):
        with pytest.MonkeyPatch.context() as mp:
            _fail_nth_fsync(mp, n)
            with pytest.raises(FFEdgeError) as err:
                commit_update(b, files, {}, {})
        msg = str(err.value)
        assert "no space left on device" in msg and "unchanged (still version 1)" in msg and "\n" not in msg
        assert _snapshot(b) == before, f"fsync {n}"
        assert not (b / "versions" / "v2").exists() and not list((b / "versions").glob(".*.tmp"))
    # A failing write (not only fsync).
    with pytest.MonkeyPatch.context() as mp:

        def full(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))

        mp.setattr(Path, "write_bytes", full)
        with pytest.raises(FFEdgeError, match="no space left on device"):
            commit_update(b, files, {}, {})
    assert _snapshot(b) == before
    np.testing.assert_array_equal(_head_scores(b, images), old)
    # There were exactly that many regular-file fsyncs to fail, and with room the same update goes through.
    with pytest.MonkeyPatch.context() as mp:
        calls = _fail_nth_fsync(mp, 0)
        assert bundle_version(commit_update(b, files, {}, {})) == 2
    assert calls[0] == fsyncs
    # A full disk during a rollback leaves the new version current.
    with pytest.MonkeyPatch.context() as mp:
        _fail_nth_fsync(mp, 2)
        with pytest.raises(FFEdgeError, match="cannot roll back: no space left on device.*still version 2"):
            rollback(b)
    assert bundle_version(open_bundle(b).manifest) == 2


def test_unwritable_bundle(
    golden_int8: Path, retrained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    before = _snapshot(b)
    if os.geteuid() != 0:
        b.chmod(0o555)
    else:  # root writes anyway: make the writes fail as they would in a read-only folder

        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(b))

        monkeypatch.setattr(os, "mkdir", denied)
        monkeypatch.setattr("tempfile.mkstemp", denied)
    try:
        with pytest.raises(FFEdgeError, match="cannot update the bundle: Permission denied.*still version 1"):
            commit_update(b, {"head.onnx": retrained["head.onnx"]}, {}, {})
    finally:
        b.chmod(0o755)
        monkeypatch.undo()
    assert _snapshot(b) == before
    open_bundle(b)


def test_rollback_cli(golden_int8: Path, retrained: dict[str, Path], tmp_path: Path) -> None:
    b = _copy(golden_int8, tmp_path / "b")
    commit_update(b, {"head.onnx": retrained["head.onnx"]}, {}, {})
    commit_update(b, {"net.onnx": retrained["net.onnx"]}, {}, {})
    r = cli("rollback", str(b))
    assert r.returncode == 0, r.stderr
    assert "version 2 is current" in r.stdout and "version 3 kept" in r.stdout
    r = cli("rollback", str(b))
    assert r.returncode == 0 and "version 1 is current" in r.stdout, r.stderr
    assert_one_line_error(cli("rollback", str(b)), "has no earlier version to roll back to")
    assert_one_line_error(cli("rollback", str(tmp_path / "nope")), "no such bundle folder")
    c = _copy(golden_int8, tmp_path / "c")
    commit_update(c, {"head.onnx": retrained["head.onnx"]}, {}, {})
    (c / "labels_patterns.npy").write_bytes(b"x")
    assert_one_line_error(cli("rollback", str(c)), "it is damaged")
    assert bundle_version(json.loads((c / MANIFEST).read_text())) == 2


DRIVER = (
    BLOCK
    + """
from pathlib import Path  # device side: the update code must not need the training extra (blocked above)
from ffedge.bundle import read_manifest
from ffedge.bundle.update import commit_update, rollback
bundle, alt = Path(sys.argv[1]), Path(sys.argv[2])
files = {p.name: p.read_bytes() for p in sorted(alt.iterdir())}
print("ready", flush=True)
while True:
    if read_manifest(bundle).current_version == 1:
        commit_update(bundle, files, {}, {"reason": "sigkill test"})
        print("committed", flush=True)
    else:
        rollback(bundle)
        print("rolled back", flush=True)
"""
)


def _leftovers(bundle: Path) -> bool:
    """Whether an update or rollback was interrupted: temp files, an unreferenced version folder, a stale mark."""
    current = json.loads((bundle / MANIFEST).read_text())
    saved = (
        [json.loads(p.read_text()) for p in (bundle / "versions").glob("manifest.v*.json")]
        if (bundle / "versions").is_dir()
        else []
    )
    referenced = {Path(n).parts[1] for m in [current, *saved] for n in m["files"] if n.startswith("versions/")}
    dirs = {p.name for p in (bundle / "versions").glob("v*") if p.is_dir()} if saved else set()
    temps = [p for p in bundle.rglob(".*.tmp")]
    stale = any(m.get("rolled_back") and m.get("bundle_version", 1) == current.get("bundle_version", 1) for m in saved)
    return bool(temps or dirs - referenced or stale)


def test_sigkill_during_updates_never_breaks_the_bundle(
    golden_int8: Path, retrained: dict[str, Path], images: np.ndarray, tmp_path: Path
) -> None:
    """A driver alternates commit_update (old -> new files) and rollback on one bundle; it is SIGKILLed at
    random moments, and after every kill the bundle opens, verifies and predicts as exactly the old or the new version."""
    x = images[:16]
    old = _head_scores(golden_int8, x)
    # The predictions of the new version, and of both half-updated mixes, all differ: a mix would be caught.
    preds = {}
    for key, names in {"new": ("layer", "net", "head"), "net only": ("layer", "net"), "head only": ("head",)}.items():
        c = _copy(golden_int8, tmp_path / key.replace(" ", "-"))
        commit_update(c, {n: p for n, p in retrained.items() if n.startswith(names)}, {}, {})
        preds[key] = _head_scores(c, x)
    new = preds["new"]
    for a, b_ in [("old", "new"), ("old", "net only"), ("old", "head only"), ("new", "net only"), ("new", "head only")]:
        pa = old if a == "old" else preds[a]
        assert not np.allclose(pa, preds[b_], atol=1e-4), (a, b_)

    alt = tmp_path / "alt"
    alt.mkdir()
    for name, path in retrained.items():
        shutil.copy(path, alt / name)
    b = _copy(golden_int8, tmp_path / "b")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    rng = random.Random(1234)
    kills = intact = ops = interrupted = 0
    seen = {"old": 0, "new": 0}
    for _ in range(24):
        proc = subprocess.Popen(
            [sys.executable, str(driver), str(b), str(alt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.15))
            assert proc.poll() is None, f"the driver died on its own: {proc.stderr.read()}"
            os.kill(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, err
        kills += 1
        ops += len(out.split())
        interrupted += _leftovers(b)
        open_bundle(b)  # reads and sha256-verifies whatever version is current
        scores = _head_scores(b, x)
        state = "old" if np.array_equal(scores, old) else "new" if np.array_equal(scores, new) else None
        assert state is not None, f"kill {kills}: predictions match neither the old nor the new version"
        assert (bundle_version(open_bundle(b).manifest) == 1) == (state == "old")
        seen[state] += 1
        intact += 1
    print(
        f"\nSIGKILL: {kills} kills, {intact} intact ({seen['old']} old, {seen['new']} new version; "
        f"{interrupted} left an interrupted update behind; the driver finished {ops} operations)"
    )
    assert kills == intact >= 20 and seen["old"] and seen["new"]
    # The bundle stays updatable: the next update clears the leftovers of the last interrupted one.
    if bundle_version(open_bundle(b).manifest) > 1:
        rollback(b)
    m = commit_update(b, {n: p for n, p in retrained.items()}, {}, {})
    assert not _leftovers(b) and bundle_version(m) == 1 + max(v["version"] for v in versions(b)[:-1])
    np.testing.assert_array_equal(_head_scores(b, x), new)
    rollback(b)
    np.testing.assert_array_equal(_head_scores(b, x), old)
