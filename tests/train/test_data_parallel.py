"""Data-parallel training on 2 gloo ranks on localhost: same weights as one process, one model on every rank,
rank 0 alone writes, resume across world sizes, a killed or hung rank stops the job.

The ranks are started as torchrun starts them (its environment variables: RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT), each running the real ``ffedge train``;
one resume goes through ``ffedge train --nproc 2`` (torch.distributed.run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, cli, cli_inprocess, mnist_5k_slice

torch = pytest.importorskip("torch")
pytest.importorskip("brevitas")

# Float (exactly reproducible: fp32, one thread each), BatchNorm (synchronized) and pair-local updates (gradients
# that cross a layer): what data parallel must keep equal. 250 images in batches of 32: 8 steps, the last of 26.
FLOAT_ARGS = [
    "--no-quant",
    "--precision",
    "fp32",
    "--layers",
    "8x5p,16x3,16x3",
    "--batch-size",
    "32",
    "--threads",
    "1",
    "--head-epochs",
    "1",
    "--head-augment",
    "0",
    "--eval-samples",
    "50",
]
# Adam normalizes each step by the gradient's running size, so the float noise of a sum in another order
# (all-reduce vs one batch) grows to this over 8 steps; gradients not averaged over the ranks move weights by ~1e-2.
TOLERANCE = 1e-4
TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(argv: list[str], cwds: list[Path], logs: Path) -> list[subprocess.Popen]:
    """``python ARGV`` as ranks 0..len(cwds)-1 of one gloo job on 127.0.0.1 (torchrun's variables), each in its cwd,
    its output in ``logs/rank{r}.out|err``."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env["WORLD_SIZE"] = env["LOCAL_WORLD_SIZE"] = str(len(cwds))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for r, cwd in enumerate(cwds):
        cwd.mkdir(parents=True, exist_ok=True)
        procs.append(
            subprocess.Popen(
                [sys.executable, *argv],
                cwd=cwd,
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=open(logs / f"rank{r}.out", "w"),
                stderr=open(logs / f"rank{r}.err", "w"),
            )
        )
    return procs


def wait_ranks(procs: list[subprocess.Popen], logs: Path, timeout_s: float = TIMEOUT) -> list[str]:
    """Wait for every rank to succeed; returns their stdout."""
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    outs = [(logs / f"rank{r}.out").read_text() for r in range(len(procs))]
    for r, p in enumerate(procs):
        assert p.returncode == 0, (r, outs[r][-2000:], (logs / f"rank{r}.err").read_text()[-3000:])
    return outs


def layer_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "weights.pt", map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("layers.")}


def max_difference(a: Path, b: Path) -> float:
    wa, wb = layer_weights(a), layer_weights(b)
    assert wa.keys() == wb.keys() and wa
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def dp_npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """250 training and 64 held-out digits of the embedded mnist-5k: a run of a few seconds."""
    return mnist_5k_slice(tmp_path_factory.mktemp("data") / "dp.npz", 250, 64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, dp_npz: str) -> dict[str, Path]:
    """One epoch of the same float run: in one process (``single``), and on 2 ranks (``ranks``; rank 0 started in
    ``rank0/``, rank 1 in ``rank1/``, both with ``--out run``, so whatever rank 1 writes lands in ``rank1/run``)."""
    base = tmp_path_factory.mktemp("dp")
    args = ["--dataset", dp_npz, "--epochs", "1", *FLOAT_ARGS]
    single = base / "single"
    ranks = start_ranks(
        ["-m", "ffedge.cli", "train", *args, "--out", "run"], [base / "rank0", base / "rank1"], base / "logs"
    )
    r = cli("train", *args, "--out", str(single), timeout=TIMEOUT)  # meanwhile
    assert r.returncode == 0, r.stderr[-3000:]
    wait_ranks(ranks, base / "logs")
    return {"base": base, "single": single, "ranks": base / "rank0" / "run", "rank1_dir": base / "rank1"}


def test_two_ranks_train_the_weights_of_one_process(runs: dict[str, Path]) -> None:
    """8 steps, 2 ranks x 16 images vs one process x 32: the same weights within TOLERANCE, same held-out record."""
    diff = max_difference(runs["single"], runs["ranks"])
    print(f"max |weight difference| 2 ranks vs 1 process after 8 steps: {diff:.3g}")
    assert diff < TOLERANCE
    m1, m2 = (json.loads((runs[k] / "metrics.json").read_text()) for k in ("single", "ranks"))
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m1["history"][0]["heldout_accuracy"] == m2["history"][0]["heldout_accuracy"]
    assert m1["history"][0]["loss"] == pytest.approx(m2["history"][0]["loss"], abs=1e-3)


def test_only_rank_0_writes(runs: dict[str, Path]) -> None:
    assert sorted(p.name for p in runs["ranks"].iterdir()) == sorted(
        ["config.json", "checkpoint.pt", "weights.pt", "metrics.json"]
    )
    assert list(runs["rank1_dir"].iterdir()) == []


def test_resume_across_world_sizes(runs: dict[str, Path]) -> None:
    """Epoch 2 resumed: the 2-rank run in one process, and the one-process run on 2 ranks (``--nproc 2``), give the
    weights of the one-process run resumed in one process."""
    base = runs["base"]
    ref, to_single, to_ranks = base / "ref", base / "to_single", base / "to_ranks"
    shutil.copytree(runs["single"], ref)
    shutil.copytree(runs["ranks"], to_single)
    shutil.copytree(runs["single"], to_ranks)
    resumes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ffedge.cli",
                "train",
                "--resume",
                "--out",
                str(run),
                "--epochs",
                "2",
                "--threads",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run in (ref, to_single)
    ]
    for p in resumes:
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err[-3000:]
    r = cli("train", "--resume", "--out", str(to_ranks), "--epochs", "2", "--nproc", "2", timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert json.loads((to_ranks / "metrics.json").read_text())["world_size"] == 2
    for run in (to_single, to_ranks):
        assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
        diff = max_difference(ref, run)
        print(f"max |weight difference| after resuming {run.name}: {diff:.3g}")
        assert diff < 2 * TOLERANCE


WORKER = """
import json, sys
from ffedge.train import TrainConfig, train_run
from ffedge.train.distributed import process_group
cfg = TrainConfig(**json.loads(sys.argv[1]))
with process_group(cfg.device, 60) as ctx:
    result = train_run(cfg, sys.argv[2], ctx=ctx)
print("RESULT " + json.dumps({"rank": ctx.rank, "model_sha256": result["model_sha256"]}))
"""


def test_every_rank_holds_the_same_quantized_model(tmp_path: Path, dp_npz: str) -> None:
    """int8 QAT with BatchNorm: every rank ends with bit-identical weights and statistics (BatchNorm's running
    statistics, Brevitas' scales collected over their first 30 steps, which cross the end of epoch 1)."""
    cfg = {
        "dataset": dp_npz,
        "epochs": 2,
        "qat_epochs": 2,
        "layers": "8x5p,16x3",
        "batch_size": 16,  # 16 steps per epoch: 32 in all
        "threads": 1,
        "head_epochs": 1,
        "head_augment": 0,
        "eval_samples": 50,
    }
    outs = wait_ranks(
        start_ranks(["-c", WORKER, json.dumps(cfg), str(tmp_path / "run")], [tmp_path, tmp_path], tmp_path / "logs"),
        tmp_path / "logs",
    )
    results = [json.loads(o.split("RESULT ", 1)[1]) for o in outs]
    assert [r["rank"] for r in results] == [0, 1]
    assert results[0]["model_sha256"] == results[1]["model_sha256"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model_sha256"] == results[0]["model_sha256"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_lost_rank_stops_the_job_with_one_line(tmp_path: Path, dp_npz: str, sig: signal.Signals) -> None:
    """Rank 1 is killed (or stopped: it hangs) after epoch 1: rank 0 stops with one error line that says what
    happened and what was kept; at once after a kill, within --dist-timeout (plus the step under way) after a hang."""
    timeout_s = 10
    args = ["--dataset", dp_npz, "--epochs", "200", *FLOAT_ARGS, "--out", str(tmp_path / "run")]
    procs = start_ranks(
        ["-m", "ffedge.cli", "train", *args, "--dist-timeout", str(timeout_s)], [tmp_path, tmp_path], tmp_path / "logs"
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (tmp_path / "run" / "checkpoint.pt").exists():
            assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint of epoch 1"
            time.sleep(0.2)
        procs[1].send_signal(sig)
        lost_at = time.monotonic()
        procs[0].wait(timeout=timeout_s + 60)
        waited = time.monotonic() - lost_at
    finally:
        procs[1].send_signal(signal.SIGCONT)
        for p in procs:
            p.kill()
    err = (tmp_path / "logs" / "rank0.err").read_text()
    r = subprocess.CompletedProcess([], procs[0].returncode, "", err)
    line = assert_one_line_error(r, "rank 0/2: lost contact with another rank", code=None)
    assert "the checkpoint of epoch" in line and "--resume" in line
    print(f"rank 0 stopped {waited:.1f} s after rank 1 was {'killed' if sig == signal.SIGKILL else 'stopped'}: {line}")
    assert waited < (timeout_s if sig == signal.SIGKILL else timeout_s + 30)


@pytest.mark.parametrize(
    "env, args, needle",
    [
        ({}, ["--dist-timeout", "0"], "--dist-timeout must be > 0 seconds"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, [], "MASTER_ADDR is not"),
        (
            {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
            [],
            "RANK 2 of WORLD_SIZE 2",
        ),
        ({"RANK": "0", "WORLD_SIZE": "two", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, [], "WORLD_SIZE='two'"),
        (
            {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
            ["--nproc", "4"],
            "under torchrun the job has WORLD_SIZE 2",
        ),
        ({}, ["--nproc", "0"], "--nproc must be >= 1"),
    ],
)
def test_bad_process_options_are_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], args: list[str], needle: str
) -> None:
    """A bad launch option or torchrun environment: one error line before anything starts or is written."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    r = cli_inprocess("train", "--epochs", "1", "--out", str(tmp_path / "run"), *args)
    assert_one_line_error(r, needle, code=2)
    assert not (tmp_path / "run").exists()
