"""The shared-layer-0 graph (``net_shared.onnx``): the same predictions as ``net.onnx`` on encoded hypotheses, in
every mode; bundles without it (made before it existed) still load and run ``net.onnx``; fine-tuning patches it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ffedge.bundle import MANIFEST
from ffedge.bundle.manifest import write_manifest
from ffedge.datasets import load_dataset
from ffedge.errors import FFEdgeError
from ffedge.runtime import Runtime
from tests.conftest import raises_one_line
from tests.device.conftest import finetuned

N_IMAGES = 200


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("mnist-5k")
    return ds.x_test[:N_IMAGES], ds.y_test[:N_IMAGES]


def _bundle(request: pytest.FixtureRequest, name: str) -> Path:
    return request.getfixturevalue(name)


@pytest.mark.parametrize("name", ["golden_int8", "golden_fp32"])
def test_the_exporter_writes_a_shared_graph_and_the_runtime_uses_it(request: pytest.FixtureRequest, name: str) -> None:
    b = _bundle(request, name)
    m = json.loads((b / MANIFEST).read_text())
    assert m["shared"]["file"] == "net_shared.onnx" and m["shared"]["neutral"] == len(m["classes"])
    assert Runtime(b).shared_session is not None
    assert Runtime(b, shared=False).shared_session is None


@pytest.mark.parametrize("name", ["golden_int8", "golden_fp32"])
@pytest.mark.parametrize("mode,k", [("all", 3), ("head", 3), ("topk", 1), ("topk", 2), ("topk", 3)])
def test_shared_and_per_hypothesis_graphs_agree(
    request: pytest.FixtureRequest, digits: tuple[np.ndarray, np.ndarray], name: str, mode: str, k: int
) -> None:
    """Top-1 agreement 100%; scores equal up to float rounding and rare one-step rounding flips in layer 0
    (the image and label parts of the convolution are summed in another order)."""
    b = _bundle(request, name)
    x, _ = digits
    new = Runtime(b, threads=1).predict(x, mode, k)
    old = Runtime(b, threads=1, shared=False).predict(x, mode, k)
    assert (new.labels == old.labels).all()
    assert np.array_equal(np.isfinite(new.scores), np.isfinite(old.scores))
    fin = np.isfinite(old.scores)
    np.testing.assert_allclose(
        new.scores[fin], old.scores[fin], rtol=0, atol=2e-3 * float(np.abs(old.scores[fin]).max())
    )


def test_goodness_of_some_classes_and_chunking(golden_int8: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """``goodness`` with a class subset and with hypotheses split across several runs give the same numbers."""
    x = Runtime(golden_int8).normalize(digits[0][:30])
    whole = Runtime(golden_int8).goodness(x)
    small = Runtime(golden_int8, max_hypotheses=25)  # two images per run
    np.testing.assert_array_equal(small.goodness(x), whole)
    np.testing.assert_array_equal(small.goodness(x, np.array([7, 2])), whole[:, [7, 2]])
    assert small.goodness(x[:0]).shape == (0, 10)
    assert small.predict_normalized(x[:0], "head").scores.shape == (0, 10)


def _without_shared(src: Path, dest: Path) -> Path:
    """``src`` as an exporter that did not know the shared graph wrote it: the file and its manifest key gone."""
    out = Path(shutil.copytree(src, dest))
    m = json.loads((out / MANIFEST).read_text())
    entry = m.pop("shared")
    (out / entry["file"]).unlink()
    del m["files"][entry["file"]]
    write_manifest(out / MANIFEST, m)
    return out


def test_a_bundle_without_a_shared_graph_runs_net_onnx(
    golden_int8: Path, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    old = _without_shared(golden_int8, tmp_path / "old")
    rt = Runtime(old)
    assert rt.shared_session is None
    x, _ = digits
    for mode in ("all", "head", "topk"):
        assert (rt.predict(x, mode).labels == Runtime(golden_int8).predict(x, mode).labels).all()


def test_a_shared_graph_that_does_not_fit_the_manifest_is_refused(golden_int8: Path, tmp_path: Path) -> None:
    """Another file in the shared graph's place (here ``net.onnx``, whose inputs differ) is a one-line error."""
    b = Path(shutil.copytree(golden_int8, tmp_path / "b"))
    m = json.loads((b / MANIFEST).read_text())
    m["shared"]["file"] = "net.onnx"
    write_manifest(b / MANIFEST, m)
    msg = raises_one_line(Runtime, b)
    assert "net.onnx" in msg and "shared" in msg and "labels" in msg


def test_the_manifest_checks_the_shared_entry(golden_int8: Path, tmp_path: Path) -> None:
    for bad, key in (
        ({"file": "net_shared.onnx"}, "shared.neutral"),
        ({"file": "net_shared.onnx", "neutral": 3}, "shared.neutral"),
    ):
        b = Path(shutil.copytree(golden_int8, tmp_path / f"b{len(bad)}{bad.get('neutral')}"))
        m = json.loads((b / MANIFEST).read_text())
        m["shared"] = bad
        (b / MANIFEST).write_text(json.dumps(m))
        with pytest.raises(FFEdgeError, match=key.replace(".", r"\.")):
            Runtime(b)


def test_fine_tuning_patches_the_shared_graph(
    golden_int8: Path, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """After an update of layer 0 (whose weights the shared graph splits), both graphs still agree."""
    x, y = digits
    tuned = finetuned(golden_int8, tmp_path / "tuned", x, y)
    xn = Runtime(tuned).normalize(x[:50])
    assert not np.allclose(Runtime(tuned).goodness(xn), Runtime(golden_int8).goodness(xn))  # layer 0 changed
    new = Runtime(tuned).predict(x, "all")
    old = Runtime(tuned, shared=False).predict(x, "all")
    assert (new.labels == old.labels).all()
    np.testing.assert_allclose(new.scores, old.scores, rtol=0, atol=2e-3 * float(np.abs(old.scores).max()))


@pytest.mark.parametrize("n", [1, 3, 40])
def test_hypotheses_split_across_threads_give_the_same_numbers(
    golden_int8: Path, digits: tuple[np.ndarray, np.ndarray], n: int
) -> None:
    """With ``threads`` > 1 the shared graph's hypotheses run as concurrent single-threaded runs (split by label
    for few images, by image otherwise): the same goodness and predictions as one run, in every mode."""
    x = digits[0][:n]
    one, two = Runtime(golden_int8, threads=1), Runtime(golden_int8, threads=3, max_hypotheses=20)
    assert two.workers == 3 and one.workers == 1
    xn = one.normalize(x)
    np.testing.assert_array_equal(two.goodness(xn), one.goodness(xn))
    np.testing.assert_array_equal(two.goodness(xn, np.array([4, 1, 8, 0])), one.goodness(xn, np.array([4, 1, 8, 0])))
    for mode, k in (("all", 3), ("head", 3), ("topk", 2), ("topk", 5)):
        a, b = one.predict(x, mode, k), two.predict(x, mode, k)
        assert (a.labels == b.labels).all()
        np.testing.assert_array_equal(a.scores, b.scores)
