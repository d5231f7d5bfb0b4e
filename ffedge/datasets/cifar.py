"""CIFAR-10 and CIFAR-100 from the official *binary* tarballs (never the pickled ones).

Records are read straight out of the .tar.gz in one sequential pass; nothing is
extracted to disk and nothing is unpickled. A record is the label byte(s)
followed by 3072 bytes of 32x32 pixels stored channel-first (R, G, B planes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ffedge.datasets.base import Dataset, as_labels
from ffedge.untrusted import DECODE_ERRORS, MAX_ARRAY_BYTES, open_regular, reason
from ffedge.datasets.registry import register_dataset
from ffedge.datasets.remote import ensure_files
from ffedge.errors import FFEdgeError

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where things are inside one official tarball."""

    tarball: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    names_file: str
    label_bytes: int  # bytes before the pixels of each record
    label_index: int  # which of those bytes is the label we use
    num_classes: int


LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-binary.tar.gz",
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        "batches.meta.txt",
        label_bytes=1,
        label_index=0,
        num_classes=10,
    ),
    # CIFAR-100 records hold the coarse label, then the fine label: we use the fine one.
    "cifar100": CifarLayout(
        "cifar-100-binary.tar.gz",
        "cifar-100-binary",
        ("train.bin",),
        ("test.bin",),
        "fine_label_names.txt",
        label_bytes=2,
        label_index=1,
        num_classes=100,
    ),
}


def _read_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """Contents of the ``wanted`` member names (paths inside the tar), in one streaming pass."""
    import tarfile  # here: only a CIFAR load needs it

    found: dict[str, bytes] = {}
    with open_regular(path) as raw:
        try:
            with tarfile.open(fileobj=raw, mode="r|gz") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name in wanted and member.isfile():
                        if member.size > MAX_ARRAY_BYTES:
                            raise FFEdgeError(
                                f"{path}: member {name} declares {member.size:,} bytes, above the {MAX_ARRAY_BYTES:,}-byte limit"
                            )
                        f = tar.extractfile(member)
                        if f is not None:
                            found[name] = f.read()
        except (tarfile.TarError, *DECODE_ERRORS) as e:
            raise FFEdgeError(
                f"cannot read {path}: corrupt or truncated tar.gz ({reason(e)}); delete it and download it again"
            ) from None
    return found


def _decode_records(data: bytes, layout: CifarLayout, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One .bin file -> (uint8 NHWC image view, int64 labels)."""
    rec = layout.label_bytes + _PIXELS
    if len(data) % rec:
        raise FFEdgeError(f"{where}: {len(data)} bytes is not a whole number of {rec}-byte records (truncated?)")
    table = np.frombuffer(data, dtype=np.uint8).reshape(-1, rec)
    labels = table[:, layout.label_index]
    if labels.size and int(labels.max()) >= layout.num_classes:
        raise FFEdgeError(f"{where}: label {int(labels.max())} out of range 0..{layout.num_classes - 1}")
    images = table[:, layout.label_bytes :].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, as_labels(labels)


def _class_names(data: bytes, layout: CifarLayout, where: str) -> list[str]:
    names = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != layout.num_classes:
        raise FFEdgeError(f"{where}: expected {layout.num_classes} class names, found {len(names)}")
    return names


def read_cifar_tarball(
    path: Path, layout: CifarLayout
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(x_train, y_train, x_test, y_test, classes) from an official binary tarball."""
    member = {n: f"{layout.folder}/{n}" for n in (*layout.train, *layout.test, layout.names_file)}
    found = _read_members(path, set(member.values()))
    missing = [m for m in member.values() if m not in found]
    if missing:
        raise FFEdgeError(f"{path}: not the official binary CIFAR layout, missing {', '.join(missing)}")

    def split(files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        # Fill one preallocated array and drop each raw batch once copied (keeps peak memory low).
        total = sum(len(found[member[f]]) // (layout.label_bytes + _PIXELS) for f in files)
        x = np.empty((total, 32, 32, 3), dtype=np.uint8)
        ys, start = [], 0
        for f in files:
            images, labels = _decode_records(found.pop(member[f]), layout, f"{path}:{member[f]}")
            x[start : start + len(labels)] = images
            ys.append(labels)
            start += len(labels)
        return x, np.concatenate(ys)

    x_tr, y_tr = split(layout.train)
    x_te, y_te = split(layout.test)
    classes = _class_names(found[member[layout.names_file]], layout, f"{path}:{member[layout.names_file]}")
    return x_tr, y_tr, x_te, y_te, classes


def load_cifar(name: str, directory: Path, download: bool) -> Dataset:
    """Load ``cifar10`` or ``cifar100`` from ``directory`` (verified, downloaded if allowed)."""
    layout = LAYOUTS[name]
    paths = ensure_files(name, directory, download)
    x_tr, y_tr, x_te, y_te, classes = read_cifar_tarball(paths[layout.tarball], layout)
    return Dataset(name, x_tr, y_tr, x_te, y_te, classes)


for _name in LAYOUTS:
    register_dataset(_name, load_cifar)
del _name
