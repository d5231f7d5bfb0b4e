"""The top-k graph (``net_topk.onnx``): mode ``topk`` in one onnxruntime call gives what the three calls (neutral
pass, head, candidates on the shared graph) give; chunking; fine-tuning patches it (the layers and the head);
a file that does not fit the manifest is refused; bundles without it run the three calls."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ffedge.bundle import MANIFEST
from ffedge.bundle.manifest import write_manifest
from ffedge.bundle.names import INPUT, PROBS, TOPK_K
from ffedge.datasets import load_dataset
from ffedge.runtime import Runtime
from tests.conftest import bundle_without, raises_one_line
from tests.device.conftest import finetuned

N_IMAGES = 200


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("mnist-5k")
    return ds.x_test[:N_IMAGES], ds.y_test[:N_IMAGES]


def _three_calls(bundle: Path, **kw: object) -> Runtime:
    """A runtime that runs mode ``topk`` as before the top-k graph: neutral pass, head, shared graph."""
    rt = Runtime(bundle, **kw)  # type: ignore[arg-type]
    rt.use_topk = False
    return rt


def _agree(a: np.ndarray, b: np.ndarray) -> None:
    """Same candidates (-inf elsewhere) and the same goodness up to float rounding."""
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    fin = np.isfinite(a)
    np.testing.assert_allclose(a[fin], b[fin], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["golden_int8", "golden_fp32"])
@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_one_call_gives_what_three_calls_give(
    request: pytest.FixtureRequest, digits: tuple[np.ndarray, np.ndarray], name: str, k: int
) -> None:
    b = request.getfixturevalue(name)
    x, _ = digits
    one = Runtime(b, threads=1)
    assert one.topk_session is not None
    got, want = one.predict(x, "topk", k), _three_calls(b, threads=1).predict(x, "topk", k)
    assert one._topk is not None  # the graph ran
    assert (got.labels == want.labels).all()
    assert (np.isfinite(got.scores).sum(1) == k).all()
    _agree(got.scores, want.scores)


def test_chunks_and_empty_batches(golden_int8: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x = Runtime(golden_int8).normalize(digits[0][:30])
    whole = Runtime(golden_int8).predict_normalized(x, "topk", 3)
    small = Runtime(golden_int8, max_hypotheses=9)  # two images per call at k = 3
    np.testing.assert_array_equal(small.predict_normalized(x, "topk", 3).scores, whole.scores)
    assert small.predict_normalized(x[:0], "topk", 3).scores.shape == (0, 10)


def test_the_per_hypothesis_path_and_low_memory_mode_do_not_open_it(golden_int8: Path) -> None:
    assert Runtime(golden_int8, shared=False).topk_session is None
    assert Runtime(golden_int8, stream=True).topk_session is None
    assert Runtime(golden_int8).head_net_session is None  # made before net_head.onnx: mode head runs two calls


def test_fine_tuning_patches_the_topk_graph(
    golden_int8: Path, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """After an update of layers 0 and 1 and a head refit, one call still gives what three calls give."""
    x, y = digits
    tuned = finetuned(golden_int8, tmp_path / "tuned", x, y, head_epochs=2)
    feeds = {INPUT: Runtime(golden_int8).normalize(x[:20]), TOPK_K: np.array([2])}
    probs = [Runtime(b).topk_session.run([PROBS], feeds)[0] for b in (golden_int8, tuned)]  # type: ignore[union-attr]
    assert not np.allclose(*probs)  # the patched graph computes the refitted head
    got, want = Runtime(tuned).predict(x, "topk", 2), _three_calls(tuned).predict(x, "topk", 2)
    assert (got.labels == want.labels).all()
    _agree(got.scores, want.scores)


def test_a_topk_graph_that_does_not_fit_the_manifest_is_refused(golden_int8: Path, tmp_path: Path) -> None:
    """Another file in its place (here ``net_shared.onnx``, whose inputs differ) is a one-line error when mode
    ``topk`` opens it."""
    b = Path(shutil.copytree(golden_int8, tmp_path / "b"))
    m = json.loads((b / MANIFEST).read_text())
    m["topk"]["file"] = "net_shared.onnx"
    write_manifest(b / MANIFEST, m)
    msg = raises_one_line(lambda: Runtime(b).predict(load_dataset("mnist-5k").x_test[:2], "topk", 2))
    assert "net_shared.onnx" in msg and "topk" in msg


def test_a_bundle_without_a_topk_graph_runs_three_calls(
    golden_int8: Path, tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    rt = Runtime(bundle_without(golden_int8, "topk", tmp_path / "old"))
    assert rt.topk_session is None
    x, _ = digits
    _agree(rt.predict(x, "topk", 2).scores, Runtime(golden_int8).predict(x, "topk", 2).scores)
