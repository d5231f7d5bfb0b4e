"""Fuzzer of the input readers: mutated image and array files never crash ffedge.

Valid seed files (PNG, JPEG, GIF, TIFF, BMP, WebP and PPM images made from mnist-5k
digits; .npy arrays; .npz datasets; gzipped IDX files; a CIFAR binary tarball) are
mutated (bit flips, byte and integer overwrites, truncation, insertion, deletion;
inside a container when there is one: an npz member, the IDX or tar stream under
the gzip, PNG chunks with their CRCs fixed) and fed to ``predict``'s reader
(``ffedge.runtime.inputs.read_inputs``) and the dataset loaders (``folder:``,
``npz:``, IDX, CIFAR). Property: the result is a valid array/dataset or an
``FFEdgeError``; never another exception, never a warning (a stray line on
stderr), never a hang (each case runs under a SIGALRM limit, with a faulthandler
watchdog behind it).

Run it:

    # short fixed-seed profile (part of the suite, derandomized, a few seconds)
    pytest tests/device/test_fuzz_inputs.py

    # long profile: random cases for N seconds, a summary line
    # "fuzz-inputs: <cases> cases in <s> s, <crashes> crashes: {type: count}" printed and,
    # if FFEDGE_FUZZ_REPORT is set, written to that file (crashing inputs are kept in FFEDGE_FUZZ_CRASHES if set)
    FFEDGE_FUZZ_SECONDS=600 FFEDGE_FUZZ_REPORT=fuzz-inputs.txt pytest tests/device/test_fuzz_inputs.py -k long -s
"""

from __future__ import annotations

import collections
import faulthandler
import gzip
import io
import os
import random
import signal
import struct
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ffedge.datasets import Dataset, load_dataset
from ffedge.datasets.cifar import LAYOUTS, read_cifar_tarball
from ffedge.datasets.idx import read_idx_gz
from ffedge.errors import FFEdgeError
from ffedge.runtime.inputs import read_inputs

CASE_LIMIT_S = 10.0  # one case; the slowest legitimate one takes milliseconds
SHORT_EXAMPLES = 40  # per target in the short profile
LONG_SECONDS = float(os.environ.get("FFEDGE_FUZZ_SECONDS", "0") or 0)

# --------------------------------------------------------------------------- mutations

OPS = ("flip", "byte", "int", "truncate", "insert", "delete", "duplicate")
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x10000, 10**6, 0x7FFFFFFF, 0xFFFFFFFF)

Op = tuple[str, int, int, bytes]  # (kind, position, number, payload)


def apply_ops(data: bytes, ops: list[Op]) -> bytes:
    """``data`` with each mutation applied in turn (positions wrap around the current length)."""
    b = bytearray(data)
    for kind, pos, num, payload in ops:
        at = pos % (len(b) + 1)
        if kind == "flip" and b:
            b[at % len(b)] ^= (num % 255) + 1
        elif kind == "byte" and b:
            b[at % len(b)] = INTERESTING[num % len(INTERESTING)] & 0xFF
        elif kind == "int":
            value = INTERESTING[num % len(INTERESTING)]
            width, order = (2, 4)[num % 2], ("big", "little")[(num // 2) % 2]
            b[at : at + width] = (value % (1 << 8 * width)).to_bytes(width, order)
        elif kind == "truncate":
            del b[at:]
        elif kind == "insert":
            b[at:at] = payload
        elif kind == "delete":
            del b[at : at + 1 + num % 64]
        elif kind == "duplicate":
            b[at:at] = b[at : at + 1 + num % 64]
    return bytes(b)


def random_ops(rng: random.Random) -> list[Op]:
    """1-4 random mutations, half of them in the first 64 bytes (where the headers are)."""
    ops = []
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(64) if rng.random() < 0.5 else rng.randrange(1 << 20)
        ops.append((rng.choice(OPS), pos, rng.randrange(1 << 16), rng.randbytes(rng.randint(1, 8))))
    return ops


ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.one_of(st.integers(0, 63), st.integers(0, 1 << 20)),
        st.integers(0, 1 << 16),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
)

# --------------------------------------------------------------------------- container-aware rewriting


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute the CRC of every complete PNG chunk, so mutations reach the decoder past the CRC check."""
    b, at = bytearray(data), 8
    while at + 12 <= len(b):
        (length,) = struct.unpack(">I", b[at : at + 4])
        end = at + 8 + length
        if end + 4 > len(b):
            break
        b[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(b[at + 4 : end])))
        at = end + 4
    return bytes(b)


def mutate_npz_member(data: bytes, ops: list[Op], pick: int) -> bytes:
    """Mutate one member of a .npz and zip it again (valid zip, valid CRCs, damaged .npy)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        members = [(i, z.read(i)) for i in infos]
    target = pick % len(members)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, (info, body) in enumerate(members):
            z.writestr(info, apply_ops(body, ops) if n == target else body)
    return out.getvalue()


def regzip(data: bytes, ops: list[Op]) -> bytes:
    """Mutate the stream under a gzip and compress it again."""
    return gzip.compress(apply_ops(gzip.decompress(data), ops), compresslevel=1, mtime=0)


# --------------------------------------------------------------------------- seeds


@dataclass
class Seed:
    name: str  # file name to write (its extension selects the reader)
    data: bytes
    inner: str = ""  # "png", "npz", "gzip": how to mutate inside the container


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """40 digits, 4 of each class."""
    ds = load_dataset("mnist-5k")
    pick = np.concatenate([np.flatnonzero(ds.y_train == c)[:4] for c in range(10)])
    pick = pick[np.random.default_rng(0).permutation(pick.size)]
    return ds.x_train[pick, :, :, 0], ds.y_train[pick]


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def image_seeds(x: np.ndarray) -> list[Seed]:
    """One small file per format and pixel kind (8-bit grey/RGB/palette/alpha, 16-bit, float)."""
    g = Image.fromarray(x[0])
    rgb = Image.merge("RGB", [Image.fromarray(x[i]) for i in (1, 2, 3)])
    g16 = Image.fromarray(x[4].astype(np.uint16) * 257)
    f01 = Image.fromarray(x[5].astype(np.float32) / 255)
    return [
        Seed("g.png", _save(g, "PNG"), "png"),
        Seed("rgb.png", _save(rgb, "PNG"), "png"),
        Seed("p.png", _save(rgb.quantize(16), "PNG"), "png"),
        Seed("a.png", _save(rgb.convert("RGBA"), "PNG"), "png"),
        Seed("g16.png", _save(g16, "PNG"), "png"),
        Seed("bw.png", _save(g.convert("1"), "PNG"), "png"),
        Seed("g.jpg", _save(g, "JPEG", quality=90)),
        Seed("rgb.jpg", _save(rgb, "JPEG", progressive=True)),
        Seed("g.gif", _save(g, "GIF")),
        Seed("anim.gif", _save(g, "GIF", save_all=True, append_images=[rgb.convert("P")])),
        Seed("g.tif", _save(g, "TIFF")),
        Seed("rgb.tif", _save(rgb, "TIFF", compression="tiff_deflate")),
        Seed("g16.tif", _save(g16, "TIFF", compression="tiff_lzw")),
        Seed("f.tif", _save(f01, "TIFF")),
        Seed("g.bmp", _save(g, "BMP")),
        Seed("rgb.bmp", _save(rgb, "BMP")),
        Seed("g.webp", _save(g, "WEBP", lossless=True)),
        Seed("rgb.webp", _save(rgb, "WEBP", quality=80)),
        Seed("g.pgm", _save(g, "PPM")),
    ]


def npy_seeds(x: np.ndarray) -> list[Seed]:
    def npy(a: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a, version=version, allow_pickle=False)
        return buf.getvalue()

    return [
        Seed("one.npy", npy(x[0])),
        Seed("batch.npy", npy(x[:3].astype(np.float32))),
        Seed("nhwc.npy", npy(x[:2, :, :, None])),
        Seed("fortran.npy", npy(np.asfortranarray(x[0]), (2, 0))),
    ]


def npz_seeds(x: np.ndarray, y: np.ndarray) -> list[Seed]:
    out = []
    for name, save, extra in (
        ("d.npz", np.savez, {}),
        ("c.npz", np.savez_compressed, {"class_names": np.array([str(i) for i in range(10)])}),
    ):
        buf = io.BytesIO()
        save(buf, x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:], **extra)
        out.append(Seed(name, buf.getvalue(), "npz"))
    return out


def idx_seeds(x: np.ndarray, y: np.ndarray) -> list[Seed]:
    def idx(a: np.ndarray) -> bytes:
        raw = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes() + a.astype(np.uint8).tobytes()
        return gzip.compress(raw, compresslevel=1, mtime=0)

    return [Seed("images-idx3-ubyte.gz", idx(x[:4]), "gzip"), Seed("labels-idx1-ubyte.gz", idx(y[:4]), "gzip")]


def cifar_seeds() -> list[Seed]:
    layout, rng = LAYOUTS["cifar10"], np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        files = {layout.names_file: "\n".join(f"c{i}" for i in range(10)).encode()}
        for f in (*layout.train, *layout.test):
            rec = rng.integers(0, 256, (2, 3073), dtype=np.uint8)
            rec[:, 0] %= 10
            files[f] = rec.tobytes()
        for f, body in files.items():
            info = tarfile.TarInfo(f"{layout.folder}/{f}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return [Seed("cifar-10-binary.tar.gz", buf.getvalue(), "gzip")]


# --------------------------------------------------------------------------- targets


def _check_batch(out: tuple[np.ndarray, list[str]], channels: int) -> None:
    x, names = out
    assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (28, 28, channels) and len(names) == len(x), (
        x.shape,
        names,
    )


class Targets:
    """Each target writes one mutated file into ``root`` and runs a reader on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        x, y = _digits()
        self.images, self.npy, self.npz = image_seeds(x), npy_seeds(x), npz_seeds(x, y)
        self.idx, self.cifar = idx_seeds(x, y), cifar_seeds()
        self.good_png = self.images[0].data
        self.seeds: dict[str, list[Seed]] = {
            "predict-image": self.images,
            "folder": self.images,
            "predict-npy": self.npy,
            "npz": self.npz,
            "idx": self.idx,
            "cifar": self.cifar,
        }

    def mutate(self, seed: Seed, ops: list[Op], inner: bool, pick: int) -> bytes:
        if inner and seed.inner == "npz":
            return mutate_npz_member(seed.data, ops, pick)
        if inner and seed.inner == "gzip":
            return regzip(seed.data, ops)
        data = apply_ops(seed.data, ops)
        return fix_png_crcs(data) if inner and seed.inner == "png" else data

    def write(self, name: str, data: bytes, sub: str = "") -> Path:
        path = self.root / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def run(self, target: str, seed: Seed, data: bytes, flag: int) -> None:
        """Run one reader on ``data`` (named like ``seed``); FFEdgeError propagates, results are checked."""
        if target in ("predict-image", "predict-npy"):
            channels = (1, 3)[flag % 2]
            _check_batch(read_inputs([self.write(seed.name, data)], (channels, 28, 28), resize=True), channels)
        elif target == "folder":
            folder = self.root / "folder"
            for cls, name in (("a", "x.png"), ("a", "y.png"), ("b", "z.png")):
                self.write(name, self.good_png, f"folder/{cls}")
            for old in (folder / "b").iterdir():
                if old.name != "z.png":
                    old.unlink()
            self.write("m" + Path(seed.name).suffix, data, "folder/b")
            ds = load_dataset(f"folder:{folder}", image_size=(28, 28) if flag % 2 else None)
            assert isinstance(ds, Dataset) and ds.num_classes == 2 and len(ds.x_train) + len(ds.x_test) == 4
        elif target == "npz":
            ds = load_dataset(f"npz:{self.write(seed.name, data)}")
            assert isinstance(ds, Dataset) and ds.num_classes >= 2
        elif target == "idx":
            arr = read_idx_gz(self.write(seed.name, data))
            assert arr.dtype == np.uint8
        elif target == "cifar":
            x_tr, y_tr, x_te, y_te, classes = read_cifar_tarball(self.write(seed.name, data), LAYOUTS["cifar10"])
            assert x_tr.shape[1:] == (32, 32, 3) and len(classes) == 10 and len(y_tr) == len(x_tr)


TARGET_NAMES = ("predict-image", "folder", "predict-npy", "npz", "idx", "cifar")


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so no reader's error handling can swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Hang(f"no result after {CASE_LIMIT_S:g} s")


class _Stderr:
    """Captures what is written to file descriptor 2 (also by C libraries such as libtiff) while active."""

    def __enter__(self) -> _Stderr:
        sys.stderr.flush()
        self._tmp = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode("utf-8", "replace").strip()
        self._tmp.close()


def outcome(fn: Callable[[], None]) -> str:
    """ "ok", "refused" (FFEdgeError) or the crash: "<exception type>: ...", "Warning:<category>: ...",
    "stderr: ..." (output the user would see besides the error line), "hang"."""
    with _Stderr() as err:
        result = _run_case(fn)
    if result in ("ok", "refused") and err.text:
        return f"stderr: {err.text.splitlines()[0][:200]}"
    return result


def _run_case(fn: Callable[[], None]) -> str:
    old = signal.signal(signal.SIGALRM, _on_alarm)
    faulthandler.dump_traceback_later(3 * CASE_LIMIT_S, exit=True)  # in case a C decoder never returns
    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                fn()
                result = "ok"
            except FFEdgeError:
                result = "refused"
        if caught:
            return f"Warning:{caught[0].category.__name__}: {caught[0].message}"
        return result
    except _Hang:
        return "hang"
    except Exception as e:  # noqa: BLE001 - the point is to classify everything else
        kind = (
            type(e).__qualname__ if type(e).__module__ == "builtins" else f"{type(e).__module__}.{type(e).__qualname__}"
        )
        return f"{kind}: {str(e)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Targets:
    return Targets(tmp_path_factory.mktemp("fuzz-inputs"))


pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")


def test_seeds_are_valid(targets: Targets) -> None:
    """Unmutated, every seed loads: the fuzzer starts from files the readers accept."""
    for target in TARGET_NAMES:
        for seed in targets.seeds[target]:
            for flag in (0, 1):
                targets.run(target, seed, seed.data, flag)


@pytest.mark.parametrize("target", TARGET_NAMES)
@settings(
    max_examples=SHORT_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pick=st.integers(0, 1 << 16), ops=ops_strategy, inner=st.booleans(), flag=st.integers(0, 3))
def test_mutated_inputs_load_or_fail_with_ffedge_error(
    targets: Targets, target: str, pick: int, ops: list[Op], inner: bool, flag: int
) -> None:
    seeds = targets.seeds[target]
    seed = seeds[pick % len(seeds)]
    data = targets.mutate(seed, ops, inner, pick // len(seeds))
    result = outcome(lambda: targets.run(target, seed, data, flag))
    assert result in ("ok", "refused"), f"{target} on mutated {seed.name}: {result}"


@pytest.mark.skipif(LONG_SECONDS <= 0, reason="long profile: set FFEDGE_FUZZ_SECONDS")
def test_long_fuzz_profile(targets: Targets) -> None:
    """Random cases until FFEDGE_FUZZ_SECONDS have passed; crashes counted by type, then reported."""
    rng = random.Random(int(os.environ.get("FFEDGE_FUZZ_SEED", "0") or 0))
    keep = Path(os.environ["FFEDGE_FUZZ_CRASHES"]) if os.environ.get("FFEDGE_FUZZ_CRASHES") else None
    crashes: collections.Counter[str] = collections.Counter()
    results: collections.Counter[str] = collections.Counter()
    first: dict[str, str] = {}
    cases, slowest, slow_case, start = 0, 0.0, "", time.monotonic()
    while time.monotonic() - start < LONG_SECONDS:
        target = rng.choice(TARGET_NAMES)
        seed = rng.choice(targets.seeds[target])
        inner, flag = rng.random() < 0.5, rng.randrange(4)
        data = targets.mutate(seed, random_ops(rng), inner, rng.randrange(1 << 16))
        t0 = time.monotonic()
        crash = outcome(lambda: targets.run(target, seed, data, flag))
        if time.monotonic() - t0 > slowest:
            slowest, slow_case = time.monotonic() - t0, f"{target} {seed.name}"
        cases += 1
        results[f"{target} {crash if crash in ('ok', 'refused') else 'crash'}"] += 1
        if crash not in ("ok", "refused"):
            kind = ":".join(crash.split(":")[:2]) if crash.startswith(("Warning:", "stderr:")) else crash.split(":")[0]
            crashes[kind] += 1
            first.setdefault(kind, f"{target} {seed.name}: {crash}")
            if keep is not None and crashes[kind] <= 3:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"{kind.replace(':', '_').replace(' ', '')}-{crashes[kind]}-{target}-{seed.name}").write_bytes(
                    data
                )
    elapsed = time.monotonic() - start
    line = f"fuzz-inputs: {cases} cases in {elapsed:.0f} s, {sum(crashes.values())} crashes: {dict(crashes)}"
    details = f"\n  slowest case {slowest:.2f} s ({slow_case}); per target: {dict(sorted(results.items()))}"
    details += "".join(f"\n  {k}: {v}" for k, v in first.items())
    print(line + details, file=sys.stderr)
    if os.environ.get("FFEDGE_FUZZ_REPORT"):
        Path(os.environ["FFEDGE_FUZZ_REPORT"]).write_text(line + details + "\n")
    assert not crashes, line + details
