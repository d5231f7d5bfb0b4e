"""The device side: onnxruntime runtime modes, torch-free use, bundle checks and the eval/predict/info CLI, on the
golden int8 bundle (``ffedge bench``'s comparison with the torch baseline is in tests/cli/test_bench.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffedge.bundle import MANIFEST, open_bundle
from ffedge.datasets import load_dataset
from ffedge.errors import FFEdgeError
from ffedge.runtime import Runtime
from tests.conftest import TRAIN_ONLY, assert_one_line_error, cli, python


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("mnist-5k")
    return ds.x_test[:200], ds.y_test[:200]


def test_modes_agree_where_they_must(golden_int8: Path, digits) -> None:
    x, y = digits
    rt = Runtime(str(golden_int8), threads=1)
    full = rt.predict(x, "all")
    assert full.scores.shape == (200, 10) and np.isfinite(full.scores).all()
    assert (full.labels == y).mean() > 0.4  # a small 4-epoch net: well above chance (10%)
    head = rt.predict(x, "head")
    np.testing.assert_allclose(head.scores.sum(1), 1.0, atol=1e-4)
    # topk with k = every label is the full search; k = 1 is the head's choice.
    np.testing.assert_array_equal(rt.predict(x, "topk", k=10).labels, full.labels)
    np.testing.assert_array_equal(rt.predict(x, "topk", k=1).labels, head.labels)
    k2 = rt.predict(x, "topk", k=2)
    assert (np.isfinite(k2.scores).sum(1) == 2).all()
    # Chunking the hypotheses does not change anything.
    small = Runtime(str(golden_int8), threads=1, max_hypotheses=30)
    np.testing.assert_allclose(small.predict(x[:20], "all").scores, full.scores[:20], rtol=1e-5, atol=1e-6)


def test_runtime_input_checks(golden_int8: Path, digits) -> None:
    rt = Runtime(str(golden_int8))
    x, _ = digits
    with pytest.raises(FFEdgeError, match="28x28"):
        rt.predict(np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(FFEdgeError, match="NaN"):
        rt.predict(np.full((1, 28, 28), np.nan, np.float32))
    with pytest.raises(FFEdgeError, match="0..255"):
        rt.predict(np.full((1, 28, 28), 300.0))
    with pytest.raises(FFEdgeError, match="unknown mode"):
        rt.predict(x[:1], "nosuch")
    np.testing.assert_array_equal(rt.predict(x[:5].astype(np.float32)).labels, rt.predict(x[:5]).labels)


def test_runtime_works_without_torch(golden_int8: Path, tmp_path: Path) -> None:
    code = (
        "import numpy as np\n"
        "from ffedge.runtime import Runtime\n"
        "from ffedge.datasets import load_dataset\n"
        f"rt = Runtime({str(golden_int8)!r})\n"
        "ds = load_dataset('mnist-5k')\n"
        "p = rt.predict(ds.x_test[:50])\n"
        "print((p.labels == ds.y_test[:50]).mean())\n"
        "assert not [m for m in %r if sys.modules.get(m) is not None]\n" % (TRAIN_ONLY,)
    )
    r = python(code)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) > 0.3
    png = tmp_path / "d.png"
    Image.fromarray(load_dataset("mnist-5k").x_test[0, :, :, 0]).save(png)
    r = cli("predict", str(golden_int8), str(png), "--json", torch_free=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predictions"][0]["file"] == str(png)
    r = cli("train", torch_free=True)
    assert_one_line_error(r, 'pip install ".[train]"')


def _corrupt(bundle: Path, tmp_path: Path, how: str) -> Path:
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    m = json.loads((b / MANIFEST).read_text())
    if how == "missing":
        (b / "layer1.onnx").unlink()
    elif how == "extra":
        (b / "stray.bin").write_bytes(b"x")
    elif how == "flipped":
        data = bytearray((b / "layer2.onnx").read_bytes())
        data[len(data) // 2] ^= 0x01
        (b / "layer2.onnx").write_bytes(bytes(data))
    elif how == "version":
        m["version"] = 99
        (b / MANIFEST).write_text(json.dumps(m))
    elif how == "nokey":
        del m["layers"]
        (b / MANIFEST).write_text(json.dumps(m))
    elif how == "garbage":
        (b / MANIFEST).write_text("{not json")
    elif how == "empty":
        shutil.rmtree(b)
        b.mkdir()
    return b


@pytest.mark.parametrize(
    "how, needle",
    [
        ("missing", "missing file 'layer1.onnx'"),
        ("extra", "unexpected file(s) not in manifest.json: stray.bin"),
        ("flipped", "'layer2.onnx' is corrupt or changed"),
        ("version", "version 99 is not supported"),
        ("nokey", "lacks the key(s) layers"),
        ("garbage", "unreadable manifest"),
        ("empty", "not an ffedge bundle"),
    ],
)
def test_damaged_bundles_fail_with_one_line(golden_int8: Path, tmp_path: Path, how: str, needle: str) -> None:
    b = _corrupt(golden_int8, tmp_path, how)
    with pytest.raises(FFEdgeError, match="."):
        open_bundle(b)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((28, 28), np.uint8))
    assert_one_line_error(cli("predict", str(b), str(x)), needle)


def test_info_reports_checksums(golden_int8: Path, tmp_path: Path) -> None:
    r = cli("info", str(golden_int8))
    assert r.returncode == 0, r.stderr
    assert "checksums: ok" in r.stdout and "QLinearConv" not in r.stderr
    info = json.loads(cli("info", str(golden_int8), "--json").stdout)
    assert info["manifest"]["precision"] == "int8" and info["total_bytes"] > 0
    b = _corrupt(golden_int8, tmp_path, "flipped")
    r = cli("info", str(b))
    assert r.returncode == 1 and "FAILED" in r.stdout


def test_predict_files(golden_int8: Path, tmp_path: Path) -> None:
    ds = load_dataset("mnist-5k")
    good = tmp_path / "digit.png"
    Image.fromarray(ds.x_test[3, :, :, 0]).save(good)
    big = tmp_path / "big.png"
    Image.fromarray(ds.x_test[3, :, :, 0]).resize((56, 56)).save(big)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.repeat(ds.x_test[3], 3, axis=2)).save(rgb)
    batch = tmp_path / "batch.npy"
    np.save(batch, ds.x_test[:4, :, :, 0])
    r = cli("predict", str(golden_int8), str(good), str(batch), "--json", "--top", "3")
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)["predictions"]
    assert len(preds) == 5 and all(len(p["top"]) == 3 for p in preds)
    assert preds[0]["top"][0]["goodness"] >= preds[0]["top"][1]["goodness"]
    assert_one_line_error(cli("predict", str(golden_int8), str(big)), "--resize")
    assert_one_line_error(cli("predict", str(golden_int8), str(rgb)), "3 channel(s)")
    r = cli("predict", str(golden_int8), str(big), str(rgb), "--resize")
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert_one_line_error(cli("predict", str(golden_int8), str(bad)), "cannot read image")
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((28, 28), np.nan, np.float32))
    assert_one_line_error(cli("predict", str(golden_int8), str(nan)), "NaN")
    assert_one_line_error(cli("predict", str(golden_int8), str(tmp_path / "nope.png")), "no such file")
    assert_one_line_error(cli("predict", str(golden_int8), str(tmp_path)), "is a folder")


def test_eval_cli_json(golden_int8: Path) -> None:
    r = cli(
        "eval",
        str(golden_int8),
        "--dataset",
        "mnist-5k",
        "--limit",
        "100",
        "--latency-images",
        "5",
        "--mode",
        "topk",
        "--k",
        "2",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["images"] == 100 and 0.3 < res["accuracy"] <= 1.0
    assert np.asarray(res["confusion"]).sum() == 100
    assert res["latency_batch1"]["p90_ms"] >= res["latency_batch1"]["p50_ms"] > 0
    assert_one_line_error(
        cli("eval", str(golden_int8), "--mode", "nosuch", "--limit", "5"),
        "'nosuch' is not one of 'all', 'head', 'topk'",
    )
