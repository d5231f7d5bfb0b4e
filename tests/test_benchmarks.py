"""The benchmark scripts: --help for each, a real --quick smoke run, and a clear error for missing data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffedge.datasets import load_dataset

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = ["accuracy.py", "label_ablation.py", "ff_vs_backprop.py", "finetune_shift.py"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    r = _run(str(BENCH / script), "--help")
    assert r.returncode == 0, r.stderr
    assert "--quick" in r.stdout and "--out" in r.stdout


def test_missing_dataset_is_one_clear_line(tmp_path: Path) -> None:
    r = _run(str(BENCH / "accuracy.py"), "--quick", "--datasets", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "acc"))
    assert r.returncode != 0
    assert "cifar10.npz not found" in r.stderr and "make-cifar10" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "acc.json").exists()


def test_label_ablation_quick_runs_for_real(tmp_path: Path) -> None:
    pytest.importorskip("brevitas")
    ds = load_dataset("mnist-5k")  # stands in for mnist.npz: same format, no ../shared needed
    np.savez(tmp_path / "mnist.npz", x_train=ds.x_train[..., 0], y_train=ds.y_train, x_test=ds.x_test[..., 0], y_test=ds.y_test)
    out = tmp_path / "abl"
    r = _run(str(BENCH / "label_ablation.py"), "--quick", "--datasets", "mnist", "--encodings", "onehot,fourier",
             "--data-dir", str(tmp_path), "--work", str(tmp_path / "runs"), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert [row["labels"] for row in result["rows"]] == ["onehot", "fourier"]
    for row in result["rows"]:
        assert row["n_train"] + row["n_test"] == 1500 and row["n_test"] == 500
        metrics = json.loads((tmp_path / "runs" / f"mnist-{row['labels']}" / "metrics.json").read_text())
        assert row["test_accuracy"] == metrics["test_accuracy"]
        assert 0.0 <= row["test_accuracy"] <= 1.0
    md = out.with_suffix(".md").read_text()
    assert "| MNIST | onehot | 1 |" in md and "Command: `python benchmarks/label_ablation.py --quick" in md


def test_saved_tensor_meter_counts_what_autograd_holds() -> None:
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCH))
    from ff_vs_backprop import SavedTensorMeter

    meter = SavedTensorMeter()
    w = torch.ones(1000, requires_grad=True)  # 4,000 bytes
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        x = torch.full((1000,), 2.0)
        y = (w * x).exp()  # mul saves x (for w's gradient), exp saves its output: 2 storages of 4,000 bytes
        assert meter.live == 8000
        y.sum().backward()
    assert meter.peak == 8000 and meter.live == 0
    assert torch.allclose(w.grad, 2 * torch.exp(2 * torch.ones(1000)))
