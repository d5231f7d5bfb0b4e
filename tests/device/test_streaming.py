"""Low-memory mode (``Runtime(stream=True)``, ``--low-memory``) on the golden bundles: the same predictions and goodness
as the normal mode, one session open at a time, and the CLI flag. Memory itself is measured by
benchmarks/predict_memory.py, never asserted here (machines are noisy)."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest

from ffedge.datasets import load_dataset
from ffedge.runtime import Runtime, session, streaming
from tests.conftest import cli


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_dataset("mnist-5k").x_test[:20]  # 200 hypotheses: several streaming passes of 64


@pytest.mark.parametrize("which", ["golden_int8", "golden_fp32"])
def test_stream_predicts_as_the_normal_mode(which: str, digits: np.ndarray, request: pytest.FixtureRequest) -> None:
    bundle = str(request.getfixturevalue(which))
    normal, low = Runtime(bundle, threads=1), Runtime(bundle, threads=1, stream=True)
    assert low.fused_session is None and low.head_session is None and low.max_hypotheses == streaming.STREAM_HYPOTHESES
    x = normal.normalize(digits)
    np.testing.assert_allclose(low.goodness(x), normal.goodness(x), rtol=1e-6, atol=1e-6)
    for mode, k in [("all", 3), ("head", 3), ("topk", 3), ("topk", 1)]:
        want, got = normal.predict(digits, mode, k), low.predict(digits, mode, k)
        np.testing.assert_array_equal(got.labels, want.labels, err_msg=mode)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-6, err_msg=mode)  # -inf where topk skips
    g, feats = low.forward(low.encoding.neutral(x[:3]), low.head_layers)
    g0, feats0 = normal.forward(normal.encoding.neutral(x[:3]), normal.head_layers)
    np.testing.assert_allclose(g, g0, rtol=1e-6, atol=1e-6)
    for f, f0 in zip(feats, feats0, strict=True):
        np.testing.assert_allclose(f, f0, rtol=1e-6, atol=1e-6)


def test_stream_holds_one_session_at_a_time(
    golden_int8: Path, digits: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    alive, most = [0], [0]

    def counting(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert kwargs == {"arena": False, "mem_pattern": False, "optimize": True}
        session = make_session(path, *args, **kwargs)
        opened.append(Path(path).name)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(session, lambda: alive.__setitem__(0, alive[0] - 1))
        return session

    make_session = session.make_session
    monkeypatch.setattr(session, "make_session", counting)
    rt = Runtime(str(golden_int8), threads=1, stream=True)
    assert opened == []  # nothing at start
    layers = [layer.file for layer in rt.bundle.layers]
    rt.predict(digits[:1], "all")
    assert opened == layers and most[0] == 1 and alive[0] == 0  # never net.onnx, never the head
    opened.clear()
    rt.predict(digits[:1], "head")
    assert opened == [*layers[: max(rt.head_layers) + 1], rt.bundle.manifest.head.file] and most[0] == 1


def test_low_memory_cli(golden_int8: Path, tmp_path: Path) -> None:
    x = load_dataset("mnist-5k").x_test[:3]
    np.save(tmp_path / "three.npy", x)
    for mode in ("all", "topk"):
        args = ["predict", str(golden_int8), str(tmp_path / "three.npy"), "--mode", mode, "--json", "--threads", "1"]
        normal, low = cli(*args, torch_free=True), cli(*args, "--low-memory", torch_free=True)
        assert normal.returncode == 0 and low.returncode == 0, low.stderr
        assert json.loads(low.stdout) == json.loads(normal.stdout)
    evals = [
        cli("eval", str(golden_int8), "--limit", "30", "--latency-images", "2", "--json", *extra, torch_free=True)
        for extra in ([], ["--low-memory"])
    ]
    assert all(r.returncode == 0 for r in evals), evals[1].stderr
    normal_eval, low_eval = (json.loads(r.stdout) for r in evals)
    assert low_eval["low_memory"] is True and normal_eval["low_memory"] is False and low_eval["images"] == 30
    assert low_eval["accuracy"] == normal_eval["accuracy"] and low_eval["confusion"] == normal_eval["confusion"]
    help_text = " ".join(cli("predict", "--help").stdout.split())
    assert "--low-memory" in help_text and "slower" in help_text
