"""Dataset loaders, on small files written here (no network, no shared data)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
from PIL import Image

import ffedge.datasets.embedded as embedded
import ffedge.datasets.remote as remote
from ffedge.datasets import DATASET_NAMES, Dataset, default_data_dir, load_dataset
from ffedge.datasets.cifar import LAYOUTS, read_cifar_tarball
from ffedge.datasets.idx import FILES, read_idx_gz
from ffedge.datasets.remote import RemoteSource
from ffedge.errors import FFEdgeError
from tests.conftest import python

RNG = np.random.default_rng(1234)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def write_idx_gz(path: Path, arr: np.ndarray) -> None:
    path.write_bytes(gzip.compress(idx_bytes(arr), compresslevel=1))


def use_local_sums(monkeypatch: pytest.MonkeyPatch, name: str, directory: Path) -> None:
    """Point the checksum table of ``name`` at the files the test wrote."""
    files = {f: md5(directory / f) for f in remote.SOURCES[name].files}
    monkeypatch.setitem(remote.SOURCES, name, RemoteSource("http://example.invalid/", files))


@pytest.fixture
def mnist_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, np.ndarray]]:
    """DATA_DIR with a small mnist/ in IDX .gz form, sums registered."""
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    arrays = {
        "x_train": RNG.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "y_train": np.arange(12) % 10,
        "x_test": RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "y_test": np.arange(5),
    }
    for split in ("train", "test"):
        write_idx_gz(d / FILES[split][0], arrays[f"x_{split}"])
        write_idx_gz(d / FILES[split][1], arrays[f"y_{split}"])
    use_local_sums(monkeypatch, "mnist", d)
    return tmp_path / "data", arrays


# ---------------------------------------------------------------- embedded mnist-5k


def test_mnist_5k_shapes_and_stratified_split() -> None:
    ds = load_dataset("mnist-5k")
    assert isinstance(ds, Dataset) and ds.name == "mnist-5k"
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.classes == [str(i) for i in range(10)] and ds.num_classes == 10
    assert ds.image_shape == (1, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [400] * 10
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    assert len(set(ds.y_train[:50].tolist())) > 5  # classes interleaved, not grouped


def test_mnist_5k_split_is_deterministic_and_disjoint() -> None:
    np.random.seed(1)
    a = load_dataset("mnist-5k")
    np.random.seed(2)
    b = load_dataset("MNIST_5K")
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    train = {r.tobytes() for r in a.x_train}
    test = {r.tobytes() for r in a.x_test}
    assert not train & test
    assert len(train) + len(test) == 5000


def test_mnist_5k_checksum_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "SHA256", "0" * 64)
    with pytest.raises(FFEdgeError, match="sha256 f814240c.*expected 0000"):
        load_dataset("mnist-5k")


def test_mnist_5k_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedded, "PATH", tmp_path / "mnist_5k.npz")
    with pytest.raises(FFEdgeError, match="cannot read the embedded file .*reinstall ffedge"):
        load_dataset("mnist-5k")


def test_mnist_5k_resized() -> None:
    ds = load_dataset("mnist-5k", image_size=(14, 16))
    assert ds.x_train.shape == (4000, 14, 16, 1) and ds.image_shape == (1, 14, 16)


# ---------------------------------------------------------------- names, data dir


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(FFEdgeError) as e:
        load_dataset("imagenet")
    msg = str(e.value)
    assert "imagenet" in msg and "\n" not in msg
    for name in (*DATASET_NAMES, "folder:PATH", "npz:PATH"):
        assert name in msg


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FFEDGE_DATA", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("FFEDGE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "ffedge" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "ffedge" / "data"


def test_env_data_dir_is_used(mnist_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    data, arrays = mnist_dir
    monkeypatch.setenv("FFEDGE_DATA", str(data))
    assert np.array_equal(load_dataset("mnist", download=False).y_test, arrays["y_test"])


def test_no_torch_import() -> None:
    r = python("import ffedge.datasets, ffedge.runtime.preprocess; assert 'torch' not in sys.modules", blocked=())
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- IDX: mnist, fashion-mnist


def test_mnist_idx_roundtrip(mnist_dir) -> None:
    data, arrays = mnist_dir
    ds = load_dataset("mnist", data_dir=data, download=False)
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.image_shape == (1, 28, 28)
    assert np.array_equal(ds.x_train[..., 0], arrays["x_train"])
    assert np.array_equal(ds.y_train, arrays["y_train"]) and ds.y_train.dtype == np.int64
    assert np.array_equal(ds.x_test[..., 0], arrays["x_test"])
    assert ds.classes == [str(i) for i in range(10)]


def test_fashion_mnist_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for split in ("train", "test"):
        write_idx_gz(d / FILES[split][0], np.zeros((3, 28, 28), np.uint8))
        write_idx_gz(d / FILES[split][1], np.array([0, 9, 4]))
    use_local_sums(monkeypatch, "fashion-mnist", d)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.num_classes == 10


# Named IDs: every pytest-xdist worker must collect the same IDs, and the payloads as IDs held the gzip header's
# write time, which differs between workers collecting in different seconds. mtime=0 keeps the payloads fixed too.
@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not gzip at all", "corrupt or truncated gzip"),
        (gzip.compress(idx_bytes(np.zeros((4, 28, 28))), mtime=0)[:-30], "corrupt or truncated gzip"),
        (gzip.compress(b"\x01\x02\x08\x03" + bytes(12), mtime=0), "bad magic"),
        (gzip.compress(idx_bytes(np.zeros((4, 28, 28)))[:-5], mtime=0), r"header says \(4, 28, 28\)"),
        (gzip.compress(b"\x00\x00\x0d\x01" + bytes(8), mtime=0), "data type 0x0d"),
    ],
    ids=["not-gzip", "truncated", "bad-magic", "short-data", "data-type-0x0d"],
)
def test_bad_idx_file_named(tmp_path: Path, payload: bytes, match: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(payload)
    with pytest.raises(FFEdgeError, match=match) as e:
        read_idx_gz(path)
    assert str(path) in str(e.value)


def test_idx_count_mismatch(mnist_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = mnist_dir
    write_idx_gz(data / "mnist" / FILES["test"][1], np.arange(4))
    use_local_sums(monkeypatch, "mnist", data / "mnist")
    with pytest.raises(FFEdgeError, match="has 5 images but .* has 4 labels"):
        load_dataset("mnist", data_dir=data, download=False)


def test_checksum_mismatch_of_existing_file(mnist_dir) -> None:
    data, _ = mnist_dir
    bad = data / "mnist" / FILES["train"][0]
    bad.write_bytes(gzip.compress(b"tampered"))
    with pytest.raises(FFEdgeError) as e:
        load_dataset("mnist", data_dir=data)
    msg = str(e.value)
    assert str(bad) in msg and md5(bad) in msg and "expected" in msg and "delete it" in msg


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(FFEdgeError, match="downloading is off") as e:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert "train-images-idx3-ubyte.gz" in str(e.value) and str(tmp_path / "mnist") in str(e.value)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_offline_says_what_to_put_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(remote, "urlopen", offline)
    with pytest.raises(FFEdgeError) as e:
        load_dataset(name, data_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "cannot download" in msg and "offline?" in msg
    assert str(tmp_path / name) in msg
    for f in remote.SOURCES[name].files:
        assert f in msg
    assert not [p for p in (tmp_path / name).iterdir()]  # no partial files left


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def test_download_writes_verified_files(mnist_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, arrays = mnist_dir
    served = {f: (src / "mnist" / f).read_bytes() for f in remote.SOURCES["mnist"].files}
    urls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> FakeResponse:
        urls.append(url)
        return FakeResponse(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(remote, "urlopen", fake_urlopen)
    target = tmp_path / "fresh"
    ds = load_dataset("mnist", data_dir=target)
    assert len(urls) == 4 and all(u.startswith("http://example.invalid/") for u in urls)
    assert np.array_equal(ds.x_train[..., 0], arrays["x_train"])
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(served)
    load_dataset("mnist", data_dir=target)  # second load: nothing fetched
    assert len(urls) == 4


def test_offline_midway_lists_only_files_still_missing(
    mnist_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = mnist_dir
    names = list(remote.SOURCES["mnist"].files)

    def first_only(url: str, timeout: float) -> FakeResponse:
        if url.endswith(names[0]):
            return FakeResponse((src / "mnist" / names[0]).read_bytes())
        raise URLError("timed out\nwhile connecting")

    monkeypatch.setattr(remote, "urlopen", first_only)
    with pytest.raises(FFEdgeError) as e:
        load_dataset("mnist", data_dir=tmp_path / "fresh")
    msg = str(e.value)
    assert "\n" not in msg and "timed out while connecting" in msg
    assert msg.split(": put ", 1)[1].startswith(", ".join(names[1:]) + " into ")
    assert [p.name for p in (tmp_path / "fresh" / "mnist").iterdir()] == [names[0]]


def test_download_with_wrong_checksum_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "urlopen", lambda url, timeout: FakeResponse(b"an HTML error page"))
    with pytest.raises(FFEdgeError, match="download of .*cifar-10-binary.tar.gz has md5 .* expected c32a1d4a"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert list((tmp_path / "cifar10").iterdir()) == []


# ---------------------------------------------------------------- CIFAR binary tarballs


def cifar_records(n: int, label_bytes: int, num_classes: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records; returns (bytes, NHWC images, labels used)."""
    chw = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = RNG.integers(0, num_classes, (n, label_bytes), dtype=np.uint8)
    table = np.concatenate([labels, chw.reshape(n, -1)], axis=1)
    return table.tobytes(), chw.transpose(0, 2, 3, 1), labels[:, -1].astype(np.int64)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar10(path: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    xs, ys = {}, {}
    with tarfile.open(path, "w:gz") as tar:
        add_member(
            tar,
            "cifar-10-batches-bin/batches.meta.txt",
            b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n",
        )
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            raw, xs[name], ys[name] = cifar_records(per_batch, 1, 10)
            add_member(tar, f"cifar-10-batches-bin/{name}", raw)
        add_member(tar, "cifar-10-batches-bin/readme.html", b"<html></html>")
    train = [f"data_batch_{i}.bin" for i in range(1, 6)]
    return {
        "x_train": np.concatenate([xs[n] for n in train]),
        "y_train": np.concatenate([ys[n] for n in train]),
        "x_test": xs["test_batch.bin"],
        "y_test": ys["test_batch.bin"],
    }


def write_cifar100(path: Path) -> dict[str, np.ndarray]:
    fine = "\n".join(f"class_{i:03d}" for i in range(100)).encode()
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "cifar-100-binary/coarse_label_names.txt", b"\n".join(b"c%d" % i for i in range(20)))
        add_member(tar, "cifar-100-binary/fine_label_names.txt", fine)
        raw_tr, x_tr, y_tr = cifar_records(7, 2, 100)
        raw_te, x_te, y_te = cifar_records(4, 2, 100)
        add_member(tar, "cifar-100-binary/train.bin", raw_tr)
        add_member(tar, "cifar-100-binary/test.bin", raw_te)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


def test_cifar10_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "cifar10"
    d.mkdir()
    ref = write_cifar10(d / "cifar-10-binary.tar.gz")
    use_local_sums(monkeypatch, "cifar10", d)
    ds = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.image_shape == (3, 32, 32) and ds.x_train.flags.c_contiguous
    for key in ref:
        assert np.array_equal(getattr(ds, key), ref[key]), key
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck" and ds.num_classes == 10


def test_cifar100_uses_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "cifar100"
    d.mkdir()
    ref = write_cifar100(d / "cifar-100-binary.tar.gz")
    use_local_sums(monkeypatch, "cifar100", d)
    ds = load_dataset("cifar100", data_dir=tmp_path, download=False)
    for key in ref:
        assert np.array_equal(getattr(ds, key), ref[key]), key
    assert ds.num_classes == 100 and ds.classes[42] == "class_042"


def test_truncated_cifar_tarball(tmp_path: Path) -> None:
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar10(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FFEdgeError, match="corrupt or truncated tar.gz") as e:
        read_cifar_tarball(path, LAYOUTS["cifar10"])
    assert str(path) in str(e.value)


def test_cifar_tarball_missing_member_and_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "cifar-100-binary/train.bin", bytes(3074 * 2))
    with pytest.raises(FFEdgeError, match="missing cifar-100-binary/test.bin"):
        read_cifar_tarball(path, LAYOUTS["cifar100"])
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "cifar-100-binary/fine_label_names.txt", b"\n".join(b"x" for _ in range(100)))
        add_member(tar, "cifar-100-binary/train.bin", bytes(3074 * 2 + 5))
        add_member(tar, "cifar-100-binary/test.bin", bytes(3074))
    with pytest.raises(FFEdgeError, match="train.bin: .*not a whole number of 3074-byte records"):
        read_cifar_tarball(path, LAYOUTS["cifar100"])


# ---------------------------------------------------------------- image folders


def write_png(path: Path, size: tuple[int, int] = (8, 6), mode: str = "L", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)


def test_folder_split_is_stratified_and_deterministic(tmp_path: Path) -> None:
    for c in ("cat", "dog"):
        for i in range(10):
            write_png(tmp_path / c / f"{i:02d}.png", value=i * 20 + (c == "dog"))
    (tmp_path / "cat" / "README.txt").write_text("not an image: skipped")
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.classes == ["cat", "dog"] and ds.image_shape == (1, 6, 8)
    assert np.bincount(ds.y_train).tolist() == [8, 8] and np.bincount(ds.y_test).tolist() == [2, 2]
    again = load_dataset(f"folder:{tmp_path}")
    assert np.array_equal(ds.x_test, again.x_test) and np.array_equal(ds.y_train, again.y_train)
    pixels = lambda x: {int(v) for v in x[:, 0, 0, 0]}  # noqa: E731 - each image has a unique value
    assert not pixels(ds.x_train) & pixels(ds.x_test)


@pytest.mark.parametrize(("rgb_class", "channels"), [("a", 3), ("b", 1)])
def test_folder_train_test_layout_mode_of_first_image_and_resize(tmp_path: Path, rgb_class: str, channels: int) -> None:
    for split, n in (("train", 3), ("test", 1)):
        for c in ("a", "b", "c"):
            for i in range(n):
                write_png(tmp_path / split / c / f"{i}.png", size=(10 + i, 7), mode="RGB" if c == rgb_class else "L")
    with pytest.raises(FFEdgeError, match="is 7x11 but .* is 7x10"):
        load_dataset(f"folder:{tmp_path}")
    ds = load_dataset(f"folder:{tmp_path}", image_size=(5, 4))  # all converted to the first image's mode
    assert ds.x_train.shape == (9, 5, 4, channels) and ds.x_test.shape == (3, 5, 4, channels)
    assert ds.y_test.tolist() == [0, 1, 2] and ds.classes == ["a", "b", "c"]


def test_folder_with_train_but_no_test(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "a" / "x.png")
    write_png(tmp_path / "train" / "b" / "y.png")
    with pytest.raises(FFEdgeError, match="has train/ but no test/"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_with_one_class(tmp_path: Path) -> None:
    write_png(tmp_path / "only" / "x.png")
    with pytest.raises(FFEdgeError, match="at least 2 class sub-folders.*'only'"):
        load_dataset(f"folder:{tmp_path}")


def test_folder_empty_class_and_missing_dir(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "x.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(FFEdgeError, match="class folder .*b has no images"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(FFEdgeError, match="is not a directory"):
        load_dataset(f"folder:{tmp_path / 'nope'}")


def test_folder_unreadable_image_is_named(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "x.png")
    write_png(tmp_path / "b" / "y.png")
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(FFEdgeError, match="cannot read image") as e:
        load_dataset(f"folder:{tmp_path}")
    assert str(bad) in str(e.value)


# ---------------------------------------------------------------- npz


def test_npz_nhw_and_class_names(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    np.savez(
        path,
        x_train=x,
        y_train=np.array([0, 1, 2, 0, 1, 2], np.uint8),
        x_test=x[:2],
        y_test=np.array([2, 1], np.int32),
        class_names=np.array(["r", "g", "b"]),
    )
    ds = load_dataset(f"npz:{path}")
    assert ds.x_train.shape == (6, 5, 4, 1) and ds.y_test.dtype == np.int64 and ds.classes == ["r", "g", "b"]
    assert np.array_equal(ds.x_train[..., 0], x)


def test_npz_nhwc_default_class_names(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = np.zeros((3, 4, 4, 3), np.uint8)
    np.savez(path, x_train=x, y_train=np.array([0, 1, 3]), x_test=x, y_test=np.array([2, 0, 0]))
    ds = load_dataset(f"npz:{path}")
    assert ds.image_shape == (3, 4, 4) and ds.classes == ["0", "1", "2", "3"]  # labels of both splits count


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x_train": np.zeros((2, 3, 3), np.uint8), "y_train": np.array([0, 1])}, "missing key.*x_test, y_test"),
        ({"x_test": np.zeros((2, 3, 3), np.float32)}, "x_test must be uint8.*float32"),
        ({"y_train": np.array([0, 1, 1])}, "y_train has 3 labels but x_train has 2 images"),
        ({"y_train": np.array([0.0, 1.0])}, "y_train must hold integer labels"),
        ({"x_test": np.zeros((2, 4, 3), np.uint8)}, "x_train images are .* but x_test images are"),
        ({"class_names": np.array(["only"])}, "class_names has 1 names but labels go up to 1"),
        (
            {"x_test": np.zeros((0, 3, 3), np.uint8), "y_test": np.zeros(0, np.int64)},
            r"x_test is empty \(shape \(0, 3, 3, 1\)\)",
        ),
        ({"class_names": np.array([object(), object()], dtype=object)}, "object array.*refused"),
    ],
)
def test_npz_bad_content(tmp_path: Path, arrays: dict, match: str) -> None:
    base = {
        "x_train": np.zeros((2, 3, 3), np.uint8),
        "y_train": np.array([0, 1]),
        "x_test": np.zeros((2, 3, 3), np.uint8),
        "y_test": np.array([1, 0]),
    }
    if "missing" in match:
        base = {}
    path = tmp_path / "bad.npz"
    np.savez(path, **{**base, **arrays})
    with pytest.raises(FFEdgeError, match=match) as e:
        load_dataset(f"npz:{path}")
    assert "\n" not in str(e.value)


def test_npz_not_a_file_or_not_npz(tmp_path: Path) -> None:
    with pytest.raises(FFEdgeError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    with pytest.raises(FFEdgeError, match="cannot read .* as a .npz file"):
        load_dataset(f"npz:{junk}")
    with pytest.raises(FFEdgeError, match="give a path"):
        load_dataset("npz:")
