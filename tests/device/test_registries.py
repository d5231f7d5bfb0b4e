"""Datasets and prediction modes come from one registry each, and the CLI help lists every registered
dataset, mode, label encoding and loss from them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ffedge.cli import command
from ffedge.datasets import DATASET_NAMES, DATASET_PREFIXES, Dataset, dataset_choices, load_dataset, registry
from ffedge.errors import FFEdgeError
from ffedge.ff import LOSS_NAMES
from ffedge.labels import ENCODING_NAMES, FourierEncoding
from ffedge.runtime import MODES, check_mode
from ffedge.runtime.modes import REGISTRY as MODE_REGISTRY, mode_spec, modes_help


def _param(name: str, option: str):  # type: ignore[no-untyped-def]
    return {p.name: p for p in command(name).params}[option]


def _help(name: str, option: str) -> str:
    return " ".join((_param(name, option).help or "").split())


def _choices(name: str, option: str) -> tuple[str, ...]:
    """The values an option takes, as the CLI checks them (its click choice)."""
    return tuple(_param(name, option).type.choices)


# ---------------------------------------------------------------------------- datasets


def test_dataset_names_come_from_the_loader_modules() -> None:
    assert DATASET_NAMES == registry.dataset_names() == ("mnist-5k", "mnist", "fashion-mnist", "cifar10", "cifar100")
    assert DATASET_PREFIXES == registry.dataset_prefixes() == ("folder:", "npz:")
    assert dataset_choices() == [*DATASET_NAMES, "folder:PATH", "npz:PATH"]
    assert dataset_choices(notes=True)[0] == "mnist-5k (embedded)"


def test_a_registered_dataset_loads_by_name_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "_NAMED", dict(registry._NAMED))
    monkeypatch.setattr(registry, "_PATHS", dict(registry._PATHS))
    x = np.zeros((4, 6, 6, 1), np.uint8)
    y = np.array([0, 1, 0, 1])
    seen: list[object] = []

    def load(name: str, directory: Path | None, download: bool) -> Dataset:
        seen.append((name, directory, download))
        return Dataset(name, x, y, x, y, ["a", "b"])

    registry.register_dataset("toy", load)
    registry.register_path_kind("toy:", lambda path, size: Dataset(f"toy:{path}", x, y, x, y, ["a", "b"]))
    ds = load_dataset("TOY", data_dir=tmp_path, download=False, image_size=(3, 3))
    assert seen == [("toy", tmp_path / "toy", False)] and ds.x_train.shape == (4, 3, 3, 1)
    assert load_dataset(f"toy:{tmp_path}").name == f"toy:{tmp_path}"
    with pytest.raises(FFEdgeError, match="choose one of .*toy, folder:PATH, npz:PATH, toy:PATH"):
        load_dataset("nosuch")
    with pytest.raises(ValueError, match="twice"):
        registry.register_dataset("toy", load)
    with pytest.raises(ValueError, match="lowercase"):
        registry.register_dataset("Toy_2", load)
    with pytest.raises(ValueError, match="ends with ':'"):
        registry.register_path_kind("toy", lambda path, size: None)  # type: ignore[arg-type,return-value]


# ---------------------------------------------------------------------------- modes


def test_modes_are_one_registry() -> None:
    assert MODES == tuple(m.name for m in MODE_REGISTRY) == ("all", "head", "topk")
    assert [m.name for m in MODE_REGISTRY if m.needs_head] == ["head", "topk"]
    assert [m.name for m in MODE_REGISTRY if m.uses_k] == ["topk"]
    assert check_mode("head") == "head" and mode_spec("topk").score == "goodness"
    with pytest.raises(FFEdgeError, match="unknown mode 'nosuch': choose one of all, head, topk"):
        check_mode("nosuch")


def test_the_runtime_predicts_in_every_registered_mode() -> None:
    pytest.importorskip("onnxruntime")
    from ffedge.runtime import Runtime

    for m in MODE_REGISTRY:
        assert callable(getattr(Runtime, m.method)), m.method


# ---------------------------------------------------------------------------- CLI help


def test_cli_help_lists_every_registered_choice() -> None:
    for name, option in (("eval", "dataset"), ("train", "dataset"), ("labels", "dataset"), ("finetune", "data")):
        text = _help(name, option)
        for choice in dataset_choices(notes=True):
            assert choice in text, (name, choice)
    for name in ("eval", "predict"):
        assert _help(name, "mode") == modes_help()
        assert _help(name, "k") == "Candidates for --mode topk."
    for name in ("eval", "predict", "finetune"):
        assert _choices(name, "mode") == MODES, name
    assert all(re.search(rf"\b{m}\b", _help("finetune", "mode")) for m in MODES)
    for name, option in (("train", "labels"), ("labels", "encoding")):
        assert _choices(name, option) == ENCODING_NAMES
    for name in ("train", "labels"):
        assert _help(name, "label_mode") == _help("train", "label_mode")
        assert all(f"'{m}' (" in _help(name, "label_mode") for m in FourierEncoding.MODES)
        assert _choices(name, "label_mode") == FourierEncoding.MODES
    loss_help = _help("train", "loss")
    assert all(f"{name} (" in loss_help for name in LOSS_NAMES) and loss_help.endswith("(default: symba).")
    assert _choices("train", "loss") == LOSS_NAMES
