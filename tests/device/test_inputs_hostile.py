"""Hostile and odd input files (issue 10, items 7-9): one error line each, or a correct reading.

The CLI cases run ``ffedge`` as a user does; the rules behind them (pixel depth
scaling, label checks, bounded arrays) are pinned in-process, where it is cheap.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ffedge.datasets import load_dataset
from ffedge.datasets.cifar import LAYOUTS, read_cifar_tarball
from ffedge.untrusted import MAX_ARRAY_BYTES, NpzArchive, load_npy
from ffedge.datasets.idx import parse_idx
from ffedge.datasets.images import MAX_IMAGE_PIXELS, decode_image
from ffedge.errors import FFEdgeError
from tests.conftest import assert_one_line_error, cli

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    return load_dataset("mnist-5k").x_test[7, :, :, 0]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose (valid) header claims ``width`` x ``height`` grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(100))) + _chunk(b"IEND", b"")
    )
    return path


def npy_claiming(path: Path, shape: tuple[int, ...], dtype: str = "|u1", tail: bytes = bytes(64)) -> Path:
    """A .npy whose header declares ``shape`` but holds only ``tail``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue() + tail)
    return path


def npz_dataset(
    path: Path, x: np.ndarray, y_train: np.ndarray, y_test: np.ndarray, compressed: bool = False, **extra: np.ndarray
) -> Path:
    save = np.savez_compressed if compressed else np.savez
    save(path, x_train=x[: len(y_train)], y_train=y_train, x_test=x[: len(y_test)], y_test=y_test, **extra)
    return path


def truncated_bmp(path: Path, digit: np.ndarray) -> Path:
    """An 8-bit grey BMP (a palette image) cut short: the old palette read decoded it outside any error handling."""
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, "BMP")
    path.write_bytes(buf.getvalue()[:200])
    return path


# ---------------------------------------------------------------- through the CLI


@needs_fifo
def test_predict_refuses_a_named_pipe_instead_of_hanging(golden_int8: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    assert_one_line_error(
        cli("predict", str(golden_int8), str(fifo), timeout=60), "is a named pipe, not a regular file"
    )


def test_predict_reads_16bit_png_and_float_tiff_at_their_depth(
    golden_int8: Path, tmp_path: Path, digit: np.ndarray
) -> None:
    """16-bit (0..65535) and float (0..1) copies of a digit predict exactly like the 8-bit one."""
    ref, g16, f01 = tmp_path / "ref.png", tmp_path / "g16.png", tmp_path / "f01.tif"
    Image.fromarray(digit).save(ref)
    Image.fromarray(digit.astype(np.uint16) * 257).save(g16)
    Image.fromarray(digit.astype(np.float32) / 255).save(f01)
    r = cli("predict", str(golden_int8), str(ref), str(g16), str(f01), "--json", "--top", "10")
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    tops = [p["top"] for p in json.loads(r.stdout)["predictions"]]
    assert tops[1] == tops[0] and tops[2] == tops[0], tops


def test_predict_refuses_an_image_above_the_pixel_limit(golden_int8: Path, tmp_path: Path) -> None:
    path = png_claiming(tmp_path / "huge.png", 12000, 12000)  # 144 Mpx
    err = assert_one_line_error(cli("predict", str(golden_int8), str(path), "--resize"), "12000x12000")
    assert f"{MAX_IMAGE_PIXELS:,}" in err and "MAX_IMAGE_PIXELS" in err


def test_predict_refuses_npy_declaring_a_terabyte(golden_int8: Path, tmp_path: Path) -> None:
    path = npy_claiming(tmp_path / "big.npy", (10**6, 10**6))
    assert_one_line_error(cli("predict", str(golden_int8), str(path)), "1,000,000,000,000 bytes")


def test_eval_folder_dataset_with_a_damaged_first_image(golden_int8: Path, tmp_path: Path, digit: np.ndarray) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(digit).save(tmp_path / cls / f"{i}.png")
    truncated_bmp(tmp_path / "a" / "0-first.bmp", digit)
    assert_one_line_error(cli("eval", str(golden_int8), "--dataset", f"folder:{tmp_path}"), "cannot read image")


def test_eval_npz_with_a_corrupt_deflate_member(golden_int8: Path, tmp_path: Path, digit: np.ndarray) -> None:
    x = np.repeat(digit[None], 20, axis=0)
    path = npz_dataset(tmp_path / "d.npz", x, np.arange(20) % 10, np.arange(10), compressed=True)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x_test.npy")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + 40 : start + 60] = bytes(b ^ 0xFF for b in raw[start + 40 : start + 60])
    path.write_bytes(bytes(raw))
    assert_one_line_error(cli("eval", str(golden_int8), "--dataset", f"npz:{path}"), f"{path}: array 'x_test'")


def test_labels_with_gaps_are_refused_by_the_loader(golden_int8: Path, tmp_path: Path, digit: np.ndarray) -> None:
    """y=200 among labels 0..9 used to make 201 classes (train trained them silently; eval blamed the bundle).

    Through ``eval`` here: ``train`` fails in the same loader, before any training, but its start-up
    (torch) costs ~10 s; the rule itself is pinned in-process below.
    """
    y = np.arange(200) % 10
    y[3] = 200
    path = npz_dataset(tmp_path / "y200.npz", np.repeat(digit[None], 200, axis=0), y, np.arange(50) % 10)
    assert_one_line_error(
        cli("eval", str(golden_int8), "--dataset", f"npz:{path}"), "go up to 200, which would make 201 classes"
    )


# ---------------------------------------------------------------- the rules, in-process


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda d: Image.fromarray(d.astype(np.uint16) * 257), "same"),  # I;16, full 16-bit range
        (lambda d: Image.fromarray(d.astype(np.float32) / 255), "same"),  # F in 0..1
        (lambda d: Image.fromarray(d.astype(np.float32)), "same"),  # F in 0..255
        (lambda d: Image.fromarray(d.astype(np.float32) * 257), "same"),  # F in 0..65535
        (lambda d: Image.fromarray(d.astype(np.int32) * 257), "same"),  # I in 0..65535
        (lambda d: Image.fromarray(np.where(d > 9, np.nan, d).astype(np.float32)), "NaN or infinite"),
        (lambda d: Image.fromarray(d.astype(np.float32) - 1), "outside 0..65535"),
        (lambda d: Image.fromarray(d.astype(np.float32) * 1e5), "outside 0..65535"),
    ],
)
def test_wide_pixels_are_scaled_by_their_depth_or_refused(tmp_path: Path, digit: np.ndarray, make, expect: str) -> None:
    path = tmp_path / "x.tif"
    make(digit).save(path)
    if expect == "same":
        for mode, channels in (("L", 1), ("RGB", 3)):
            got = decode_image(path, mode)
            assert got.shape == (28, 28, channels) and np.array_equal(got[..., 0], digit)
    else:
        with pytest.raises(FFEdgeError, match=expect):
            decode_image(path)


def tiff_12bit(path: Path, values: list[int]) -> Path:
    """An uncompressed one-row grey TIFF with BitsPerSample 12 (two pixels packed in three bytes)."""
    data = bytes([values[0] >> 4, (values[0] & 15) << 4 | values[1] >> 8, values[1] & 255])
    tags = [(256, 2), (257, 1), (258, 12), (259, 1), (262, 1), (273, 8 + 2 + 12 * 8 + 4), (278, 1), (279, len(data))]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, 4, 1, v) for t, v in tags) + bytes(4)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + data)
    return path


def test_12bit_tiff_is_scaled_by_its_bits_per_sample(tmp_path: Path) -> None:
    assert decode_image(tiff_12bit(tmp_path / "g12.tif", [0, 4095]))[..., 0].tolist() == [[0, 255]]


def test_pixel_limit_is_checked_from_the_header(tmp_path: Path) -> None:
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    with pytest.raises(FFEdgeError, match="MAX_IMAGE_PIXELS"):
        decode_image(png_claiming(tmp_path / "big.png", side, side))
    with pytest.raises(FFEdgeError, match="cannot read image"):  # under the limit: decoding fails on the missing data
        decode_image(png_claiming(tmp_path / "ok.png", 300, 300))


@needs_fifo
def test_special_files_are_refused_everywhere(tmp_path: Path, digit: np.ndarray) -> None:
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(FFEdgeError, match="named pipe"):
        load_dataset(f"npz:{fifo}")
    with pytest.raises(FFEdgeError, match="named pipe"):
        load_npy(fifo)
    for cls in ("a", "b"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        Image.fromarray(digit).save(tmp_path / "f" / cls / "0.png")
    os.mkfifo(tmp_path / "f" / "b" / "1.png")
    with pytest.raises(FFEdgeError, match="not a regular file"):
        load_dataset(f"folder:{tmp_path / 'f'}")
    with pytest.raises(FFEdgeError, match="a folder"):
        load_npy(tmp_path)


@pytest.mark.parametrize(
    ("y_train", "extra", "match"),
    [
        (np.array([0, 1, -1, 1]), {}, "negative label -1"),
        (np.array([0, 1, 0.5, 1]), {}, "must hold integer labels"),
        (np.array([0, 1, np.nan, 1]), {}, "must hold integer labels"),
        (np.array([0, 1, 1]), {}, "3 labels but x_train has 4 images"),
        (np.array([0, 1, 2**64 - 1, 1], np.uint64), {}, "go up to 18446744073709551615"),
        (
            np.array([0, 1, 5, 1]),
            {"class_names": np.array(["a", "b", "c"])},
            r"class_names has 3 names but labels go up to 5",
        ),
    ],
)
def test_npz_labels_must_be_0_to_k_minus_1(tmp_path: Path, y_train: np.ndarray, extra: dict, match: str) -> None:
    x = np.zeros((4, 5, 5), np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y_train, x_test=x[:2], y_test=np.array([0, 1]), **extra)
    with pytest.raises(FFEdgeError, match=match) as e:
        load_dataset(f"npz:{path}")
    assert "\n" not in str(e.value)


def test_npz_label_gaps_are_flagged_for_training(tmp_path: Path) -> None:
    """Gaps are kept (a bundle may be scored on a subset of its classes) but flagged; training refuses them."""
    x = np.zeros((4, 5, 5), np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.array([0, 1, 200, 1]), x_test=x[:2], y_test=np.array([0, 1]))
    ds = load_dataset(f"npz:{path}")
    assert ds.num_classes == 201
    assert (
        ds.label_gaps
        and "labels {0, 1, 200} are 3 distinct values but go up to 200, which would make 201 classes" in ds.label_gaps
    )


def test_npz_label_gaps_are_fine_when_class_names_cover_them(tmp_path: Path) -> None:
    x = np.zeros((4, 5, 5), np.uint8)
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x_train=x,
        y_train=np.array([0, 3, 3, 0]),
        x_test=x[:2],
        y_test=np.array([0, 3]),
        class_names=np.array(list("abcd")),
    )
    assert load_dataset(f"npz:{path}").classes == list("abcd")


def test_arrays_are_bounded_typed_and_never_unpickled(tmp_path: Path) -> None:
    with pytest.raises(FFEdgeError, match="exceeds the"):
        load_npy(npy_claiming(tmp_path / "a.npy", (MAX_ARRAY_BYTES + 1,)))
    with pytest.raises(FFEdgeError, match="header declares 1,000 bytes of data but only 64 follow"):
        load_npy(npy_claiming(tmp_path / "b.npy", (1000,)))
    with pytest.raises(FFEdgeError, match="object array"):
        load_npy(npy_claiming(tmp_path / "c.npy", (2,), dtype="|O"))
    with pytest.raises(FFEdgeError, match="unsupported array type"):
        load_npy(npy_claiming(tmp_path / "d.npy", (2,), dtype="<c16"))
    path = tmp_path / "e.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.npy", npy_claiming(tmp_path / "f.npy", (10**6, 1000, 1000)).read_bytes())
        z.writestr("long.npy", npy_claiming(tmp_path / "f.npy", (4,), tail=bytes(9)).read_bytes())
    with NpzArchive(path) as npz:
        with pytest.raises(FFEdgeError, match=r"array 'big'.*1,000,000,000,000 bytes"):
            npz.array("big")
        with pytest.raises(
            FFEdgeError, match="member holds 137 bytes, the .npy header accounts for 132"
        ):  # longer than its header says
            npz.array("long")
    arr = np.arange(12, dtype=">f4").reshape(3, 4)
    np.save(tmp_path / "g.npy", np.asfortranarray(arr))
    assert np.array_equal(load_npy(tmp_path / "g.npy"), arr)


def test_idx_and_cifar_sizes_are_bounded(tmp_path: Path) -> None:
    header = bytes([0, 0, 8, 3]) + np.array([10**5, 10**4, 10**4], ">u4").tobytes()
    with pytest.raises(FFEdgeError, match="above the .*-byte limit"):
        parse_idx(header, "x.idx")
    with pytest.raises(FFEdgeError, match=r"header says \(2,\) \(10 bytes\) but the file has more than 10"):
        parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]), "x.idx")
    path = tmp_path / "c.tar.gz"
    layout = LAYOUTS["cifar10"]
    info = tarfile.TarInfo(f"{layout.folder}/{layout.train[0]}")
    info.size = MAX_ARRAY_BYTES + 1
    block = info.tobuf(format=tarfile.GNU_FORMAT)
    path.write_bytes(gzip.compress(block + bytes(1024)))
    with pytest.raises(FFEdgeError, match="above the .*-byte limit"):
        read_cifar_tarball(path, layout)
