"""The per-layer normalization option: ``batch`` (default) and ``rms`` through training, export, the manifest,
``ffedge eval`` and the numpy fine-tuning core."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TINY_EXPORT_LAYERS, cli

torch = pytest.importorskip("torch")
pytest.importorskip("brevitas")

from ffedge.finetuning import numerics as ffn  # noqa: E402
from ffedge.errors import FFEdgeError  # noqa: E402
from ffedge.bundle.manifest import parse_manifest  # noqa: E402
from ffedge.train.model import RMS_EPS, FFNet, QuantConfig, RMSNorm, float_copy, parse_layers  # noqa: E402
from ffedge.train.trainer import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def rms_run(tmp_path_factory: pytest.TempPathFactory, small_npz: str) -> Path:
    """A tiny int8 QAT run with rms norms (3 epochs on 600 digits)."""
    from ffedge.train import train_run

    out = tmp_path_factory.mktemp("rms") / "run"
    cfg = TrainConfig(
        dataset=small_npz,
        layers=TINY_EXPORT_LAYERS,
        norm="rms",
        epochs=3,
        batch_size=32,
        head_epochs=10,
        eval_samples=100,
        threads=1,
    )
    train_run(cfg, out)
    return out


@pytest.fixture(scope="module")
def rms_bundle(tmp_path_factory: pytest.TempPathFactory, rms_run: Path) -> Path:
    """Exported through the CLI, as a user does: int8, parity-checked, with master weights."""
    out = tmp_path_factory.mktemp("rms") / "bundle"
    r = cli("export", str(rms_run), "--int8", "--master", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def test_rms_norm_is_per_sample_and_parameter_free() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 6) * torch.tensor([0.1, 1.0, 10.0, 100.0]).view(4, 1, 1, 1)
    norm = RMSNorm()
    z = norm(x)
    assert list(norm.parameters()) == [] and list(norm.buffers()) == []
    torch.testing.assert_close(z.pow(2).mean(dim=(1, 2, 3)), torch.ones(4), rtol=1e-5, atol=1e-5)
    # No statistics cross samples (BatchNorm in training mode mixes positives and negatives): one sample alone
    # gives the same output as in the batch; train and eval mode agree.
    torch.testing.assert_close(norm(x[2:3]), z[2:3])
    norm.eval()
    torch.testing.assert_close(norm(x), z)
    assert torch.equal(norm(torch.zeros(1, 2, 3, 3)), torch.zeros(1, 2, 3, 3))  # eps: no NaN on a dead input


def test_norm_option_builds_and_validates() -> None:
    net = FFNet(2, (8, 8), 10, parse_layers("4x3p,4x3"), QuantConfig(enabled=True), norm="rms")
    assert all(isinstance(layer.norm, RMSNorm) for layer in net.layers)
    assert not any("norm" in k for k in net.state_dict())  # nothing to save for an rms norm
    ff = float_copy(net)
    assert ff.norm == "rms" and all(isinstance(layer.norm, RMSNorm) for layer in ff.layers)
    with pytest.raises(FFEdgeError, match="--norm"):
        TrainConfig(norm="layer").validate()
    # config.json of a run made before the option existed: the BatchNorm it was trained with.
    d = {k: v for k, v in TrainConfig().__dict__.items() if k != "norm"}
    assert TrainConfig.from_dict(d).norm == "batch"


def test_rms_run_exports_int8_passes_parity_and_fuses(rms_bundle: Path) -> None:
    m = _manifest(rms_bundle)
    assert [layer["norm"] for layer in m["layers"]] == ["rms"] * len(m["layers"])
    assert m["parity"]["agreement"] >= 0.99  # the export's own check (default --min-agreement) passed
    for layer in m["layers"]:
        ops = layer["ort_ops"]
        assert ops.get("QLinearConv") == 1 and "BatchNormalization" not in ops, ops
        assert ops.get("Div") == 1 and ops.get("Sqrt") == 1, ops  # the graph computes the rms norm
    master = np.load(rms_bundle / "master.npz")
    assert np.float32(master["layer0.rms_eps"]) == np.float32(RMS_EPS) and "layer0.bn_mean" not in master
    r = cli("info", str(rms_bundle))
    assert r.returncode == 0 and "rms" in r.stdout, r.stderr


def test_eval_scores_an_rms_bundle(rms_bundle: Path, small_npz: str) -> None:
    r = cli("eval", str(rms_bundle), "--dataset", small_npz, "--latency-images", "0", "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["images"] == 200
    # The same 200 held-out images the export's parity check scored the bundle on.
    assert res["accuracy"] == pytest.approx(_manifest(rms_bundle)["parity"]["bundle_accuracy"])
    assert res["accuracy"] > 0.2


def test_numpy_layers_match_onnxruntime_on_rms_layers(rms_bundle: Path) -> None:
    """The fine-tuning core computes the rms norm as the exported graph does (within one output step)."""
    from ffedge.bundle import load_master, open_bundle
    from ffedge.datasets import load_dataset
    from ffedge.runtime.preprocess import normalize
    from ffedge.runtime import make_session

    b = open_bundle(rms_bundle)
    m = b.manifest.to_dict()
    master = load_master(b)
    ds = load_dataset("mnist-5k")
    x = b.encoding.encode(normalize(ds.x_test[:48], m["input"]["mean"], m["input"]["std"]), ds.y_test[:48])
    for i, entry in enumerate(m["layers"]):
        layer = ffn.QuantFFLayer.from_master(master, i, entry)
        assert layer.norm == "rms" and layer.bn_mean is None
        y_ort = make_session(rms_bundle / entry["file"], threads=1).run(["y"], {"x": x})[0]
        _, y, _, _ = layer.forward(x)
        steps = np.abs(y.astype(np.float64) - y_ort) / float(layer.output_scale)
        assert steps.max() <= 1.0 + 1e-3 and np.mean(steps > 0.5) < 1e-3, (i, steps.max())
        arrays = layer.master_arrays(i)
        assert set(arrays) == {f"layer{i}.{k}" for k in ffn.master_keys("rms")}
        assert all(np.array_equal(v, master[k]) and v.shape == master[k].shape for k, v in arrays.items())
        x = y_ort
    lack = {k: v for k, v in master.items() if k != "layer1.rms_eps"}
    with pytest.raises(FFEdgeError, match="layer1.rms_eps"):
        ffn.QuantFFLayer.from_master(lack, 1, m["layers"][1])


def test_finetune_works_on_an_rms_bundle(rms_bundle: Path, small_npz: str, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    r = cli(
        "finetune",
        str(rms_bundle),
        "--data",
        small_npz,
        "--epochs",
        "1",
        "--max-examples",
        "60",
        "--eval-examples",
        "60",
        "--head-epochs",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "version 2" in r.stdout and _manifest(out)["layers"][-1]["norm"] == "rms"


def test_old_manifests_without_norm_still_load(rms_bundle: Path) -> None:
    m = _manifest(rms_bundle)
    old = copy.deepcopy(m)
    for layer in old["layers"]:
        del layer["norm"]
    parsed = parse_manifest(old)
    assert [layer.norm for layer in parsed.layers] == [None] * len(old["layers"])
    assert [layer.norm_kind for layer in parsed.layers] == ["batch"] * len(old["layers"])
    assert parsed.to_dict() == old  # written back unchanged: no key appears
    assert [layer.norm_kind for layer in parse_manifest(m).layers] == ["rms"] * len(m["layers"])
    bad = copy.deepcopy(m)
    bad["layers"][1]["norm"] = "layer"
    with pytest.raises(FFEdgeError, match=r"'layers\[1\]\.norm' must be one of batch, rms") as e:
        parse_manifest(bad)
    assert "\n" not in str(e.value)
