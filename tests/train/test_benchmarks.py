"""The benchmark scripts: --help for each, a real --quick run of each, where results go, and clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffedge.datasets import load_dataset
from tests.conftest import REPO

BENCH = REPO / "benchmarks"
SCRIPTS = [
    "accuracy.py",
    "label_ablation.py",
    "ff_vs_backprop.py",
    "finetune_shift.py",
    "default_recipe.py",
    "scaling.py",
    "recipe_screen.py",
    "head_layers.py",
    "mode_latency.py",
]
TINY = "--layers 8x5p,16x3p --head-epochs 2 --eval-samples 10"  # the smallest network and head: the pipeline, not the accuracy


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    r = _run(str(BENCH / script), "--help")
    assert r.returncode == 0, r.stderr
    assert "--quick" in r.stdout and "--out" in r.stdout


def test_missing_dataset_is_one_clear_line(tmp_path: Path) -> None:
    r = _run(
        str(BENCH / "accuracy.py"),
        "--quick",
        "--datasets",
        "cifar10",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "acc"),
    )
    assert r.returncode != 0
    assert "cifar10.npz not found" in r.stderr and "make-cifar10" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "acc.json").exists()


def test_time_to_accuracy_quick_runs_for_real(tmp_path: Path) -> None:
    """--quick with no --out from a copy of benchmarks/, --dataset mnist read from --data-dir: results/quick/."""
    pytest.importorskip("brevitas")
    root, committed = _clone(tmp_path)
    data = _digits(tmp_path / "data", 300, 200)
    # The smallest honest run: two scoring points per method on 100 held-out digits, 300 training digits.
    args = ["--dataset", "mnist", "--budget-s", "4", "--every-s", "2"]  # --quick: ff and backprop
    args += ["--eval-images", "100", "--threads", "1"]
    r = _quick(root, "time_to_accuracy.py", data, *args)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    assert _checksums(root / "benchmarks" / "results") == committed
    out = root / "benchmarks" / "results" / "quick" / "time_to_accuracy"
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["ff", "backprop"] and result["settings"]["eval_images"] == 100 and result["quick"]
    assert (
        result["settings"]["dataset"]
        == f"npz:{root / 'runs' / 'bench-time_to_accuracy-quick' / 'data' / 'quick-100.npz'}"
    )
    for row in rows.values():
        ts = [pt["train_seconds"] for pt in row["points"]]
        assert len(ts) >= 2 and ts == sorted(ts) and len(set(ts)) == len(ts), ts
        assert row["stopped_by"] == "budget" and ts[0] >= 2 and ts[-1] >= 4 and row["train_seconds"] == ts[-1]
        assert all(pt["probe_seconds"] > 0 and 0.0 <= pt["accuracy"] <= 1.0 for pt in row["points"])
    # The default recipe trains in float until its last epoch: a 4 s budget stops it in the float phase,
    # and the run is quantized (calibrated) before the int8 export.
    assert not any(pt["fake_quant"] for pt in rows["ff"]["points"]) and not any(
        pt["fake_quant"] for pt in rows["backprop"]["points"]
    )
    int8 = rows["ff"]["int8"]
    assert int8["images"] == 100 and 0.0 <= int8["accuracy"] <= 1.0 and int8["parity"]
    assert (root / "runs" / "bench-time_to_accuracy-quick").is_dir()
    md = out.with_suffix(".md").read_text()
    assert "| method | trained | final accuracy, torch | int8 ORT | 90% | 95% | 97% | 98% | 99% |" in md
    assert "| FF, ffedge default (int8 QAT) |" in md and "\n| backprop |" in md and "scoring time" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Run again: both results are kept (nothing trains); with other settings a kept result is refused.
    again = _quick(root, "time_to_accuracy.py", data, *args)
    assert again.returncode == 0 and "ff: kept from" in again.stdout and "backprop: kept from" in again.stdout
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == result["rows"]
    other = _quick(root, "time_to_accuracy.py", data, *[("5" if a == "4" else a) for a in args])
    assert other.returncode != 0 and "other settings (budget_s)" in other.stderr and "Traceback" not in other.stderr
    assert _checksums(root / "benchmarks" / "results") == committed


def test_time_to_accuracy_help_and_usage_errors(tmp_path: Path) -> None:
    import importlib.util

    script = str(BENCH / "time_to_accuracy.py")
    r = _run(script, "--help")
    assert r.returncode == 0 and "--quick" in r.stdout and "--out" in r.stdout and "nohup" in r.stdout
    r = _run(script, "--eval-images", "500", "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "at least 1000" in r.stderr
    r = _run(script, "--quick", "--paper-every-s", "0", "--out", str(tmp_path / "t"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "t.json").exists()
    if importlib.util.find_spec("ffedge.train.presets") is None:
        r = _run(
            script,
            "--quick",
            "--methods",
            "paper,backprop",
            "--out",
            str(tmp_path / "t"),
            "--work",
            str(tmp_path / "w"),
        )
        assert (
            r.returncode == 1
            and "preset 'paper' not available in this ffedge" in r.stderr
            and "--methods ff,backprop" in r.stderr
        )
        assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


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


def test_out_stem_keeps_quick_runs_out_of_the_committed_results(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    from common import QUICK_RESULTS, RESULTS, ROOT, out_stem, work_dir

    assert RESULTS == BENCH / "results" and QUICK_RESULTS == BENCH / "results" / "quick"
    assert out_stem("accuracy", None, quick=False) == RESULTS / "accuracy"
    assert out_stem("accuracy", None, quick=True) == QUICK_RESULTS / "accuracy"
    assert out_stem("accuracy", tmp_path / "mine", quick=True) == tmp_path / "mine"
    assert work_dir("bench-x", None, quick=False) == ROOT / "runs" / "bench-x"
    assert work_dir("bench-x", None, quick=True) == ROOT / "runs" / "bench-x-quick"
    assert work_dir("bench-x", Path("rel"), quick=True) == Path.cwd() / "rel"
    assert "/benchmarks/results/quick/" in (REPO / ".gitignore").read_text().splitlines()


def _digits(folder: Path, n_train: int, n_test: int) -> Path:
    """A small mnist.npz (the embedded mnist-5k's first digits, same format as the shared file) in folder."""
    ds = load_dataset("mnist-5k")
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "mnist.npz",
        x_train=ds.x_train[:n_train, ..., 0],
        y_train=ds.y_train[:n_train],
        x_test=ds.x_test[:n_test, ..., 0],
        y_test=ds.y_test[:n_test],
    )
    return folder


def _checksums(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "quick" not in p.relative_to(folder).parts
    }


def _clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of benchmarks/ (scripts and committed results, as a fresh clone has them) in tmp_path/clone, so that
    the defaults (results/quick/, runs/) land there and not in this checkout; and the committed results' checksums."""
    root = tmp_path / "clone"
    shutil.copytree(BENCH, root / "benchmarks", ignore=shutil.ignore_patterns("__pycache__", "quick"))
    committed = _checksums(BENCH / "results")
    assert _checksums(root / "benchmarks" / "results") == committed and "accuracy.json" in committed
    return root, committed


def _quick(root: Path, script: str, data: Path, *args: str) -> subprocess.CompletedProcess:
    """`python benchmarks/SCRIPT --quick --data-dir DATA ARGS` of the copy in root, with this checkout's ffedge."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), "--quick", "--data-dir", str(data), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=root.parent,
    )


QUICK_CASES = {  # script -> options for its --quick run (smaller ones it supports); the data folder holds mnist.npz only
    "head_layers.py": [],  # trains its own tiny run on the embedded mnist-5k
    "mode_latency.py": [],  # the golden bundle
    "accuracy.py": ["--train-args", TINY],  # fashion_mnist and cifar10 are skipped, as with the shared data folder
    "label_ablation.py": ["--encodings", "onehot,fourier", "--train-args", TINY],  # cifar10 skipped
    "ff_vs_backprop.py": ["--dataset", "mnist", "--layers", "8x3p"],  # --quick: ff-layer and backprop
    "finetune_shift.py": ["--train-images", "300", "--train-args", TINY],
    "default_recipe.py": ["--train-args", TINY],
    "scaling.py": ["--dataset", "mnist", "--rows", "1x2,2x1-data,2x1-layers", "--train-args", TINY],
    "recipe_screen.py": [
        "--base",
        "--epochs 1 --no-quant --qat-epochs 0 --head-epochs 0 --eval-samples 0 --layers 8x5p,16x3p",
    ],
}


@pytest.mark.parametrize("script", QUICK_CASES)
def test_quick_runs_end_to_end_and_leaves_committed_results_alone(tmp_path: Path, script: str) -> None:
    """--quick with no --out, from a copy of benchmarks/ (scripts and committed results): the defaults land in the
    copy (results/quick/, runs/), not in this checkout. Data: a 300/200 mnist.npz written here, or the embedded mnist-5k."""
    pytest.importorskip("brevitas")
    root, committed = _clone(tmp_path)
    data = _digits(tmp_path / "data", 300, 200)
    r = _quick(root, script, data, *QUICK_CASES[script])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _checksums(root / "benchmarks" / "results") == committed
    name = script.removesuffix(".py")
    quick = root / "benchmarks" / "results" / "quick"
    result = json.loads((quick / f"{name}.json").read_text())
    assert f"Command: `python benchmarks/{script} --quick" in (quick / f"{name}.md").read_text()
    if script == "accuracy.py":
        (row,) = result["rows"]
        assert result["quick"] and row["epochs"] == 1 and (row["n_train"], row["n_test"]) == (300, 200)
        assert 0.0 <= row["int8_ort"]["all"]["accuracy"] <= 1.0 and row["parity"]
        assert (
            sorted(result["skipped"]) == ["cifar10", "fashion_mnist"] and "make-cifar10" in result["skipped"]["cifar10"]
        )
        assert "skipped: " in r.stdout and "Skipped: " in (quick / f"{name}.md").read_text()
    elif script == "label_ablation.py":
        assert result["quick"] and list(result["skipped"]) == ["cifar10"]
        assert [row["labels"] for row in result["rows"]] == ["onehot", "fourier"]
        for row in result["rows"]:
            assert row["dataset"] == "mnist" and (row["n_train"], row["n_test"]) == (300, 200)
            metrics = json.loads(
                (root / "runs" / "bench-labels-quick" / f"mnist-{row['labels']}" / "metrics.json").read_text()
            )
            assert row["test_accuracy"] == metrics["test_accuracy"]
            assert 0.0 <= row["test_accuracy"] <= 1.0 and len(row["per_layer_test_accuracy"]) == 2  # TINY's two layers
        assert "| MNIST | onehot | 1 |" in (quick / f"{name}.md").read_text()
    elif script == "ff_vs_backprop.py":
        assert result["quick"] and [row["method"] for row in result["rows"]] == ["ff-layer", "backprop"]
        assert all(row["examples"] == 300 and row["saved_for_backward_mb"] > 0 for row in result["rows"])
    elif script == "scaling.py":
        rows = {row["row"]: row for row in result["rows"]}
        assert result["quick"] and list(rows) == ["1x2", "2x1-data", "2x1-layers"]
        assert (rows["1x2"]["world_size"], rows["2x1-data"]["world_size"]) == (1, 2)
        for key in ("1x2", "2x1-data"):
            row = rows[key]
            assert row["n_train"] == 300 and row["epochs"] == 1 and 0.0 <= row["test_accuracy"] <= 1.0
            assert row["images_per_s"] == pytest.approx(300 / row["train_seconds"], rel=0.01)
        assert rows["1x2"]["speedup"] == 1.0 and rows["2x1-data"]["speedup"] > 0
        assert "world_size" in rows["2x1-layers"] or "--parallel" in rows["2x1-layers"]["skipped"]
    elif script == "recipe_screen.py":  # the embedded mnist-5k, 300 / 100 digits
        assert result["quick"] and [row["lever"] for row in result["rows"]] == ["default", "lr 0.004"]
        for row in result["rows"]:
            assert row["epochs"] == 1 and row["train_seconds"] > 0 and 0.0 <= row["accuracy"] <= 1.0
        runs = root / "runs" / "bench-recipe_screen-quick" / "runs"
        assert json.loads((runs / "lr-0-004" / "config.json").read_text())["train"]["lr"] == 0.004
        assert json.loads((runs / "default" / "metrics.json").read_text())["n_train"] == 300
        assert "| lr 0.004 | `--lr 0.004` |" in (quick / f"{name}.md").read_text()
        again = _quick(root, script, data, *QUICK_CASES[script])  # both rows kept: nothing trains
        assert again.returncode == 0 and again.stdout.count("kept from") == 2, again.stderr[-2000:]
        assert json.loads((quick / f"{name}.json").read_text())["rows"] == result["rows"]
    elif script == "head_layers.py":  # a tiny 3-layer run: heads on layers 1,2 and 0,1
        assert result["quick"] and result["n_test"] == 200 and 0.0 <= result["all"] <= 1.0
        assert result["run_head_layers"] == [0, 1]  # the trainer's default: every layer but the last
        assert [row["head_layers"] for row in result["rows"]] == [[1, 2], [0, 1]]
        for row in result["rows"]:
            assert 0.0 <= row["head"] <= row["top2_recall"] <= 1.0 and 0.0 <= row["topk2"] <= row["top2_recall"]
        assert row["features"] == (8 + 16) * 4  # layers 0 and 1, a 2x2 grid
        assert "| 0,1 | 96 |" in (quick / f"{name}.md").read_text()
    elif script == "mode_latency.py":
        (rep,) = result["repeats"]
        assert result["quick"] and result["modes"] == ["all", "topk", "head"] and result["images"] == 50
        for m in result["modes"]:
            assert 0 < rep[m]["min_ms"] <= rep[m]["p10_ms"] <= rep[m]["p50_ms"]
            assert rep["ratio_p50"][m] == pytest.approx(rep[m]["p50_ms"] / rep["all"]["p50_ms"])
        assert rep["ratio_p50"]["all"] == 1.0 and "`topk --k 2` / `all`" in (quick / f"{name}.md").read_text()
    elif script == "default_recipe.py":
        (row,) = result["rows"]
        assert result["quick"] and row["seed"] == 0 and row["epochs"] == 1 and row["n_test"] == 200
        assert row["int8_ort_accuracy"] == row["parity"]["bundle_accuracy"] and not row["meets_bar"]
    else:  # trained and exported its own --master bundle, fine-tuned it, compared with torch
        assert [row["name"] for row in result] == [
            "bundle before",
            "ffedge finetune, anchor 0.005",
            "torch backprop (last layer + head)",
        ]
        assert (
            result[1]["examples"] == 100
            and (root / "runs" / "bench-finetune-quick" / "bundle-int8-master" / "manifest.json").is_file()
        )
        assert (
            "ffedge export" in (quick / f"{name}.log").read_text() and "--master" in (quick / f"{name}.log").read_text()
        )


def test_finetune_shift_missing_bundle_is_one_clear_line(tmp_path: Path) -> None:
    r = _run(
        str(BENCH / "finetune_shift.py"), "--quick", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "ft")
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no bundle there" in r.stderr and "omit --bundle" in r.stderr
    assert not list(tmp_path.iterdir())


def test_accuracy_presets_keep_finished_datasets_and_resume_a_cut_run(tmp_path: Path) -> None:
    """--presets trains with the dataset's preset; a rerun keeps the finished row, and a run cut short resumes."""
    pytest.importorskip("brevitas")
    data = _digits(tmp_path / "data", 300, 200)
    out, work = tmp_path / "acc", tmp_path / "work"
    args = [
        str(BENCH / "accuracy.py"),
        "--quick",
        "--presets",
        "--datasets",
        "mnist",
        "--train-args",
        TINY,
        "--data-dir",
        str(data),
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    r = _run(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    config = json.loads((work / "runs" / "mnist" / "config.json").read_text())["train"]
    assert row["preset"] == "mnist" and config["preset"] == "mnist" and config["rotate"] == 12.0 and row["epochs"] == 1
    assert "`--preset mnist`, 1" in out.with_suffix(".md").read_text()
    again = _run(*args)
    assert again.returncode == 0 and "kept from" in again.stdout
    assert json.loads(out.with_suffix(".json").read_text())["rows"] == [row]
    # Cut short after its checkpoint: no metrics.json, no kept row. The rerun continues that run.
    (work / "runs" / "mnist" / "metrics.json").unlink()
    (tmp_path / "acc-mnist.json").unlink()
    resumed = _run(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "--resume" in out.with_suffix(".log").read_text()


@pytest.mark.parametrize("script", [*SCRIPTS, "time_to_accuracy.py"])
def test_quick_out_among_the_committed_results_is_refused(tmp_path: Path, script: str) -> None:
    """--quick --out benchmarks/results/NAME: one line, exit 1, before anything trains or is written."""
    root, committed = _clone(tmp_path)
    stem = root / "benchmarks" / "results" / script.removesuffix(".py")
    r = _quick(root, script, _digits(tmp_path / "data", 30, 20), "--out", str(stem))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().count("\n") == 0 and "does not write among the committed full results" in r.stderr
    assert _checksums(root / "benchmarks" / "results") == committed and not (root / "runs").exists()


def test_bad_data_is_one_clear_line(tmp_path: Path) -> None:
    """An unreadable mnist.npz (accuracy, label_ablation) and an unknown --dataset (ff_vs_backprop): one line, exit 1."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "mnist.npz").write_bytes(b"not a zip")
    args = ["--quick", "--data-dir", str(data), "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w")]
    for script in ("accuracy.py", "label_ablation.py"):
        r = _run(str(BENCH / script), *args)
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, (script, r.stderr[-3000:])
        assert "mnist.npz: not a readable .npz" in r.stderr and not (tmp_path / "o.json").exists()
    np.savez(data / "mnist.npz", x=np.zeros((2, 28, 28), np.uint8))
    r = _run(str(BENCH / "accuracy.py"), *args)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "no x_train, y_train, x_test, y_test" in r.stderr
    r = _run(str(BENCH / "ff_vs_backprop.py"), "--quick", "--dataset", "nope", "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr[-3000:]
    assert "--dataset nope: unknown dataset" in r.stderr and not (tmp_path / "o.json").exists()
