"""`ffedge train/export/report/labels` under careless or hostile use (issue 10, items 1, 9, 10).

``--force`` replaces only what ffedge wrote, options and outputs are checked before
any work, and Ctrl-C / SIGTERM say what was kept. Importing the training side costs
seconds, so the CLI cases run in ONE subprocess (``_RUNNER``: each case is a fresh
``ffedge ...`` command line through the CLI's own entry point, with its exit code and
stderr), shared by the tests below through a module fixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("brevitas")

from ffedge.train.run_files import CHECKPOINT, CONFIG  # noqa: E402
from tests.conftest import REPO, assert_one_line_error  # noqa: E402

TINY = ["--layers", "8x5p,16x3", "--batch-size", "50", "--eval-samples", "50", "--head-epochs", "1", "--threads", "1"]
NO_DATA = "npz:/nonexistent/never.npz"  # option errors must come before the dataset is even looked at

_RUNNER = r"""
import contextlib, glob, io, json, os, signal, sys, threading, time, traceback
from ffedge.cli import app, run_app

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive shell
results = {}
for case in json.loads(sys.argv[1]):
    done = threading.Event()
    def watch(pattern=case.get("when"), sig=case.get("signal")):
        while pattern and not done.is_set():
            if glob.glob(pattern):
                os.kill(os.getpid(), getattr(signal, sig))
                return
            time.sleep(0.01)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    sys.argv = ["ffedge", *case["argv"]]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = run_app(app)
    except BaseException:
        rc, err = "crash", io.StringIO(err.getvalue() + traceback.format_exc())
    done.set()
    watcher.join()
    results[case["name"]] = [rc, err.getvalue()]
print(json.dumps(results))
"""


def _sums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (links not followed), by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "link -> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(folder)) + "/"] = "dir"
    return out


def _edit_config(run: Path, **train: Any) -> None:
    cfg = json.loads((run / CONFIG).read_text())
    cfg["train"].update(train)
    (run / CONFIG).write_text(json.dumps(cfg))


def _edit_checkpoint(run: Path, edit: Any) -> None:
    state = torch.load(run / CHECKPOINT, weights_only=True)
    torch.save(edit(state), run / CHECKPOINT)


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


def _tiny_npz(w: Path, small_npz: str) -> str:
    """200 training / 100 held-out images of ``small_npz``: four steps an epoch."""
    import numpy as np

    with np.load(small_npz.split(":", 1)[1]) as z:
        np.savez(
            w / "tiny.npz",
            x_train=z["x_train"][:200],
            y_train=z["y_train"][:200],
            x_test=z["x_test"][:100],
            y_test=z["y_test"][:100],
        )
    return f"npz:{w / 'tiny.npz'}"


def _prepare(w: Path, tiny_run: Path, small_npz: str) -> list[dict[str, Any]]:
    """The folders the cases work on, and the cases: name, argv, optionally a signal to send once a path appears."""

    def run_copy(name: str) -> Path:
        shutil.copytree(tiny_run, w / name)
        return w / name

    for name in ("user", "user_export"):
        (w / name / "photos").mkdir(parents=True)
        (w / name / "notes.txt").write_text("mine")
        (w / name / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not really a photo")
    (w / "outside.txt").write_text("not ffedge's")
    os.symlink(run_copy("link_target"), w / "run_link")
    os.symlink(w / "outside.txt", run_copy("inner_link") / "extra.json")
    os.symlink(w / "user", w / "bundle_link")
    (w / "afile").write_text("a file")
    _edit_config(run_copy("cfg_many"), epochs="many")
    _edit_config(run_copy("cfg_unknown"), colour="red")
    _edit_checkpoint(run_copy("ck_noepoch"), lambda s: _without(s, "epoch"))
    _edit_checkpoint(run_copy("ck_opts"), lambda s: {**s, "optimizers": s["optimizers"][:1]})
    (run_copy("ck_corrupt") / CHECKPOINT).write_bytes(b"this is no checkpoint")
    (w / "report").mkdir()
    (w / "report" / "confusion.png").write_text("my own confusion matrix")
    (w / "dir.png").mkdir()
    run_copy("replace")
    run_copy("replace_term")

    train = ["train", "--dataset", _tiny_npz(w, small_npz), *TINY]
    import numpy as np

    y = np.arange(60) % 10
    y[3] = 200
    np.savez(
        w / "gaps.npz",
        x_train=np.zeros((60, 28, 28), np.uint8),
        y_train=y,
        x_test=np.zeros((20, 28, 28), np.uint8),
        y_test=np.arange(20) % 10,
    )
    bad = ["train", "--dataset", NO_DATA, *TINY, "--epochs", "1"]
    run = str(tiny_run)
    cases = [
        ("force_user_folder", [*train, "--epochs", "1", "--out", str(w / "user"), "--force"]),
        ("force_link", [*train, "--epochs", "1", "--out", str(w / "run_link"), "--force"]),
        ("force_inner_link", [*train, "--epochs", "1", "--out", str(w / "inner_link"), "--force"]),
        ("out_proc", [*bad, "--out", "/proc/ffedge-x"]),
        ("out_file", [*bad, "--out", str(w / "afile")]),
        ("out_under_file", [*bad, "--out", str(w / "afile" / "sub")]),
        ("seed", [*bad, "--seed", "-1", "--out", str(w / "o_seed")]),
        ("device", [*bad, "--device", "foo", "--out", str(w / "o_device")]),
        ("threads", [*bad, "--threads", "-1", "--out", str(w / "o_threads")]),
        ("alpha_nan", [*bad, "--alpha", "nan", "--out", str(w / "o_alpha")]),
        ("lr_inf", [*bad, "--lr", "inf", "--out", str(w / "o_lr")]),
        ("threshold_neg", [*bad, "--threshold", "-1", "--out", str(w / "o_threshold")]),
        ("epochs_zero", [*bad, "--epochs", "0", "--out", str(w / "o_epochs")]),
        ("batch_zero", [*bad, "--batch-size", "0", "--out", str(w / "o_batch")]),
        ("layers_huge", [*bad, "--layers", "5000x3", "--out", str(w / "o_layers")]),
        ("resume_epochs_many", ["train", "--resume", "--out", str(w / "cfg_many")]),
        ("resume_unknown_key", ["train", "--resume", "--out", str(w / "cfg_unknown")]),
        ("resume_no_epoch", ["train", "--resume", "--out", str(w / "ck_noepoch")]),
        ("resume_corrupt", ["train", "--resume", "--out", str(w / "ck_corrupt")]),
        ("resume_optimizers", ["train", "--resume", "--out", str(w / "ck_opts")]),
        (
            "export_force_user_folder",
            ["export", run, "--out", str(w / "user_export"), "--force", "--verify-samples", "0"],
        ),
        ("export_force_link", ["export", run, "--out", str(w / "bundle_link"), "--force", "--verify-samples", "0"]),
        ("export_verify_negative", ["export", run, "--out", str(w / "o_export"), "--verify-samples", "-5"]),
        ("report_user_file", ["report", run, "--out", str(w / "report"), "--limit", "20"]),
        ("labels_out_folder", ["labels", "--dataset", small_npz, "--out", str(w / "dir.png")]),
        (
            "train_label_gaps",
            ["train", "--dataset", f"npz:{w / 'gaps.npz'}", *TINY, "--epochs", "1", "--out", str(w / "gaps_out")],
        ),
        ("force_replaces_run", [*train, "--epochs", "1", "--out", str(w / "replace"), "--force"]),
    ]
    if not torch.cuda.is_available():
        cases.append(("device_cuda", [*bad, "--device", "cuda", "--out", str(w / "o_cuda")]))
    signalled = [
        (
            "sigterm_replace",
            [*train, "--epochs", "50", "--out", str(w / "replace_term"), "--force"],
            "SIGTERM",
            str(w / ".replace_term.tmp-*" / CHECKPOINT),
        ),
        (
            "sigint_before_first_epoch",
            [*train, "--epochs", "50", "--out", str(w / "fresh0")],
            "SIGINT",
            str(w / "fresh0" / CONFIG),
        ),
        (
            "sigint_after_first_epoch",
            [*train, "--epochs", "50", "--out", str(w / "fresh")],
            "SIGINT",
            str(w / "fresh" / CHECKPOINT),
        ),
    ]
    return [{"name": n, "argv": a} for n, a in cases] + [
        {"name": n, "argv": a, "signal": s, "when": p} for n, a, s, p in signalled
    ]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path, small_npz: str) -> tuple[Path, dict, dict]:
    """Run every case in one process; returns the work folder, results by case name, and checksums taken before."""
    w = tmp_path_factory.mktemp("hardening")
    cases = _prepare(w, tiny_run, small_npz)
    before = {
        name: _sums(w / name) for name in ("user", "user_export", "link_target", "inner_link", "replace_term", "report")
    }
    before["outside"] = _sums(w)["outside.txt"]
    r = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(cases)],
        cwd=w,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return w, json.loads(r.stdout.strip().splitlines()[-1]), before


def _result(results: dict, name: str) -> subprocess.CompletedProcess:
    rc, err = results[name]
    return subprocess.CompletedProcess([name], rc, "", err)


def test_force_never_deletes_a_folder_ffedge_did_not_write(batch: tuple[Path, dict, dict]) -> None:
    w, results, before = batch
    assert_one_line_error(_result(results, "force_user_folder"), "'notes.txt', 'photos/'")
    assert "nothing was deleted" in results["force_user_folder"][1]
    assert_one_line_error(_result(results, "force_link"), "symbolic link")
    assert_one_line_error(_result(results, "force_inner_link"), "symbolic link")
    assert_one_line_error(_result(results, "export_force_user_folder"), "nothing was deleted")
    assert_one_line_error(_result(results, "export_force_link"), "symbolic link")
    assert_one_line_error(_result(results, "report_user_file"), "'confusion.png'")
    for name in ("user", "user_export", "link_target", "inner_link", "report"):
        assert _sums(w / name) == before[name], name
    assert _sums(w)["outside.txt"] == before["outside"]
    assert (w / "run_link").is_symlink() and (w / "bundle_link").is_symlink()


def test_force_replaces_a_run_ffedge_wrote(batch: tuple[Path, dict, dict]) -> None:
    w, results, _ = batch
    assert results["force_replaces_run"][0] == 0, results["force_replaces_run"][1]
    cfg = json.loads((w / "replace" / CONFIG).read_text())
    assert cfg["model"]["layers"] == "8x5p,16x3" and cfg["train"]["epochs"] == 1
    assert not [p for p in w.iterdir() if p.name.startswith((".replace.", ".replace_term."))]


@pytest.mark.parametrize(
    "name, needle",
    [
        ("out_proc", "/proc/ffedge-x"),
        ("out_file", "exists and is not a folder"),
        ("out_under_file", "is not a folder"),
        ("seed", "--seed"),
        ("device", "--device 'foo'"),
        ("device_cuda", "no CUDA"),
        ("threads", "--threads"),
        ("alpha_nan", "--alpha must be a finite number > 0"),
        ("lr_inf", "--lr"),
        ("threshold_neg", "--threshold"),
        ("epochs_zero", "--epochs"),
        ("batch_zero", "--batch-size"),
        ("layers_huge", "'5000x3'"),
        ("resume_epochs_many", "'epochs' must be an integer"),
        ("resume_unknown_key", "'colour'"),
        ("resume_no_epoch", "lacks 'epoch'"),
        ("resume_corrupt", "not a tensor file ffedge wrote"),
        ("resume_optimizers", "1 optimizers"),
        ("export_verify_negative", "--verify-samples"),
        ("labels_out_folder", "is a folder"),
    ],
)
def test_bad_options_and_outputs_fail_before_any_work(batch: tuple[Path, dict, dict], name: str, needle: str) -> None:
    w, results, _ = batch
    if name not in results:
        pytest.skip("CUDA is available here")
    err = assert_one_line_error(_result(results, name), needle)
    assert "never.npz" not in err  # checked before the dataset
    assert not [p.name for p in w.iterdir() if p.name.startswith("o_")]


def test_labels_with_gaps_are_refused_before_training(batch: tuple[Path, dict, dict]) -> None:
    """y=200 among 0..9 used to train a 201-class model silently."""
    w, results, _ = batch
    assert_one_line_error(_result(results, "train_label_gaps"), "go up to 200, which would make 201 classes")
    assert not (w / "gaps_out").exists() or not any((w / "gaps_out").iterdir())


def test_sigterm_during_force_keeps_the_old_run(batch: tuple[Path, dict, dict]) -> None:
    w, results, before = batch
    rc, err = results["sigterm_replace"]
    assert rc == 143 and err.strip().endswith("is unchanged (the new run was discarded)"), (rc, err)
    assert _sums(w / "replace_term") == before["replace_term"]


def test_ctrl_c_says_what_is_kept_and_resume_continues(
    batch: tuple[Path, dict, dict], capsys: pytest.CaptureFixture
) -> None:
    w, results, _ = batch
    rc, err = results["sigint_before_first_epoch"]
    assert rc == 130 and err.strip().endswith(": nothing was kept"), (rc, err)
    assert not (w / "fresh0").exists()
    rc, err = results["sigint_after_first_epoch"]
    m = re.search(
        r"the checkpoint of epoch (\d+) is kept; continue with: ffedge train --resume --out (\S+)$", err.strip()
    )
    assert rc == 130 and m and "Traceback" not in err, (rc, err)
    assert sorted(p.name for p in (w / "fresh").iterdir()) == [CHECKPOINT, CONFIG]
    # The command it prints continues the run (here to one more epoch).
    from ffedge.cli import app, run_app

    epoch = int(m.group(1))
    old_argv = sys.argv
    try:
        sys.argv = ["ffedge", "train", "--resume", "--out", m.group(2), "--epochs", str(epoch + 1)]
        assert run_app(app) == 0
    finally:
        sys.argv = old_argv
    metrics = json.loads((w / "fresh" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epoch + 2))


def test_nan_loss_stops_training_with_one_line(tmp_path: Path, small_npz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No option produces it any more (--alpha nan is refused), so the loss is made NaN here."""
    import ffedge.train.trainer as trainer
    from ffedge.train import TrainConfig, train_run
    from ffedge.errors import FFEdgeError

    real = trainer.ff_loss
    monkeypatch.setattr(trainer, "ff_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    cfg = TrainConfig(dataset=small_npz, layers="8x5p,16x3", epochs=1, batch_size=50, threads=1)
    with pytest.raises(
        FFEdgeError, match=r"training diverged in epoch 1/1, step 1/12: layer 0 has loss nan.*nothing was kept"
    ):
        train_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
