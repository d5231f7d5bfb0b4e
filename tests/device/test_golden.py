"""The golden bundles (tests/golden/) against today's device side: the bundle-format compatibility guard.

tests/device runs against these committed bundles instead of training a model. If a test here fails, today's
runtime no longer reads what was exported with an earlier ffedge: either the change to the bundle format was not
meant (fix the code), or it was (regenerate the bundles with ``python tests/golden/make_golden.py``, and think of
the devices that hold bundles in the old format).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ffedge.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST, PRECISIONS, load_master, load_replay, open_bundle
from ffedge.datasets import load_dataset
from ffedge.runtime import Runtime
from tests.conftest import REPO, device_cli
from tests.device.conftest import GOLDEN, GOLDEN_FP32, GOLDEN_INT8

BUNDLES = {"bundle-int8": GOLDEN_INT8, "bundle-fp32": GOLDEN_FP32}
MAX_BYTES = 1_300_000  # all golden bundles together, kept in git: each whole-net graph (net, shared, top-k) is a copy of the weights


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


@pytest.mark.parametrize("name", BUNDLES)
def test_the_format_version_is_one_this_runtime_reads(name: str) -> None:
    m = _manifest(BUNDLES[name])
    assert m["format"] == BUNDLE_FORMAT, f"{name}: format {m['format']!r}, this ffedge reads {BUNDLE_FORMAT!r}"
    assert m["version"] == BUNDLE_VERSION, (
        f"{name} is bundle format version {m['version']}, this ffedge reads version {BUNDLE_VERSION}: "
        "regenerate tests/golden with `python tests/golden/make_golden.py` if the change is meant"
    )
    assert m["precision"] in PRECISIONS and m["precision"] == name.split("-")[1]


@pytest.mark.parametrize("name", BUNDLES)
def test_every_file_is_listed_and_its_sha256_verifies(name: str) -> None:
    """Checked here with hashlib, independently of ffedge's own checks; nothing unlisted lies in the folder."""
    folder = BUNDLES[name]
    files = _manifest(folder)["files"]
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert on_disk == sorted(files)
    for rel, digest in files.items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == digest, rel


@pytest.mark.parametrize("name", BUNDLES)
def test_todays_runtime_opens_verifies_and_runs_it(name: str) -> None:
    b = open_bundle(BUNDLES[name])  # parses the manifest and verifies every sha256
    assert b.manifest.current_version == 1 and len(b.layers) == 3
    ds = load_dataset("mnist-5k")
    p = Runtime(BUNDLES[name], threads=1).predict(ds.x_test[:100])
    assert (p.labels == ds.y_test[:100]).mean() > 0.4  # well above chance (10%)
    r = device_cli("info", str(BUNDLES[name]))
    assert r.returncode == 0 and "checksums: ok" in r.stdout, r.stderr


def test_the_int8_bundle_can_be_fine_tuned() -> None:
    """Exported with --master: float master weights for every layer and the head, 500 class-balanced replay digits."""
    b = open_bundle(GOLDEN_INT8)
    master = load_master(b)
    assert {"head.weight", "head.bias"} <= set(master) and all(f"layer{i}.weight" in master for i in range(3))
    x, y = load_replay(b)
    assert x.shape == (500, 28, 28, 1) and x.dtype == np.uint8 and np.bincount(y).tolist() == [50] * 10
    assert _manifest(GOLDEN_FP32).get("master") is None


def test_the_golden_bundles_are_what_make_golden_wrote_and_small() -> None:
    info = json.loads((GOLDEN / "golden.json").read_text())
    assert info["made_by"] == "python tests/golden/make_golden.py"
    for name, folder in BUNDLES.items():
        facts = info["bundles"][name]
        assert hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest() == facts["manifest_sha256"], (
            f"{name}/manifest.json was changed after make_golden.py wrote it: regenerate instead of editing"
        )
        assert facts["version"] == BUNDLE_VERSION
    total = sum(p.stat().st_size for folder in BUNDLES.values() for p in folder.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"the golden bundles take {total} bytes: keep them a few hundred KB"
    assert "python tests/golden/make_golden.py" in (REPO / "tests" / "README.md").read_text()
