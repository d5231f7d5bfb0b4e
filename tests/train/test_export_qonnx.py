"""`ffedge export --format qonnx`: one QONNX model per FF layer (Brevitas export_qonnx), run under qonnx's executor
and compared with the int8 bundle of the same run under onnxruntime (the CLI: tests/cli/test_export_cli.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("brevitas")
pytest.importorskip("qonnx")

from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.core.onnx_exec import execute_onnx  # noqa: E402

from ffedge.bundle import MANIFEST  # noqa: E402
from ffedge.errors import FFEdgeError  # noqa: E402
from ffedge.fsutil import sha256_file  # noqa: E402
from ffedge.runtime import Runtime  # noqa: E402
from ffedge.train.export_qonnx import export_qonnx_bundle  # noqa: E402
from ffedge.train.parity import random_held_out_of_run  # noqa: E402
from ffedge.train.qonnx_check import qonnx_report  # noqa: E402
from ffedge.train.run_files import read_run_config  # noqa: E402
from tests.conftest import raises_one_line  # noqa: E402

# qonnx runs the convolutions in float on fake-quantized values, onnxruntime in integers: a value on a rounding
# boundary lands one output step apart, which moves a layer's goodness (a mean over thousands of values) by far
# less than this fraction of its largest value (measured: under 3e-4 on the tiny run).
GOODNESS_RTOL = 1e-3
CHECK_SAMPLES = 50


@pytest.fixture(scope="module")
def qonnx_set(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    out = tmp_path_factory.mktemp("qonnx") / "tiny-qonnx"
    export_qonnx_bundle(tiny_run, out, verify_samples=CHECK_SAMPLES)
    return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def test_files_are_qonnx_listed_and_explained(qonnx_set: Path) -> None:
    m = _manifest(qonnx_set)
    assert m["format"] == "ffedge-qonnx" and m["batch"] == 1 and m["opset"] == 13
    assert sorted(m["files"]) == sorted(p.name for p in qonnx_set.iterdir() if p.name != MANIFEST)
    assert all(sha256_file(qonnx_set / n) == d for n, d in m["files"].items())
    for e in m["layers"]:
        model = ModelWrapper(str(qonnx_set / e["file"]))
        quants = model.get_nodes_by_op_type("Quant")
        # layer input, weights, bias, ReLU output: each a Quant node of qonnx's domain (what FINN converts)
        assert len(quants) == 4 and {n.domain for n in quants} == {"qonnx.custom_op.general"}
        assert [v.name for v in model.graph.input] == ["x"]
        assert [v.name for v in model.graph.output] == ["y", "goodness", "feature"]
        assert model.get_tensor_shape("x") == [1, *e["in_shape"]] and model.get_tensor_shape("y") == [
            1,
            *e["out_shape"],
        ]
    readme = (qonnx_set / "README.md").read_text()
    assert "Not tested with FINN's compiler" in readme and "label_channels.npy" in readme
    table = np.load(qonnx_set / "label_channels.npy")
    assert table.shape == (len(m["classes"]) + 1, 1, 28, 28) and not table[-1].any()  # last row: neutral


def test_files_as_written_run_under_qonnx_like_the_int8_bundle(
    qonnx_set: Path, int8_bundle: Path, tiny_run: Path
) -> None:
    """The batch-1 files, fed as README.md says (image, then label_channels.npy's row), under execute_onnx one
    hypothesis at a time: goodness over all labels as the int8 bundle's onnxruntime session computes it."""
    m = _manifest(qonnx_set)
    models = [ModelWrapper(str(qonnx_set / e["file"])) for e in m["layers"]]
    table = np.load(qonnx_set / "label_channels.npy")
    x, _ = random_held_out_of_run(read_run_config(tiny_run), 3)
    k = len(m["classes"])
    g_q = np.zeros((len(x), k), np.float32)
    for n in range(len(x)):
        for c in range(k):
            cur = np.concatenate([x[n : n + 1], table[c][None]], axis=1)
            for i, model in enumerate(models):
                out = execute_onnx(model, {"x": cur})
                cur = out["y"]
                g_q[n, c] += out["goodness"][0] if i in m["predict_layers"] else 0.0
    g_o = Runtime(str(int8_bundle)).goodness(x)
    assert np.abs(g_q - g_o).max() <= GOODNESS_RTOL * np.abs(g_o).max()
    assert (g_q.argmax(1) == g_o.argmax(1)).all()


def test_the_export_check_is_recorded_and_tight(qonnx_set: Path) -> None:
    c = _manifest(qonnx_set)["check"]
    assert c["samples"] == CHECK_SAMPLES and c["hypotheses"] == CHECK_SAMPLES * 10
    assert c["executor"].startswith("qonnx ") and "onnxruntime" in c["reference"]
    assert c["agreement"] >= 0.99 and abs(c["qonnx_accuracy"] - c["bundle_accuracy"]) <= 0.02
    assert 0 < c["max_goodness"] and c["max_goodness_diff"] <= GOODNESS_RTOL * c["max_goodness"]
    for layer in c["layers"]:
        assert layer["max_goodness_diff"] <= GOODNESS_RTOL * layer["max_goodness"]


def test_the_check_fails_on_a_wrong_layer_and_on_a_changed_file(
    tmp_path: Path, qonnx_set: Path, int8_bundle: Path, tiny_run: Path
) -> None:
    """A layer whose weights changed (its manifest entry updated to match) disagrees with the bundle; a file
    changed behind the manifest's back is refused."""
    bad = tmp_path / "bad"
    shutil.copytree(qonnx_set, bad)
    m = _manifest(bad)
    last = m["layers"][-1]["file"]
    model = ModelWrapper(str(bad / last))
    conv = model.get_nodes_by_op_type("Conv")[0]
    weight = model.find_producer(conv.input[1]).input[0]  # the float tensor behind the weights' Quant node
    model.set_initializer(weight, -model.get_initializer(weight))
    model.save(str(bad / last))
    m["files"][last] = sha256_file(bad / last)
    (bad / MANIFEST).write_text(json.dumps(m))
    report = qonnx_report(bad, tiny_run, samples=CHECK_SAMPLES, bundle=int8_bundle)
    assert report["agreement"] < 0.9 and report["layers"][-1]["max_goodness_diff"] > 0.1
    m["files"][last] = "0" * 64
    (bad / MANIFEST).write_text(json.dumps(m))
    assert "sha256" in raises_one_line(qonnx_report, bad, tiny_run, 10, None, None, int8_bundle)


def test_failed_check_leaves_nothing_and_force_replaces_only_ffedge_folders(
    tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ffedge.train.export_qonnx as export_qonnx

    out = tmp_path / "q"
    export_qonnx_bundle(tiny_run, out, verify_samples=0)
    assert "check" not in _manifest(out)
    with pytest.raises(FFEdgeError, match="--force"):
        export_qonnx_bundle(tiny_run, out, verify_samples=0)
    real = export_qonnx.qonnx_report

    def broken(*a, **kw):
        r = real(*a, **kw)
        r["agreement"] = 0.5  # what a broken export (wrong scales, a lost quantizer) looks like
        return r

    monkeypatch.setattr(export_qonnx, "qonnx_report", broken)
    with pytest.raises(FFEdgeError, match="qonnx check failed"):
        export_qonnx_bundle(tiny_run, out, force=True, verify_samples=10)
    assert "check" not in _manifest(out)  # the old file set is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # no temp folder left
    monkeypatch.undo()
    (out / "mine.txt").write_text("a user's file")
    with pytest.raises(FFEdgeError, match="not one"):
        export_qonnx_bundle(tiny_run, out, force=True, verify_samples=0)
    assert (out / "mine.txt").exists()


def test_label_mixed_into_the_image_and_rms_norm(tmp_path: Path, small_npz: str) -> None:
    """Encodings without label channels (fourier 'add' here) are built by ffedge.labels from the manifest, and the
    rms norm's ops export and run under qonnx too."""
    from ffedge.train import TrainConfig, train_run

    run = tmp_path / "run"
    cfg = TrainConfig(
        dataset=small_npz,
        layers="8x5p,16x3",
        epochs=1,
        batch_size=32,
        head_epochs=1,
        eval_samples=20,
        threads=1,
        norm="rms",
        label_params={"mode": "add"},
    )
    train_run(cfg, run)
    m = export_qonnx_bundle(run, tmp_path / "q", verify_samples=20)
    assert "label_channels" not in m and "label_channels.npy" not in m["files"]
    assert "encoding_from_config" in (tmp_path / "q" / "README.md").read_text()
    assert [e["norm"] for e in m["layers"]] == ["rms", "rms"]
    c = m["check"]
    assert c["agreement"] >= 0.95 and c["max_goodness_diff"] <= GOODNESS_RTOL * c["max_goodness"]
