"""The FF trainer: gradient locality, a real (small) training run, resume, determinism (`ffedge train` from the
command line: tests/cli/test_train_cli.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("brevitas")

from ffedge.errors import FFEdgeError  # noqa: E402
from ffedge.train.losses import ff_loss  # noqa: E402
from ffedge.train.model import FFNet, QuantConfig, goodness, parse_layers  # noqa: E402
from ffedge.train.epoch import Probe  # noqa: E402
from ffedge.train.pipeline import resume_run, train_run  # noqa: E402
from ffedge.train.run_files import CHECKPOINT, CONFIG, METRICS, WEIGHTS, load_run  # noqa: E402
from ffedge.train.trainer import LocalTrainer, TrainConfig  # noqa: E402

TINY = "8x5p,16x3p,16x3"


def _reference_grads(net: FFNet, cfg: TrainConfig, x_pos, x_neg, pair: bool) -> list[list[torch.Tensor]]:
    """Per-layer gradients computed the slow, obviously-local way.

    Layer l's loss is a function of layer l (and, in pair mode, layer l-1) only:
    the input to that block is the chain's value, detached.
    """
    b = x_pos.shape[0]
    x = torch.cat([x_pos, x_neg])
    inputs = [x]
    with torch.no_grad():
        for layer in net.layers:
            inputs.append(layer(inputs[-1])[1])
    grads = [[torch.zeros_like(p) for p in layer.parameters()] for layer in net.layers]
    for l in range(len(net.layers)):
        block = [l - 1, l] if pair and l > 0 else [l]
        h = inputs[block[0]].detach()
        for i in block:
            hh, h = net.layers[i](h)
        g = goodness(hh)
        loss = ff_loss(cfg.loss, g[:b], g[b:], cfg.alpha, cfg.threshold)
        for i in block:
            for acc, gr in zip(
                grads[i], torch.autograd.grad(loss, list(net.layers[i].parameters()), retain_graph=True)
            ):
                acc += gr
    return grads


@pytest.mark.parametrize("local, norm", [("pair", "batch"), ("layer", "batch"), ("pair", "rms")])
def test_no_gradient_crosses_the_local_block(local: str, norm: str) -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(local=local, layers="4x3,4x3p,4x3,4x3", norm=norm)
    net = FFNet(2, (8, 8), 10, parse_layers(cfg.layers), QuantConfig(enabled=False), norm=norm).double()
    for m in net.modules():  # BN in eval mode: identical forward values in both computations
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x_pos, x_neg = torch.randn(6, 2, 8, 8, dtype=torch.float64), torch.randn(6, 2, 8, 8, dtype=torch.float64)
    ref = _reference_grads(net, cfg, x_pos, x_neg, pair=local == "pair")
    trainer = LocalTrainer(net, cfg)
    trainer.set_lr(0.0)
    trainer.step(x_pos, x_neg)
    for l, layer in enumerate(net.layers):
        for p, r in zip(layer.parameters(), ref[l]):
            assert p.grad is not None
            torch.testing.assert_close(p.grad, r)
    if local == "layer":
        # Pure FF: layer 0's gradient comes from its own loss alone, so it differs from the pair one.
        pair_ref = _reference_grads(net, TrainConfig(local="pair"), x_pos, x_neg, pair=True)
        assert not torch.allclose(pair_ref[0][0], ref[0][0])


def _cfg(dataset: str, **kw) -> TrainConfig:
    base = dict(dataset=dataset, layers=TINY, epochs=2, batch_size=50, head_epochs=5, eval_samples=100, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_train_run_writes_a_complete_run_and_learns(tmp_path: Path, small_npz: str) -> None:
    out = tmp_path / "run"
    m = train_run(_cfg(small_npz, layers="16x5p,64x5p,64x3", epochs=4, batch_size=32, head_epochs=20), out)
    for name in (CONFIG, WEIGHTS, METRICS, CHECKPOINT):
        assert (out / name).is_file()
    metrics = json.loads((out / METRICS).read_text())
    for key in ("test_accuracy", "head_test_accuracy", "per_layer_test_accuracy", "train_seconds", "epochs", "history"):
        assert key in metrics
    assert len(metrics["history"]) == 4 and metrics["epochs"] == 4
    # 600 training digits, 4 epochs of a small int8 net: far above chance (10%) on held-out digits.
    assert metrics["test_accuracy"] > 0.5 and metrics["head_test_accuracy"] > 0.4
    state = torch.load(out / WEIGHTS, weights_only=True)
    assert any("weight" in k for k in state)
    cfg, net = load_run(out)
    assert cfg["model"]["quant"] is True and len(net.layers) == 3
    assert m == metrics


def test_same_seed_same_accuracy_and_resume_matches(tmp_path: Path, small_npz: str) -> None:
    a = train_run(_cfg(small_npz), tmp_path / "a")
    b = train_run(_cfg(small_npz), tmp_path / "b")
    assert a["test_accuracy"] == b["test_accuracy"] and a["history"][-1]["loss"] == b["history"][-1]["loss"]
    # Interrupted after epoch 1, resumed to epoch 2: the same run as an uninterrupted one.
    train_run(_cfg(small_npz, epochs=1), tmp_path / "c")
    cfg_path = tmp_path / "c" / CONFIG
    cfg = json.loads(cfg_path.read_text())
    assert cfg["train"]["epochs"] == 1
    c = resume_run(tmp_path / "c", epochs=2)
    assert [h["epoch"] for h in c["history"]] == [1, 2]
    # The cosine schedule differs (1 vs 2 epochs planned at epoch 1), so only the bookkeeping is equal.
    assert c["epochs"] == 2


def test_probe_is_off_the_clock_and_can_stop_training(tmp_path: Path, small_npz: str) -> None:
    calls: list[float] = []

    def fn(t: float, net: FFNet, data) -> bool:  # noqa: ANN001
        assert net.training
        calls.append(t)
        time.sleep(1.5)  # not training time
        return len(calls) == 3

    m = train_run(_cfg(small_npz, epochs=100), tmp_path / "p", probe=Probe(0.2, fn))
    assert len(calls) == 3 and calls == sorted(calls) and calls[0] >= 0.2
    # 0.2 s of training between calls; had the 1.5 s sleeps been counted, each gap would exceed 1.5 s.
    assert all(b - a < 1.5 for a, b in zip(calls, calls[1:]))
    stop = m["stopped_by_probe"]
    assert stop["epoch"] == len(m["history"]) < 100 and 1 <= stop["step"] <= stop["steps_per_epoch"] == 12
    # A stopped run is a finished run: head fitted, weights and metrics written, loadable and exportable.
    assert json.loads((tmp_path / "p" / METRICS).read_text()) == m and 0.0 <= m["head_test_accuracy"] <= 1.0
    load_run(tmp_path / "p")
    # A probe returning None never stops training.
    n = train_run(_cfg(small_npz, epochs=1), tmp_path / "q", probe=Probe(0.05, lambda t, net, data: None))
    assert "stopped_by_probe" not in n and len(n["history"]) == 1


def test_float_baseline_and_options(tmp_path: Path, small_npz: str) -> None:
    m = train_run(
        _cfg(small_npz, quant=False, local="layer", loss="bce", negatives="hard", epochs=1, predict_layers=[1, 2]),
        tmp_path / "f",
    )
    assert m["predict_layers"] == [1, 2]
    cfg, net = load_run(tmp_path / "f")
    assert cfg["model"]["quant"] is False
    assert not any("quant" in type(mod).__name__.lower() for mod in net.modules())


def test_head_layers_default_resolved_and_old_runs_keep_theirs(tmp_path: Path, small_npz: str) -> None:
    # The default (every layer but the last) is written resolved into config.json, so a changed default
    # cannot change a run; the head reads exactly those layers.
    train_run(_cfg(small_npz, epochs=1, head_epochs=1), tmp_path / "d")
    cfg, net = load_run(tmp_path / "d")
    assert cfg["train"]["head_layers"] == [0, 1] == net.head_layers
    assert net.head.in_features == (8 + 16) * net.head_grid**2
    # An explicit choice is kept.
    train_run(_cfg(small_npz, epochs=1, head_epochs=1, head_layers=[2]), tmp_path / "e")
    cfg, net = load_run(tmp_path / "e")
    assert cfg["train"]["head_layers"] == [2] == net.head_layers
    # A run made before --head-layers existed (no key) is read with the head it was trained with: every layer but
    # the first.
    old = json.loads((tmp_path / "d" / CONFIG).read_text())
    del old["train"]["head_layers"]
    assert TrainConfig.from_dict(old["train"]).feature_layers(3) == [1, 2]


@pytest.mark.parametrize("layers, needle", [([3], "layer 3 does not exist"), ([1, 1], "names a layer twice")])
def test_bad_head_layers_are_refused(layers: list[int], needle: str) -> None:
    with pytest.raises(FFEdgeError, match=needle):
        TrainConfig(layers=TINY, head_layers=layers).validate()
