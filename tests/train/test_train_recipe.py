"""The training recipe's parts: several wrong labels per image, augmentation, float epochs before QAT, the probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("brevitas")

from ffedge.errors import FFEdgeError  # noqa: E402
from ffedge.ff import wrong_labels  # noqa: E402
from ffedge.train import TrainConfig, train_run  # noqa: E402
from ffedge.train.losses import ff_loss  # noqa: E402
from ffedge.train.epoch import Probe  # noqa: E402
from ffedge.train.pipeline import resume_run  # noqa: E402
from ffedge.train.run_files import CHECKPOINT, load_run, load_torch  # noqa: E402
from ffedge.train.trainer import augment  # noqa: E402

TINY = "8x5p,16x3"


def _cfg(dataset: str, **kw) -> TrainConfig:
    base = dict(dataset=dataset, layers=TINY, epochs=2, batch_size=50, head_epochs=2, eval_samples=50, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_wrong_labels_are_wrong_and_distinct() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 500)
    one = wrong_labels(y, 10, rng)
    assert one.shape == (500,) and not np.any(one == y) and set(np.unique(one)) == set(range(10))
    many = wrong_labels(y, 10, rng, 4)
    assert many.shape == (4, 500) and not np.any(many == y[None])
    assert all(len(set(many[:, i])) == 4 for i in range(500))
    every = wrong_labels(y, 10, rng, 9)
    assert all(sorted(set(every[:, i]) | {y[i]}) == list(range(10)) for i in range(500))


def test_symba_with_several_wrong_labels_is_cross_entropy_over_hypotheses() -> None:
    gen = torch.Generator().manual_seed(0)
    g_pos, g_neg = torch.rand(6, generator=gen), torch.rand(3 * 6, generator=gen)
    alpha = 4.0
    logits = alpha * torch.cat([g_pos[None], g_neg.view(3, 6)]).T  # [B, 1 + n], the right label first
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(ff_loss("symba", g_pos, g_neg, alpha), expected, atol=1e-6)
    # One wrong label: SymBa's softplus(-alpha (g+ - g-)).
    one = ff_loss("symba", g_pos, g_neg[:6], alpha)
    assert torch.allclose(one, torch.nn.functional.softplus(-alpha * (g_pos - g_neg[:6])).mean())


def test_augment_translates_within_the_border_and_flips() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 1, 10, 10)).astype(np.float32)
    fill = np.array([-7.0], np.float32)
    assert augment(x, 0, False, fill, rng) is x
    out = augment(x, 2, False, fill, rng)
    assert out.shape == x.shape
    for i in range(len(x)):
        # Every output is the input moved by (dy, dx) in [-2, 2]^2, the uncovered border filled.
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = np.full_like(x[i], -7.0)
                ys, yd = slice(max(0, -dy), 10 - max(0, dy)), slice(max(0, dy), 10 - max(0, -dy))
                xs, xd = slice(max(0, -dx), 10 - max(0, dx)), slice(max(0, dx), 10 - max(0, -dx))
                ref[:, yd, xd] = x[i][:, ys, xs]
                found = found or np.array_equal(out[i], ref)
        assert found, f"image {i} is not a translation of its input"
    flipped = augment(x, 0, True, fill, np.random.default_rng(2))
    mirrored = [np.array_equal(f, o[..., ::-1]) for f, o in zip(flipped, x)]
    kept = [np.array_equal(f, o) for f, o in zip(flipped, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 10 < sum(mirrored) < 54


def test_float_epochs_then_qat_gives_a_quantized_run_and_resumes_across_the_switch(
    tmp_path: Path, small_npz: str
) -> None:
    m = train_run(
        _cfg(small_npz, layers="16x5p,64x5p,64x3", batch_size=32, epochs=4, qat_epochs=1, shift=1), tmp_path / "a"
    )
    cfg, net = load_run(tmp_path / "a")
    assert cfg["train"]["qat_epochs"] == 1 and net.quant.enabled
    assert load_torch(tmp_path / "a" / CHECKPOINT)["quantized"] is True
    # 3 float epochs and 1 QAT epoch on 600 digits: far above chance (10%), as a net quantized from the start.
    assert (
        m["test_accuracy"] > 0.5 and m["history"][-1]["heldout_accuracy"] >= m["history"][-2]["heldout_accuracy"] - 0.1
    )
    # Stopped after the float epoch, resumed: the switch to QAT happens in the resumed epoch.
    train_run(_cfg(small_npz, epochs=1, qat_epochs=None, quant=False), tmp_path / "b")
    first = load_torch(tmp_path / "b" / CHECKPOINT)
    assert first["quantized"] is False
    path = tmp_path / "b" / "config.json"
    config = json.loads(path.read_text())
    config["train"].update(quant=True, qat_epochs=1)
    path.write_text(json.dumps(config))
    resume_run(tmp_path / "b", epochs=2)
    _, resumed = load_run(tmp_path / "b")
    assert resumed.quant.enabled and load_torch(tmp_path / "b" / CHECKPOINT)["quantized"] is True


def test_several_wrong_labels_train_and_are_checked(tmp_path: Path, small_npz: str) -> None:
    m = train_run(_cfg(small_npz, epochs=1, wrong_labels=3, quant=False), tmp_path / "w")
    assert m["history"][0]["g_neg"] and np.isfinite(m["test_accuracy"])
    with pytest.raises(FFEdgeError, match="at most 9 wrong labels"):
        train_run(_cfg(small_npz, wrong_labels=10), tmp_path / "x")
    with pytest.raises(FFEdgeError, match="--wrong-labels 1"):
        train_run(_cfg(small_npz, wrong_labels=2, negatives="hard"), tmp_path / "y")
    with pytest.raises(FFEdgeError, match="--qat-epochs"):
        train_run(_cfg(small_npz, epochs=2, qat_epochs=3), tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_confused_negatives_learn_margins_that_the_checkpoint_keeps(tmp_path: Path, small_npz: str) -> None:
    """--negatives confused: the class pairs' margins come from the steps' own goodness, the checkpoint keeps them
    and --resume restores them; data parallel and the layer pipeline refuse it (one line)."""
    from ffedge.train.checkpoint import restore
    from ffedge.train.trainer import LocalTrainer, build_model

    cfg = _cfg(small_npz, epochs=1, quant=False, negatives="confused")
    m = train_run(cfg, tmp_path / "c")
    assert np.isfinite(m["test_accuracy"]) and m["history"][0]["g_neg"]
    state = load_torch(tmp_path / "c" / CHECKPOINT)
    margins = state["confusion"].numpy()
    off = ~np.eye(10, dtype=bool)
    assert margins.shape == (10, 10) and np.isfinite(margins).all() and np.all(np.diag(margins) == 0)
    assert (margins[off] != 0).mean() > 0.9 and margins[off].mean() < 0  # negatives score below their positives
    net = build_model(cfg, 2, (28, 28), 10)
    trainer = LocalTrainer(net, cfg)
    restore(net, trainer, state, tmp_path / "c" / CHECKPOINT)
    assert np.array_equal(trainer.confusion.margins, margins)
    resume_run(tmp_path / "c", epochs=2)
    assert not np.array_equal(load_torch(tmp_path / "c" / CHECKPOINT)["confusion"].numpy(), margins)
    with pytest.raises(FFEdgeError, match="--wrong-labels 1"):
        train_run(_cfg(small_npz, wrong_labels=2, negatives="confused"), tmp_path / "y")
    from ffedge.train.layer_pipeline import check_pipeline

    with pytest.raises(FFEdgeError, match="one process"):
        check_pipeline(cfg, 2)


def test_probe_runs_on_training_time_and_is_not_counted(tmp_path: Path, small_npz: str) -> None:
    import time

    calls: list[float] = []

    def slow_probe(seconds: float, net, data) -> None:  # noqa: ANN001
        calls.append(seconds)
        time.sleep(0.5)

    m = train_run(_cfg(small_npz, epochs=2, quant=False), tmp_path / "p", probe=Probe(0.05, slow_probe))
    assert len(calls) >= 3 and calls == sorted(calls) and calls[-1] <= m["train_seconds"]
    # Each call slept 0.5 s; had that been training time, successive calls would be >= 0.5 s apart
    # on the training clock. A step of this tiny net takes milliseconds.
    assert max(b - a for a, b in zip(calls, calls[1:])) < 0.45


def test_augment_rotates_and_scales_around_the_centre_and_fills_the_border() -> None:
    rng = np.random.default_rng(3)
    fill = np.array([-0.5], np.float32)
    x = np.full((32, 1, 12, 12), -0.5, np.float32)
    x[:, :, 4:8, 4:8] = 2.0  # a bright square in the middle
    out = augment(x, 1, False, fill, rng, rotate=15.0, scale=0.1)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.allclose(out[:, :, 0, :], -0.5) and np.allclose(out[:, :, :, 0], -0.5)  # the border stays black
    assert not np.array_equal(out, x) and np.all(out[:, :, 5:7, 5:7] > 0.5)  # the square moved, by little


def test_precision_auto_is_bf16_only_on_cpus_with_native_bf16_and_old_runs_stay_fp32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ffedge.train import trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert TrainConfig().float_precision() == "bf16"
    assert TrainConfig(device="cuda").float_precision() == "fp32"
    assert TrainConfig(precision="fp32").float_precision() == "fp32"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert TrainConfig().float_precision() == "fp32" and TrainConfig(precision="bf16").float_precision() == "bf16"
    assert TrainConfig.from_dict({"dataset": "mnist-5k"}).precision == "fp32"  # a config.json from before the option
    with pytest.raises(FFEdgeError, match="unknown --precision 'fp16'"):
        TrainConfig(precision="fp16").validate()


def test_bf16_float_phase_trains_in_bf16_and_the_qat_phase_in_fp32(tmp_path: Path, small_npz: str) -> None:
    from ffedge.train.trainer import LocalTrainer, build_model

    steps = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = build_model(TrainConfig(layers=TINY, quant=False), 2, (28, 28), 10, quant=False)
        t = LocalTrainer(net, _cfg(small_npz, precision=precision, quant=False))
        assert t.bf16 == (precision == "bf16")
        x = torch.randn(16, 2, 28, 28, generator=torch.Generator().manual_seed(1))
        steps[precision] = np.array(t.step(x, x.flip(0)))
    # Same weights, same data: the losses agree to bf16's precision but not exactly (bf16 was used).
    assert np.allclose(steps["fp32"], steps["bf16"], rtol=5e-2, atol=1e-2) and not np.array_equal(
        steps["fp32"], steps["bf16"]
    )
    qnet = build_model(TrainConfig(layers=TINY), 2, (28, 28), 10, quant=True)
    assert LocalTrainer(qnet, _cfg(small_npz, precision="bf16")).bf16 is False
    # A whole run each way: bf16 learns as fp32 does (4 epochs on 600 digits, both far above chance).
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = train_run(
            _cfg(
                small_npz,
                layers="16x5p,64x5p,64x3",
                batch_size=32,
                epochs=4,
                quant=False,
                shift=1,
                rotate=0.0,
                scale=0.0,
                precision=precision,
            ),
            tmp_path / precision,
        )
        assert runs[precision]["float_precision"] == precision
        assert json.loads((tmp_path / precision / "config.json").read_text())["train"]["precision"] == precision
    assert (
        runs["bf16"]["test_accuracy"] > 0.5 and abs(runs["bf16"]["test_accuracy"] - runs["fp32"]["test_accuracy"]) < 0.1
    )


def test_native_bf16_probe_asks_torch_for_amx_then_avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from ffedge.train import trainer

    for amx, avx, want in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v)
        assert trainer.cpu_has_native_bf16() is want
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert trainer.cpu_has_native_bf16() is False  # a torch without the probes keeps fp32
