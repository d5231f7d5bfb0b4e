"""Normalization shared by trainer and runtime."""

from __future__ import annotations

import numpy as np
import pytest

from ffedge.datasets import load_dataset
from ffedge.runtime.preprocess import MIN_STD, compute_normalization, normalize


def test_mnist_5k_statistics_match_mnist() -> None:
    mean, std = compute_normalization(load_dataset("mnist-5k").x_train)
    assert len(mean) == len(std) == 1
    assert mean[0] == pytest.approx(0.13, abs=0.01)
    assert std[0] == pytest.approx(0.31, abs=0.01)


def test_statistics_equal_float64_reference_per_channel() -> None:
    x = np.random.default_rng(1).integers(0, 256, size=(9000, 4, 5, 3), dtype=np.uint8)  # > one chunk
    mean, std = compute_normalization(x)
    ref = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), rtol=1e-9)


def test_constant_channel_gets_floor_std() -> None:
    x = np.full((3, 2, 2, 1), 7, dtype=np.uint8)
    mean, std = compute_normalization(x)
    assert mean[0] == pytest.approx(7 / 255)
    assert std == [MIN_STD]


def test_normalize_layout_and_values() -> None:
    x = np.random.default_rng(2).integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    out = normalize(x, mean, std)
    assert out.shape == (4, 3, 5, 6) and out.dtype == np.float32 and out.flags.c_contiguous
    ref = (x.transpose(0, 3, 1, 2) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_normalized_training_set_is_standardized() -> None:
    x = load_dataset("mnist-5k").x_train
    out = normalize(x, *compute_normalization(x))
    assert abs(float(out.mean())) < 1e-4 and float(out.std()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("x", "mean", "std"),
    [
        (np.zeros((2, 3, 3), np.uint8), [0.0], [1.0]),  # not NHWC
        (np.zeros((2, 3, 3, 1), np.float32), [0.0], [1.0]),  # not uint8
        (np.zeros((2, 3, 3, 3), np.uint8), [0.0], [1.0]),  # wrong number of channels
        (np.zeros((2, 3, 3, 1), np.uint8), [0.0], [0.0]),  # zero std
    ],
)
def test_normalize_rejects_bad_input(x: np.ndarray, mean: list[float], std: list[float]) -> None:
    with pytest.raises(ValueError):
        normalize(x, mean, std)


def test_empty_input_rejected() -> None:
    with pytest.raises(ValueError):
        compute_normalization(np.zeros((0, 2, 2, 1), np.uint8))
