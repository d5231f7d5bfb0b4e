"""The device wing's fixtures: the committed golden bundles, never a trained model.

Nothing here (nor in any test under tests/device) needs torch, brevitas or onnx: this folder runs on a
device-only install (``pip install -e ".[test]"``), as CI does once (``.ci/run``); only test_onnx_patch.py uses
the onnx package, where it is installed, as the reference its checks compare with (skipped without it). The bundles under test are
copies of ``tests/golden/bundle-int8`` and ``tests/golden/bundle-fp32``, real Brevitas-trained exports made by
``tests/golden/make_golden.py`` (see tests/golden/README.md); a test that changes a bundle copies it again first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ffedge.bundle import MANIFEST
from ffedge.bundle.manifest import write_manifest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
GOLDEN_INT8 = GOLDEN / "bundle-int8"  # int8, with master weights and replay examples (exported with --master)
GOLDEN_FP32 = GOLDEN / "bundle-fp32"  # fp32, the same run


def _copy(src: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    if not (src / MANIFEST).is_file():
        pytest.fail(f"{src} is missing: regenerate the golden bundles with `python tests/golden/make_golden.py`")
    return Path(shutil.copytree(src, tmp_path_factory.mktemp("golden") / name))


@pytest.fixture(scope="session")
def golden_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy (shared by the session: copy it again to change it) of the golden int8 bundle: a tiny int8 QAT run
    exported with ``--master`` (float master weights and 500 replay digits, so it can be fine-tuned)."""
    return _copy(GOLDEN_INT8, tmp_path_factory, "golden-int8")


@pytest.fixture(scope="session")
def golden_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy (shared by the session) of the golden fp32 bundle: the same run exported to fp32."""
    return _copy(GOLDEN_FP32, tmp_path_factory, "golden-fp32")


@pytest.fixture(scope="session")
def golden_int8_plain(tmp_path_factory: pytest.TempPathFactory, golden_int8: Path) -> Path:
    """The golden int8 bundle as an export without ``--master`` writes it: no master weights, no replay examples
    (their files and manifest entries removed; everything else is the exporter's)."""
    out = Path(shutil.copytree(golden_int8, tmp_path_factory.mktemp("golden") / "golden-int8-plain"))
    m = json.loads((out / MANIFEST).read_text())
    for key in ("master", "replay"):
        entry = m.pop(key, None)
        if entry:
            (out / entry["file"]).unlink()
            del m["files"][entry["file"]]
    write_manifest(out / MANIFEST, m)
    return out


@pytest.fixture(scope="session")
def tiny_run() -> None:
    """The device wing never trains: a test here that asks for a trained run (or a bundle exported from one) fails."""
    pytest.fail("tests/device must not train a model: use the golden bundles (golden_int8, golden_fp32)")


def finetuned(bundle: Path, out: Path, x: np.ndarray, y: np.ndarray, head_epochs: int = 1) -> Path:
    """``bundle`` fine-tuned into ``out`` (layers 0 and 1, one epoch) on 100 of the digits ``x``, ``y`` [N, H, W, 1],
    scored on the others: a real update of the layer-0 weights that the whole-net graphs split or copy."""
    from ffedge.finetuning import FinetuneConfig, finetune

    data = out.parent / f"{out.name}-data.npz"
    np.savez(data, x_train=x[:100, :, :, 0], y_train=y[:100], x_test=x[100:, :, :, 0], y_test=y[100:])
    cfg = FinetuneConfig(
        data=f"npz:{data}", layers="0,1", epochs=1, max_examples=64, eval_examples=50, head_epochs=head_epochs
    )
    finetune(bundle, cfg, out=out, reporter=None)
    return out
