"""`ffedge report`: the PNGs and report.json for a trained run, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import assert_one_line_error, cli, python

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

PNGS = ("label_patterns.png", "cams.png", "goodness_correct.png", "goodness_wrong.png", "confusion.png")


def test_report_writes_pngs_and_json(tiny_run: Path, tmp_path: Path) -> None:
    from ffedge.datasets import load_dataset
    from ffedge.labels import encoding_from_config
    from ffedge.runtime.preprocess import normalize
    from ffedge.train.run_files import load_run
    from ffedge.train.trainer import goodness_accuracy, goodness_matrix

    out = tmp_path / "report"
    r = cli("report", str(tiny_run), "--out", str(out), "--images", "2", "--limit", "120")
    assert r.returncode == 0, r.stderr
    for name in PNGS:
        assert f"wrote {out / name}" in r.stdout, r.stdout
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 250, (name, img.size)
    assert sorted(p.name for p in out.iterdir()) == sorted([*PNGS, "report.json"])  # no temp files left behind

    rep = json.loads((out / "report.json").read_text())
    assert rep["files"] == list(PNGS) and rep["images_scored"] == 120
    assert len(rep["cam_images"]) == 2 and len(rep["correct_images"]) <= 2 and len(rep["wrong_images"]) <= 2
    assert all(0 <= i < 120 for i in rep["cam_images"] + rep["correct_images"] + rep["wrong_images"])

    # The accuracy, computed independently the way the trainer scores held-out data.
    cfg, net = load_run(tiny_run)
    ds = load_dataset(cfg["train"]["dataset"])
    x = normalize(ds.x_test[:120], cfg["input"]["mean"], cfg["input"]["std"])
    y = ds.y_test[:120]
    g = goodness_matrix(net, encoding_from_config(cfg["encoding"]), x)
    pl = cfg["model"]["predict_layers"]
    assert rep["accuracy"] == goodness_accuracy(g, y, pl)
    assert rep["accuracy"] > 0.3  # the tiny run is well above chance
    pred = g[pl].sum(0).argmax(1)
    assert all(pred[i] == y[i] for i in rep["correct_images"]) and all(pred[i] != y[i] for i in rep["wrong_images"])
    assert sum(map(sum, rep["confusion"])) == 120
    # --json: report.json's content on stdout, alone.
    r = cli("report", str(tiny_run), "--out", str(tmp_path / "j"), "--images", "1", "--limit", "40", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads((tmp_path / "j" / "report.json").read_text())


def test_report_bad_input_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ffedge.cli import app, run_app

    def run(*args: str) -> subprocess.CompletedProcess:  # in process (the same error boundary as the command), fast
        monkeypatch.setattr(sys, "argv", ["ffedge", *args])
        code = run_app(app)
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    assert_one_line_error(run("report", str(tmp_path / "nope"), "--out", str(tmp_path / "r1")), "no such run folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        run("report", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")), "is not a training run"
    )
    assert_one_line_error(run("report", str(tiny_run), "--images", "0", "--out", str(tmp_path / "r3")), "--images")
    assert_one_line_error(run("report", str(tiny_run), "--limit", "0", "--out", str(tmp_path / "r3")), "--limit")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_report_without_matplotlib_names_the_extra(tiny_run: Path, tmp_path: Path) -> None:
    code = f"from ffedge.cli import main; sys.argv = ['ffedge', 'report', {str(tiny_run)!r}, '--out', {str(tmp_path / 'r')!r}]; main()"
    r = python(code, blocked=("matplotlib",), timeout=120)
    assert_one_line_error(r, 'pip install ".[report]"')
    assert not (tmp_path / "r").exists()
