"""``--resume`` continues with the label encoding the run recorded in ``config.json`` (every parameter
resolved when it started), not one rebuilt from the label options, which a newer default or an edit may change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("brevitas")

from ffedge.errors import FFEdgeError  # noqa: E402
from ffedge.labels import encoding_from_config, make_encoding  # noqa: E402
from ffedge.train.pipeline import resume_run, train_run  # noqa: E402
from ffedge.train.run_files import CHECKPOINT, CONFIG, load_run  # noqa: E402
from ffedge.train.trainer import TrainConfig, prepare_data  # noqa: E402

TINY = "8x5p,16x3p,16x3"


def _cfg(dataset: str, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    base = dict(dataset=dataset, layers=TINY, epochs=1, batch_size=50, head_epochs=2, eval_samples=50, threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory, small_npz: str) -> Path:
    """A finished 1-epoch run (fourier labels, default parameters), to copy and resume."""
    out = tmp_path_factory.mktemp("resume-enc") / "run"
    train_run(_cfg(small_npz), out)
    return out


def _copy(run: Path, tmp_path: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out, json.loads((out / CONFIG).read_text())


def test_config_json_records_the_resolved_encoding(one_epoch_run: Path) -> None:
    recorded = json.loads((one_epoch_run / CONFIG).read_text())["encoding"]
    assert recorded["name"] == "fourier" and {"freqs", "angles", "phases", "amplitude"} <= set(recorded)
    assert encoding_from_config(recorded).to_config() == recorded


def test_resume_uses_the_recorded_encoding_not_the_label_options(one_epoch_run: Path, tmp_path: Path) -> None:
    out, cfg = _copy(one_epoch_run, tmp_path)
    recorded = cfg["encoding"]
    assert recorded["amplitude"] != 2.5
    # What a changed default (or an edited option) would rebuild: a different encoding.
    cfg["train"]["label_params"] = {"amplitude": 2.5}
    (out / CONFIG).write_text(json.dumps(cfg))
    m = resume_run(out, epochs=2)
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    # config.json is rewritten from the encoding the run trained with: the recorded one, unchanged.
    assert json.loads((out / CONFIG).read_text())["encoding"] == recorded
    load_run(out)


def test_prepare_data_takes_a_given_encoding_that_fits_the_dataset(small_npz: str) -> None:
    cfg = _cfg(small_npz)
    enc = make_encoding("fourier", 10, (1, 28, 28), amplitude=2.5)
    assert prepare_data(cfg, enc).encoding is enc
    with pytest.raises(FFEdgeError, match="is for 5 classes"):
        prepare_data(cfg, make_encoding("fourier", 5, (1, 28, 28)))


def test_resume_with_a_recorded_encoding_that_does_not_fit_keeps_the_checkpoint(
    one_epoch_run: Path, tmp_path: Path
) -> None:
    out, cfg = _copy(one_epoch_run, tmp_path)
    cfg["encoding"] = make_encoding("fourier", 5, (1, 28, 28)).to_config()
    (out / CONFIG).write_text(json.dumps(cfg))
    before = (out / CHECKPOINT).read_bytes()
    with pytest.raises(FFEdgeError, match="is for 5 classes"):
        resume_run(out, epochs=2)
    assert (out / CHECKPOINT).read_bytes() == before
    assert json.loads((out / CONFIG).read_text()) == cfg


def test_resume_with_a_broken_recorded_encoding_names_config_json(one_epoch_run: Path, tmp_path: Path) -> None:
    out, cfg = _copy(one_epoch_run, tmp_path)
    cfg["encoding"] = {**cfg["encoding"], "name": "nope"}
    (out / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(FFEdgeError, match=r"config\.json: 'encoding': unknown label encoding"):
        resume_run(out, epochs=2)
