"""Training presets: resolution order, what config.json records, the CLI (--preset, help, errors, no-argument default)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI_MAIN, assert_one_line_error, cli, cli_inprocess, python

pytest.importorskip("torch")
pytest.importorskip("brevitas")

import ffedge.train  # noqa: E402
from ffedge.errors import FFEdgeError  # noqa: E402
from ffedge.train.presets import PAPER_AMPLITUDE, PRESETS, resolve  # noqa: E402
from ffedge.train.run_files import CONFIG  # noqa: E402
from ffedge.train.trainer import TrainConfig  # noqa: E402


def test_every_preset_is_a_valid_config_with_a_one_line_description() -> None:
    assert {"mnist", "fashion", "cifar10", "paper"} <= set(PRESETS)
    names = {f.name for f in fields(TrainConfig)}
    for name, p in PRESETS.items():
        assert p.description.strip() and "\n" not in p.description, name
        assert set(p.overrides) <= names - {"preset"}, name
        cfg = resolve(name)
        cfg.validate()
        assert cfg.preset == name and all(getattr(cfg, k) == v for k, v in p.overrides.items()), name
    assert {PRESETS[n].overrides["dataset"] for n in ("mnist", "fashion", "cifar10")} == {
        "mnist",
        "fashion-mnist",
        "cifar10",
    }


def test_the_paper_preset_is_the_published_configuration() -> None:
    cfg = resolve("paper")
    assert (cfg.layers, cfg.norm, cfg.labels, cfg.loss, cfg.lr, cfg.batch_size, cfg.epochs) == (
        "128x7,128x7,128x7",
        "rms",
        "fourier",
        "bce",
        5e-5,
        50,
        200,
    )
    assert cfg.label_params == {"mode": "add", "amplitude": PAPER_AMPLITUDE}
    # About 35% intensity: the grating's peak-to-peak (2A) against the range of the standardized MNIST image (1/std).
    from ffedge.datasets import load_dataset
    from ffedge.runtime.preprocess import compute_normalization

    _, std = compute_normalization(load_dataset("mnist-5k").x_train)
    assert 2 * PAPER_AMPLITUDE * std[0] == pytest.approx(0.35, abs=0.005)


def test_explicit_options_override_the_preset_which_overrides_the_defaults() -> None:
    assert resolve(None) == TrainConfig() and resolve(None, {}).preset is None
    cfg = resolve("paper", {"lr": 1e-3, "epochs": 2, "quant": False})
    assert (cfg.lr, cfg.epochs, cfg.quant) == (1e-3, 2, False)  # explicit
    assert (cfg.layers, cfg.batch_size, cfg.norm) == ("128x7,128x7,128x7", 50, "rms")  # the preset's
    assert (cfg.head_epochs, cfg.seed, cfg.wrong_labels) == (
        TrainConfig.head_epochs,
        TrainConfig.seed,
        TrainConfig.wrong_labels,
    )  # defaults
    assert cfg.shift == 0 != TrainConfig.shift  # the paper augments nothing
    assert resolve(None, {"lr": 1e-3}) == TrainConfig(lr=1e-3)
    # label_params merge key by key; another encoding than the preset's drops the preset's label_params.
    assert resolve("paper", {"label_params": {"mode": "channel"}}).label_params == {
        "mode": "channel",
        "amplitude": PAPER_AMPLITUDE,
    }
    assert resolve("paper", {"labels": "morph"}).label_params == {}
    assert resolve("paper", {"labels": "fourier"}).label_params == PRESETS["paper"].overrides["label_params"]
    # The table itself is never changed by resolving.
    resolve("paper", {"label_params": {"amplitude": 2.0}}).label_params["mode"] = "x"
    assert PRESETS["paper"].overrides["label_params"] == {"mode": "add", "amplitude": PAPER_AMPLITUDE}
    with pytest.raises(FFEdgeError, match="unknown training option 'nosuch'"):
        resolve(None, {"nosuch": 1})


def test_unknown_preset_is_one_line_listing_the_names(tmp_path: Path) -> None:
    with pytest.raises(FFEdgeError) as e:
        resolve("nosuch")
    assert str(e.value) == f"unknown preset 'nosuch': choose one of {', '.join(PRESETS)}"
    r = cli("train", "--preset", "nosuch", "--out", str(tmp_path / "run"), cwd=tmp_path)
    err = assert_one_line_error(r, "unknown preset 'nosuch'", code=2)
    assert all(name in err for name in PRESETS)
    assert not (tmp_path / "run").exists()


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """``ffedge train`` in-process with train_run replaced: what the CLI hands to the trainer."""
    seen: dict[str, Any] = {}

    def fake_train_run(
        cfg: TrainConfig,
        out: Path,
        force: bool = False,
        reporter: Any = None,
        download: bool = True,
        ctx: Any = None,
    ) -> dict[str, Any]:
        seen.update(cfg=cfg, out=Path(out), force=force)
        return {}

    monkeypatch.setattr(ffedge.train, "train_run", fake_train_run)
    monkeypatch.chdir(tmp_path)
    return seen


def test_train_without_arguments_is_the_default_run(captured: dict[str, Any]) -> None:
    r = cli_inprocess("train")
    assert r.returncode == 0, r.stderr
    assert captured == {"cfg": TrainConfig(), "out": Path("runs") / "mnist-5k-fourier", "force": False}


def test_cli_options_override_the_preset(captured: dict[str, Any]) -> None:
    r = cli_inprocess(
        "train",
        "--preset",
        "paper",
        "--epochs",
        "1",
        "--lr",
        "0.01",
        "--no-quant",
        "--no-flip",
        "--shift",
        "2",
        "--qat-epochs",
        "0",
        "--norm",
        "batch",
        "--label-mode",
        "channel",
    )
    assert r.returncode == 0, r.stderr
    want = resolve(
        "paper",
        {
            "epochs": 1,
            "lr": 0.01,
            "quant": False,
            "flip": False,
            "shift": 2,
            "qat_epochs": 0,
            "norm": "batch",
            "label_params": {"mode": "channel"},
        },
    )
    assert captured["cfg"] == want and captured["out"] == Path("runs") / "paper"
    assert want.label_params == {"mode": "channel", "amplitude": PAPER_AMPLITUDE} and want.batch_size == 50
    r = cli_inprocess("train", "--flip", "--quant", "--dataset", "npz:x.npz")
    assert r.returncode == 0 and captured["cfg"] == TrainConfig(flip=True, quant=True, dataset="npz:x.npz")
    assert captured["out"] == Path("runs") / "npz-fourier"
    # --label-mode is checked against the resolved encoding.
    r = cli_inprocess("train", "--preset", "paper", "--labels", "morph", "--label-mode", "add")
    assert r.returncode == 2 and "--label-mode applies to --labels fourier only" in r.stderr


def test_config_json_records_the_resolved_values_and_the_preset(tmp_path: Path, small_npz: str) -> None:
    out = tmp_path / "run"
    tiny = [
        "--dataset",
        small_npz,
        "--layers",
        "8x7,8x7",
        "--epochs",
        "1",
        "--head-epochs",
        "1",
        "--eval-samples",
        "50",
        "--threads",
        "1",
    ]
    r = cli("train", "--preset", "paper", *tiny, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    saved = json.loads((out / CONFIG).read_text())
    want = resolve(
        "paper",
        {"dataset": small_npz, "layers": "8x7,8x7", "epochs": 1, "head_epochs": 1, "eval_samples": 50, "threads": 1},
    )
    # The defaults that depend on the net are written resolved: the head reads every layer but the last.
    assert saved["train"] == {**asdict(want), "head_layers": [0]}
    assert saved["train"]["preset"] == "paper" and saved["train"]["lr"] == 5e-5 and saved["train"]["norm"] == "rms"
    assert saved["encoding"]["mode"] == "add" and saved["encoding"]["amplitude"] == PAPER_AMPLITUDE
    # A resumed run keeps its own config (preset included); --preset with --resume is refused.
    assert_one_line_error(
        cli("train", "--resume", "--preset", "paper", "--out", str(out), cwd=tmp_path),
        "--preset does not apply to --resume",
    )
    r = cli("train", "--resume", "--epochs", "2", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / CONFIG).read_text())["train"] == {**asdict(want), "head_layers": [0], "epochs": 2}
    # Runs made before the field existed: no preset.
    assert TrainConfig.from_dict({k: v for k, v in asdict(want).items() if k != "preset"}).preset is None


def _help(blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400", "TERM": "dumb", "NO_COLOR": "1"}
    return python(CLI_MAIN, "train", "--help", blocked=blocked, timeout=120, env=env)


def test_help_lists_the_presets_from_the_table() -> None:
    r = _help()
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    for name, p in PRESETS.items():
        assert f"{name}: {' '.join(p.description.split())}" in text, name
    # Without the train extra the help still shows, and says what listing the presets needs.
    r = _help(blocked=("torch", "brevitas"))
    assert r.returncode == 0 and "--preset" in r.stdout and 'pip install ".[train]"' in r.stdout, r.stderr


def test_help_states_the_trainconfig_defaults() -> None:
    """Options default to None (not given); their help texts state TrainConfig's defaults, which this holds equal."""
    from ffedge.cli import command

    options = {p.name: p for p in command("train").params}
    not_options = {"label_params", "preset"}  # --label-mode sets label_params["mode"]; --preset is the preset
    missing = sorted({f.name for f in fields(TrainConfig)} - not_options - set(options))
    assert not missing, f"TrainConfig fields without an ffedge train option: {missing}"
    checked = 0
    for f in fields(TrainConfig):
        if f.name in not_options or f.default is None:
            continue
        opt = options[f.name]
        assert opt.default is None, (
            f"--{f.name} must default to None (not given), so that it does not override a preset"
        )
        m = re.search(r"\(default: ([^;)]+)", opt.help or "")
        assert m, f"--{f.name}: the help does not state the default"
        want = (f"--{f.name}" if f.default else f"--no-{f.name}") if isinstance(f.default, bool) else str(f.default)
        assert m.group(1).strip() == want, (f.name, m.group(1), want)
        checked += 1
    assert checked >= 20
