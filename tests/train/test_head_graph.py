"""The one-pass head graph (``net_head.onnx``): mode ``head`` in one onnxruntime call gives what the neutral pass on
``net.onnx`` and ``head.onnx`` give; fine-tuning patches it (the layers it holds and the head); a file that does not
fit the manifest is refused; bundles without it (the golden ones, made before it) run the two calls."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from ffedge.bundle import MANIFEST
from ffedge.bundle.manifest import write_manifest
from ffedge.bundle.names import HEAD_NET_FILE, INPUT, PROBS
from ffedge.datasets import load_dataset
from ffedge.runtime import Runtime
from tests.conftest import bundle_without, raises_one_line
from tests.device.conftest import finetuned


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("mnist-5k")
    return ds.x_test[:200], ds.y_test[:200]


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """The same probabilities up to float rounding, but for a few images: the head graph computes layer 0 split
    (image part + label constant, as ``net_shared.onnx`` does), where a sum on a rounding boundary can land one
    output step away from ``net.onnx``'s (tests/train/test_export_shared.py), which moves that image's
    probabilities a little."""
    rows = np.isclose(got, want, rtol=1e-5, atol=1e-6).all(1)
    assert rows.mean() >= 0.97 and np.abs(got - want).max() < 1e-2


def _two_calls(bundle: Path) -> Runtime:
    """A runtime that runs mode ``head`` as before the head graph: the neutral pass on ``net.onnx``, then the head."""
    rt = Runtime(bundle, threads=1)
    rt.use_head_net = False
    return rt


@pytest.mark.parametrize("name", ["int8_bundle", "fp32_bundle"])
def test_one_call_gives_what_two_calls_give(
    request: pytest.FixtureRequest, digits: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    b = request.getfixturevalue(name)
    m = json.loads((b / MANIFEST).read_text())
    assert m["head_net"]["file"] == HEAD_NET_FILE
    # It stops at the last head layer: the layers after it are not in the file.
    inits = {t.name for t in onnx.load(str(b / HEAD_NET_FILE)).graph.initializer}
    last = len(m["layers"]) - 1
    assert m["head"]["layers"] == list(range(last)) and not any(t.startswith(f"l{last}_") for t in inits)
    x, _ = digits
    one = Runtime(b, threads=1)
    got, want = one.predict(x, "head"), _two_calls(b).predict(x, "head")
    assert one._head_net is not None  # the graph ran
    assert (got.labels == want.labels).mean() >= 0.99
    _close(got.scores, want.scores)
    small = Runtime(b, threads=1, max_hypotheses=7)  # chunked: 7 images per call
    np.testing.assert_array_equal(small.predict(x[:30], "head").scores, one.predict(x[:30], "head").scores)
    assert one.predict(x[:0], "head").scores.shape == (0, 10)


def test_fine_tuning_patches_the_head_graph(
    master_bundle: Path, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """After an update of layers 0 and 1 and a head refit, one call still gives what two calls give."""
    x, y = digits
    tuned = finetuned(master_bundle, tmp_path / "tuned", x, y, head_epochs=2)
    feeds = {INPUT: Runtime(master_bundle).normalize(x[:20])}
    probs = [Runtime(b).head_net_session.run([PROBS], feeds)[0] for b in (master_bundle, tuned)]  # type: ignore[union-attr]
    assert not np.allclose(*probs)  # the patched graph computes the refitted head on the updated layers
    got, want = Runtime(tuned, threads=1).predict(x, "head"), _two_calls(tuned).predict(x, "head")
    assert (got.labels == want.labels).mean() >= 0.99
    _close(got.scores, want.scores)


def test_a_head_graph_that_does_not_fit_the_manifest_is_refused(int8_bundle: Path, tmp_path: Path) -> None:
    """Another file in its place (here ``net_shared.onnx``, whose inputs and outputs differ) is a one-line error
    when mode ``head`` opens it."""
    b = Path(shutil.copytree(int8_bundle, tmp_path / "b"))
    m = json.loads((b / MANIFEST).read_text())
    m["head_net"]["file"] = "net_shared.onnx"
    write_manifest(b / MANIFEST, m)
    msg = raises_one_line(lambda: Runtime(b).predict(load_dataset("mnist-5k").x_test[:2], "head"))
    assert "net_shared.onnx" in msg and "head_net" in msg


def test_a_bundle_without_a_head_graph_runs_two_calls(
    int8_bundle: Path, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    rt = Runtime(bundle_without(int8_bundle, "head_net", tmp_path / "old"))
    assert rt.head_net_session is None
    x, _ = digits
    _close(Runtime(int8_bundle).predict(x, "head").scores, rt.predict(x, "head").scores)
