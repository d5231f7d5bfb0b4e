"""The FF definitions of ffedge.ff (numpy), and their torch twins held equal: every registered loss, goodness,
the head-feature normalization. The torch half of each test is skipped where torch is not installed."""

from __future__ import annotations

import numpy as np
import pytest

from ffedge import ff
from ffedge.errors import FFEdgeError
from ffedge.ff import losses as ff_losses


def _goodness_pairs(seed: int, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 2, n), rng.uniform(0, 2, n)


# ---------------------------------------------------------------------------- numpy


def test_the_registry_is_the_one_list_of_losses() -> None:
    assert ff.LOSS_NAMES == ff.loss_names() == tuple(spec.name for spec in ff.registered_losses())
    assert ff.LOSS_NAMES[0] == ff.DEFAULT_LOSS and len(set(ff.LOSS_NAMES)) == len(ff.LOSS_NAMES)
    assert all(spec.summary and "\n" not in spec.summary for spec in ff.registered_losses())
    with pytest.raises(FFEdgeError, match="unknown loss 'hinge': choose one of " + ", ".join(ff.LOSS_NAMES)):
        ff.loss_spec("hinge")
    with pytest.raises(FFEdgeError, match="unknown loss"):
        ff.ff_loss("hinge", np.zeros(2), np.zeros(2))


def test_a_loss_registers_once_under_a_lowercase_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ff_losses, "_REGISTRY", dict(ff_losses._REGISTRY))

    @ff.register_loss("hinge", "max(0, 1 - (g+ - g-))")
    def hinge(gp: np.ndarray, gn: np.ndarray, alpha: float, threshold: float) -> tuple[float, np.ndarray, np.ndarray]:
        m = 1.0 - (gp - gn)
        on = (m > 0) / gp.size
        return float(np.maximum(m, 0).mean()), -on, on

    assert ff.loss_names()[-1] == "hinge" and ff.loss_spec("hinge").fn is hinge
    loss, dp, dn = ff.ff_loss("hinge", np.array([0.0, 3.0], np.float32), np.array([0.5, 0.0], np.float32))
    assert loss == pytest.approx(0.75) and dp.dtype == np.float32 and np.allclose(dn, [0.5, 0.0])
    with pytest.raises(ValueError, match="twice"):
        ff.register_loss("hinge", "again")(hinge)
    with pytest.raises(ValueError, match="lowercase"):
        ff.register_loss("Hinge", "upper")(hinge)


@pytest.mark.parametrize("name", ff.LOSS_NAMES)
def test_numpy_gradients_are_the_derivatives_of_the_numpy_loss(name: str) -> None:
    gp, gn = _goodness_pairs(1, 8)
    _, dp, dn = ff.ff_loss(name, gp, gn, alpha=2.5, threshold=0.8)
    eps = 1e-6
    for side, grad in ((0, dp), (1, dn)):
        for i in range(len(gp)):
            step = np.zeros(len(gp))
            step[i] = eps
            up, down = [gp, gn], [gp, gn]
            up[side], down[side] = up[side] + step, down[side] - step
            numeric = (
                ff.ff_loss(name, *up, alpha=2.5, threshold=0.8)[0]
                - ff.ff_loss(name, *down, alpha=2.5, threshold=0.8)[0]
            ) / (2 * eps)
            assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_goodness_is_the_mean_of_squares_over_c_h_w() -> None:
    h = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    g = ff.goodness(h)
    assert g.shape == (2,) and g.dtype == np.float32
    assert np.allclose(g, [(h[i] ** 2).sum() / 12 for i in range(2)])


def test_head_features_are_divided_by_their_norm_plus_eps() -> None:
    f = np.array([[3.0, 4.0], [0.0, 0.0]])
    out = ff.normalize_features(f)
    assert out.dtype == np.float32 and ff.HEAD_NORM_EPS == 1e-6
    assert np.allclose(out[0], np.array([3.0, 4.0]) / (5.0 + 1e-6)) and np.array_equal(out[1], [0.0, 0.0])


def test_grid_features_normalize_each_cell() -> None:
    # [N, C * cells] channel-major: cell j of channel c at c * cells + j; each cell's C-vector gets unit length.
    f = np.array([[3.0, 1.0, 4.0, 0.0]])  # C = 2, cells = 2: cell 0 = (3, 4), cell 1 = (1, 0)
    out = ff.normalize_features(f, cells=2)
    assert np.allclose(out, [[3 / (5 + 1e-6), 1 / (1 + 1e-6), 4 / (5 + 1e-6), 0.0]])


def test_head_pool_is_adaptive_average_pooling() -> None:
    h = np.arange(2 * 3 * 7 * 5, dtype=np.float32).reshape(2, 3, 7, 5)
    assert np.allclose(ff.head_pool(h, 1), h.mean(axis=(2, 3)))
    out = ff.head_pool(h, 2).reshape(2, 3, 2, 2)
    # rows 0..3 and 3..6 (7 rows overlap in one), columns 0..2 and 2..4
    for r, (r0, r1) in enumerate(((0, 4), (3, 7))):
        for c, (c0, c1) in enumerate(((0, 3), (2, 5))):
            assert np.allclose(out[:, :, r, c], h[:, :, r0:r1, c0:c1].mean(axis=(2, 3)), rtol=1e-6)
    with pytest.raises(ValueError):
        ff.pool_matrix(3, 3, 4)


def test_wrong_labels_are_wrong() -> None:
    y = np.arange(10).repeat(20)
    rng = np.random.default_rng(0)
    assert not np.any(ff.wrong_labels(y, 10, rng) == y)
    many = ff.wrong_labels(y, 10, rng, 3)
    assert many.shape == (3, len(y)) and not np.any(many == y[None])


def test_confusion_memory_draws_wrong_labels_towards_the_confused_pairs() -> None:
    mem = ff.ConfusionMemory(10)
    y = np.arange(10).repeat(200)
    first = mem.draw(y, np.random.default_rng(1))
    assert not np.any(first == y) and np.array_equal(first, ff.ConfusionMemory(10).draw(y, np.random.default_rng(1)))
    # Margins start at 0: every wrong label about equally likely.
    assert np.bincount(first[y == 3], minlength=10)[3] == 0 and np.bincount(first[y == 3], minlength=10).max() < 45
    # Steps measure that 5 passes for 3 (margin +2) and every other pair is clear (-3).
    for _ in range(200):
        neg = mem.draw(y, np.random.default_rng(2))
        mem.learn(np.where((y == 3) & (neg == 5), 2.0, -3.0))
    assert mem.margins[3, 5] == pytest.approx(2.0, abs=1e-3) and mem.margins[4, 6] == pytest.approx(-3.0, abs=1e-3)
    assert np.all(np.diag(mem.margins) == 0)
    neg = mem.draw(y, np.random.default_rng(3))
    assert not np.any(neg == y)
    share = (neg[y == 3] == 5).mean()  # mix 0.5: 0.5 * softmax share (about 0.99) + 0.5 / 9 drawn uniformly
    assert 0.45 < share < 0.65, share
    assert (neg[y == 4] == 6).mean() < 0.2  # no pair of 4 stands out: uniform
    before = mem.margins.copy()
    mem.learn(np.zeros(len(y)))  # what draw() proposed is learnt once
    mem.learn(np.ones(len(y)))
    assert np.abs(mem.margins - before).max() > 0 and mem._drawn is None


def test_the_defaults() -> None:
    assert (ff.DEFAULT_LOSS, ff.DEFAULT_ALPHA, ff.DEFAULT_THRESHOLD) == ("symba", 4.0, 1.0)


# ---------------------------------------------------------------------------- torch twins


def test_every_registered_loss_has_its_torch_twin_and_no_other() -> None:
    pytest.importorskip("torch")
    from ffedge.train import losses

    assert set(losses.TORCH_LOSSES) == set(ff.LOSS_NAMES)
    assert losses.LOSS_NAMES is ff.LOSS_NAMES
    with pytest.raises(ValueError, match="no numpy definition"):
        losses.torch_twin("hinge")(lambda gp, gn, a, t: gp.sum())
    with pytest.raises(FFEdgeError, match="unknown loss 'hinge'"):
        losses.torch_loss("hinge")


def test_training_refuses_a_loss_without_a_torch_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    from ffedge.train import losses
    from ffedge.train.trainer import TrainConfig

    monkeypatch.setattr(ff_losses, "_REGISTRY", dict(ff_losses._REGISTRY))
    ff.register_loss("numpyonly", "a loss without a torch twin")(lambda gp, gn, a, t: (0.0, gp * 0, gn * 0))
    with pytest.raises(FFEdgeError, match="no torch implementation"):
        losses.torch_loss("numpyonly")
    with pytest.raises(FFEdgeError, match="no torch implementation"):
        TrainConfig(loss="numpyonly").validate()
    with pytest.raises(FFEdgeError, match="unknown loss"):
        TrainConfig(loss="hinge").validate()


@pytest.mark.parametrize("name", ff.LOSS_NAMES)
@pytest.mark.parametrize("alpha, threshold", [(4.0, 1.0), (3.0, 0.7), (0.5, 2.0)])
def test_numpy_and_torch_losses_agree(name: str, alpha: float, threshold: float) -> None:
    torch = pytest.importorskip("torch")
    from ffedge.train.losses import ff_loss

    gp, gn = _goodness_pairs(3)
    loss, dp, dn = ff.ff_loss(name, gp, gn, alpha=alpha, threshold=threshold)
    tp, tn = torch.tensor(gp, requires_grad=True), torch.tensor(gn, requires_grad=True)
    lt = ff_loss(name, tp, tn, alpha=alpha, threshold=threshold)
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-9)
    assert np.allclose(dp, tp.grad.numpy(), rtol=1e-7, atol=1e-12) and np.allclose(
        dn, tn.grad.numpy(), rtol=1e-7, atol=1e-12
    )


def test_torch_goodness_is_the_numpy_goodness() -> None:
    torch = pytest.importorskip("torch")
    from ffedge.train.model import goodness

    rng = np.random.default_rng(4)
    h = np.maximum(rng.normal(size=(6, 5, 7, 3)), 0).astype(np.float32)
    assert np.allclose(goodness(torch.from_numpy(h)).numpy(), ff.goodness(h), rtol=1e-6, atol=0)
    h64 = h.astype(np.float64)
    assert np.allclose(goodness(torch.from_numpy(h64)).numpy(), ff.goodness(h64), rtol=1e-13, atol=0)


def test_torch_head_normalization_is_the_numpy_one() -> None:
    torch = pytest.importorskip("torch")
    from ffedge.train.model import normalize_features

    rng = np.random.default_rng(5)
    f = np.abs(rng.normal(size=(7, 9))).astype(np.float32)
    f[2] = 0  # an all-zero feature: the eps keeps it finite (zero)
    out = normalize_features(torch.from_numpy(f)).numpy()
    assert np.allclose(out, ff.normalize_features(f), rtol=1e-6, atol=1e-7) and np.array_equal(out[2], f[2])
    f12 = np.abs(rng.normal(size=(4, 12))).astype(np.float32)
    out = normalize_features(torch.from_numpy(f12), 4).numpy()
    assert np.allclose(out, ff.normalize_features(f12, 4), rtol=1e-6, atol=1e-7)


def test_torch_head_pool_is_the_numpy_one() -> None:
    torch = pytest.importorskip("torch")
    from ffedge.train.model import head_pool

    rng = np.random.default_rng(6)
    for shape in ((3, 4, 7, 7), (2, 5, 14, 14), (2, 3, 28, 9)):
        h = np.maximum(rng.normal(size=shape), 0).astype(np.float32)
        for grid in (1, 2, 3, 4):
            out = head_pool(torch.from_numpy(h), grid).numpy()
            assert np.allclose(out, ff.head_pool(h, grid), rtol=1e-5, atol=1e-6)
            ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(h), grid).reshape(len(h), -1).numpy()
            assert np.allclose(out, ref, rtol=1e-5, atol=1e-6)
