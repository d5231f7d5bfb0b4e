"""Label encodings: exact rebuild from config, shapes, ordering, distinguishability, bad input, drawing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffedge.errors import FFEdgeError
from ffedge.labels import ENCODING_NAMES, encoding_from_config, make_encoding
from ffedge.labels.draw import label_sheet, save_label_sheet
from tests.conftest import cli, python

SHAPES = [(1, 28, 28), (3, 32, 32)]
VARIANTS = [("fourier", {}), ("fourier", {"mode": "add"}), ("morph", {}), ("onehot", {})]
VARIANT_IDS = ["fourier-channel", "fourier-add", "morph", "onehot"]


def images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def digit() -> np.ndarray | None:
    """One real, normalized mnist-5k test digit [1, 1, 28, 28], or None if the loaders are missing."""
    try:
        from ffedge.datasets import load_dataset
        from ffedge.runtime.preprocess import compute_normalization, normalize
    except ImportError:
        return None
    ds = load_dataset("mnist-5k")
    mean, std = compute_normalization(ds.x_train)
    return normalize(ds.x_test[:1], mean, std)


def max_pattern_correlation(patterns: np.ndarray) -> float:
    p = patterns.reshape(patterns.shape[0], -1).astype(np.float64)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    corr = np.abs(p @ p.T)
    np.fill_diagonal(corr, 0.0)
    return float(corr.max())


# ------------------------------------------------------------ rebuild from config


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [10, 100])
def test_config_round_trip_through_json_is_exact(name: str, params: dict, shape: tuple, k: int) -> None:
    enc = make_encoding(name, k, shape, **params)
    cfg = json.loads(json.dumps(enc.to_config()))
    x = images(2, shape)
    for again in (encoding_from_config(cfg), encoding_from_config(cfg, enc.arrays())):
        assert again.to_config() == enc.to_config()
        assert np.array_equal(again.encode_all(x), enc.encode_all(x))
        assert np.array_equal(again.neutral(x), enc.neutral(x))
        for key, arr in enc.arrays().items():
            assert np.array_equal(again.arrays()[key], arr)


def test_config_names_every_parameter() -> None:
    cfg = make_encoding("fourier", 10, (1, 28, 28)).to_config()
    assert cfg["name"] == "fourier" and cfg["num_classes"] == 10 and cfg["image_shape"] == [1, 28, 28]
    assert cfg["mode"] == "channel" and cfg["amplitude"] == 1.0 and len(cfg["freqs"]) == 10
    morph = make_encoding("morph", 10, (1, 28, 28)).to_config()
    assert len(morph["transforms"]) == 10
    assert make_encoding("onehot", 10, (1, 28, 28)).to_config()["amplitude"] == 3.0


def test_bundle_arrays_must_match_the_config() -> None:
    enc = make_encoding("fourier", 10, (1, 28, 28))
    cfg = enc.to_config()
    with pytest.raises(FFEdgeError, match="differs"):
        encoding_from_config(cfg, {"patterns": enc.patterns + 1e-3})
    with pytest.raises(FFEdgeError, match="differs"):
        encoding_from_config(cfg, {"patterns": enc.patterns[::-1].copy()})
    with pytest.raises(FFEdgeError, match="shape"):
        encoding_from_config(cfg, {"patterns": enc.patterns[:9]})
    with pytest.raises(FFEdgeError, match="do not match"):
        encoding_from_config(cfg, {})
    other = make_encoding("morph", 10, (1, 28, 28))
    fp = other.footprints()
    fp[0] = fp[1]
    with pytest.raises(FFEdgeError, match="differs"):
        encoding_from_config(other.to_config(), {"footprints": fp})


def test_verified_bundle_arrays_are_used_as_saved() -> None:
    # Float rounding of cos() may differ in the last bit across CPUs: the device uses training's bytes.
    enc = make_encoding("fourier", 10, (1, 28, 28))
    saved = np.nextafter(enc.patterns, np.float32(2.0))
    again = encoding_from_config(enc.to_config(), {"patterns": saved})
    out = again.encode(images(1, (1, 28, 28)), np.array([3]))
    assert np.array_equal(out[0, 1], saved[3, 0])


# ------------------------------------------------------------ shapes and ordering


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shapes_and_layout(name: str, params: dict, shape: tuple) -> None:
    enc = make_encoding(name, 10, shape, **params)
    extra = 1 if name == "fourier" and params.get("mode", "channel") == "channel" else 0
    assert enc.out_channels == shape[0] + extra
    x = images(3, shape).astype(np.float64)[:, :, ::-1]  # float64, not contiguous: accepted
    for out, n in ((enc.encode(x, np.array([0, 5, 9])), 3), (enc.neutral(x), 3), (enc.encode_all(x), 30)):
        assert out.shape == (n, enc.out_channels, *shape[1:])
        assert out.dtype == np.float32 and out.flags.c_contiguous


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_encode_all_is_image_major(name: str, params: dict) -> None:
    enc = make_encoding(name, 10, (3, 32, 32), **params)
    x = images(3, (3, 32, 32))
    every = enc.encode_all(x)
    for n in range(3):
        for k in range(10):
            assert np.array_equal(every[n * 10 + k], enc.encode(x[n : n + 1], np.array([k]))[0])
    sub = enc.encode_all(x, classes=np.array([7, 2]))
    assert sub.shape[0] == 6
    assert np.array_equal(sub[5], every[2 * 10 + 2]) and np.array_equal(sub[4], every[2 * 10 + 7])
    assert enc.encode_all(x, classes=np.array([], dtype=np.int64)).shape == (0, enc.out_channels, 32, 32)


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_deterministic_and_input_untouched(name: str, params: dict) -> None:
    x = images(4, (1, 28, 28))
    before = x.copy()
    a = make_encoding(name, 10, (1, 28, 28), **params)
    b = make_encoding(name, 10, (1, 28, 28), **params)
    labels = np.array([1, 0, 9, 4])
    assert np.array_equal(a.encode(x, labels), b.encode(x, labels))
    assert np.array_equal(a.encode(x, labels), a.encode(x, labels))
    a.neutral(x), a.encode_all(x)
    assert np.array_equal(x, before)


# ------------------------------------------------------------ the patterns themselves


def test_fourier_default_is_the_measured_grating() -> None:
    enc = make_encoding("fourier", 10, (1, 28, 28))
    i, j = np.arange(28)[:, None], np.arange(28)[None, :]
    for k in range(10):
        t = np.pi * k / 10
        expected = np.cos(2 * np.pi * 4 * (i * np.cos(t) + j * np.sin(t)) / 28).astype(np.float32)
        assert np.array_equal(enc.patterns[k, 0], expected)
    x = images(2, (1, 28, 28))
    out = enc.encode(x, np.array([3, 7]))
    assert np.array_equal(out[:, 0], x[:, 0]) and np.array_equal(out[1, 1], enc.patterns[7, 0])
    assert np.all(enc.neutral(x)[:, 1] == 0) and np.array_equal(enc.neutral(x)[:, 0], x[:, 0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k,bound", [(10, 0.2), (16, 0.35), (17, 0.05), (100, 0.05)])
def test_fourier_patterns_are_well_separated(shape: tuple, k: int, bound: float) -> None:
    for mode in ("channel", "add"):
        assert max_pattern_correlation(make_encoding("fourier", k, shape, mode=mode).patterns) < bound


def test_fourier_add_mode_gives_colour_channels_distinct_phases() -> None:
    enc = make_encoding("fourier", 10, (3, 32, 32), mode="add")
    x = images(1, (3, 32, 32))
    added = enc.encode(x, np.array([4]))[0] - x[0]
    assert np.allclose(added, enc.patterns[4], atol=1e-6)
    assert not np.allclose(added[0], added[1]) and not np.allclose(added[1], added[2])
    assert np.array_equal(enc.neutral(x), x)


def test_onehot_writes_the_first_k_pixels_row_major() -> None:
    enc = make_encoding("onehot", 40, (3, 28, 28), amplitude=2.0)
    x = images(1, (3, 28, 28))
    out = enc.encode(x, np.array([39]))[0]
    flat = out.reshape(3, -1)
    assert np.all(flat[:, 39] == 2.0) and np.all(flat[:, :39] == 0.0) and out[2, 1, 11] == 2.0
    assert np.array_equal(flat[:, 40:], x[0].reshape(3, -1)[:, 40:])
    assert np.allclose(enc.neutral(x)[0].reshape(3, -1)[:, :40], 2.0 / 40)


def test_morph_default_transforms_and_order_relations() -> None:
    enc = make_encoding("morph", 10, (1, 28, 28))
    assert [enc.describe(k) for k in (0, 3, 4, 8, 9)] == [
        "dilate 3px 0deg",
        "dilate 3px 135deg",
        "erode 3px 0deg",
        "open 3px 0deg",
        "open 3px 90deg",
    ]
    x = images(5, (1, 28, 28))
    every = enc.encode_all(x).reshape(5, 10, 1, 28, 28)
    assert np.all(every[:, :4] >= x[:, None]) and np.all(every[:, 4:] <= x[:, None])  # dilate up, erode/open down
    assert enc.footprints().shape == (10, 3, 3) and enc.footprints().sum() == 30
    # Horizontal 3-pixel dilation by hand, outside pixels ignored.
    pad = np.pad(x[0, 0], ((0, 0), (1, 1)), constant_values=-np.inf)
    assert np.array_equal(every[0, 0, 0], np.maximum(np.maximum(pad[:, :-2], pad[:, 1:-1]), pad[:, 2:]))
    big = make_encoding("morph", 100, (3, 32, 32))
    assert big.radius == 7 and len({tuple(t) for t in big.to_config()["transforms"]}) == 100
    shrinking = [t for t in big.transforms if t[0] in ("erode", "open")]
    assert shrinking and all(max(abs(t[1]), abs(t[2])) == 1 for t in shrinking)


def test_morph_is_fast() -> None:
    enc = make_encoding("morph", 10, (1, 28, 28))
    x = images(64, (1, 28, 28))
    enc.encode_all(x)
    t = time.perf_counter()
    enc.encode_all(x)
    assert time.perf_counter() - t < 0.25  # a few ms normally; generous for a busy machine


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("k,shape", [(10, (1, 28, 28)), (100, (1, 28, 28)), (100, (3, 32, 32))])
def test_every_label_and_neutral_give_different_inputs(name: str, params: dict, k: int, shape: tuple) -> None:
    enc = make_encoding(name, k, shape, **params)
    samples = [images(1, shape, seed=3)]
    real = digit() if shape == (1, 28, 28) else None
    if real is not None:
        samples.append(real)
    for x in samples:
        every = enc.encode_all(x).reshape(k, -1)
        distinct = {row.tobytes() for row in every}
        assert len(distinct) == k
        assert enc.neutral(x).reshape(-1).tobytes() not in distinct


# ------------------------------------------------------------ errors


def test_bad_construction_raises_user_errors() -> None:
    cases = [
        (lambda: make_encoding("nosuch", 10, (1, 28, 28)), "unknown label encoding"),
        (lambda: make_encoding("fourier", 10, (1, 28, 28), colour=1), "unknown parameter"),
        (lambda: make_encoding("fourier", 1, (1, 28, 28)), "num_classes"),
        (lambda: make_encoding("fourier", 10, (28, 28)), "image_shape"),
        (lambda: make_encoding("fourier", 10, (1, 28, 28), mode="sideways"), "mode"),
        (lambda: make_encoding("fourier", 10, (1, 28, 28), amplitude=-1), "amplitude"),
        (lambda: make_encoding("fourier", 10, (1, 28, 28), freqs=[4.0] * 10), "all of freqs"),
        (
            lambda: make_encoding("fourier", 2, (1, 28, 28), freqs=[4, 4], angles=[0, 0], phases=[0, 0]),
            "same label pattern",
        ),
        (lambda: make_encoding("fourier", 2, (1, 28, 28), freqs=[4, 20], angles=[0, 0], phases=[0, 0]), "Nyquist"),
        (lambda: make_encoding("fourier", 100, (1, 8, 8)), "fits only"),
        (lambda: make_encoding("onehot", 100, (1, 8, 8)), "do not fit"),
        (lambda: make_encoding("morph", 10, (1, 28, 28), ops=["melt"]), "ops"),
        (lambda: make_encoding("morph", 20, (1, 28, 28), radii=[1]), "give only"),
        (lambda: make_encoding("morph", 100, (1, 5, 5)), "larger images"),
        (lambda: make_encoding("morph", 10, (1, 28, 28), radii=[14]), "longer than"),
        (lambda: make_encoding("morph", 10, (1, 28, 28), shrink_max_radius=-1), "shrink_max_radius"),
        (
            lambda: make_encoding("morph", 2, (1, 28, 28), transforms=[["dilate", 0, 1], ["dilate", 0, -1]]),
            "same transform",
        ),
        (lambda: make_encoding("morph", 2, (1, 28, 28), transforms=[["dilate", 0, 1]], ops=["erode"]), "not both"),
        (lambda: encoding_from_config({"num_classes": 10}), "name"),
        (
            lambda: encoding_from_config(
                {"name": "onehot", "version": 99, "num_classes": 10, "image_shape": [1, 8, 8]}
            ),
            "version",
        ),
        (lambda: encoding_from_config({"name": "onehot", "image_shape": [1, 8, 8]}), "num_classes"),
    ]
    for build, message in cases:
        with pytest.raises(FFEdgeError, match=message):
            build()
            pytest.fail(f"no error for the case expecting {message!r}")


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_bad_inputs_raise_user_errors(name: str) -> None:
    enc = make_encoding(name, 10, (1, 28, 28))
    x = images(2, (1, 28, 28))
    with pytest.raises(FFEdgeError, match="out of range"):
        enc.encode(x, np.array([0, 10]))
    with pytest.raises(FFEdgeError, match="out of range"):
        enc.encode(x, np.array([-1, 0]))
    with pytest.raises(FFEdgeError, match="integers"):
        enc.encode(x, np.array([0.0, 1.0]))
    with pytest.raises(FFEdgeError, match="shape"):
        enc.encode(x, np.array([0, 1, 2]))
    with pytest.raises(FFEdgeError, match=r"\[N, 1, 28, 28\]"):
        enc.encode(images(2, (3, 28, 28)), np.array([0, 1]))
    with pytest.raises(FFEdgeError, match=r"\[N, 1, 28, 28\]"):
        enc.neutral(x[0])
    with pytest.raises(FFEdgeError, match="normalized floats"):
        enc.encode_all(np.zeros((1, 1, 28, 28), np.uint8))
    with pytest.raises(FFEdgeError, match="out of range"):
        enc.encode_all(x, classes=np.array([11]))


# ------------------------------------------------------------ drawing and the command


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_label_sheet_draws_every_encoding(tmp_path: Path, name: str, params: dict) -> None:
    enc = make_encoding(name, 12, (3, 16, 16), **params)
    sheet = label_sheet(enc, images(1, (3, 16, 16))[0], scale=2)
    path = save_label_sheet(tmp_path / "sheet.png", sheet)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temp file left behind


def test_labels_command_writes_png_and_rejects_bad_options(tmp_path: Path) -> None:
    pytest.importorskip("ffedge.datasets")
    out = tmp_path / "labels.png"
    ok = cli(
        "labels",
        "--dataset",
        "mnist-5k",
        "--labels",
        "fourier",
        "--label-mode",
        "channel",
        "--out",
        str(out),
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > img.height > 100
    bad = cli("labels", "--labels", "morph", "--label-mode", "add", "--out", str(tmp_path / "x.png"), timeout=120)
    assert bad.returncode == 2 and "--label-mode" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.png").exists()


def test_device_side_modules_do_not_import_torch() -> None:
    code = "import ffedge.labels, ffedge.labels.draw, ffedge.cli.labels_cmd; assert 'torch' not in sys.modules"
    r = python(code, blocked=(), timeout=60)  # torch not blocked: nothing may import it
    assert r.returncode == 0, r.stderr
