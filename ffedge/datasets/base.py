"""The in-memory dataset every loader returns, plus small array helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    """A train/test split of uint8 NHWC images with int64 labels.

    ``image_shape`` is channel-first (C, H, W), as the models consume it.
    """

    name: str
    x_train: np.ndarray  # uint8 [N, H, W, C]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray  # uint8 [M, H, W, C]
    y_test: np.ndarray  # int64 [M]
    classes: list[str]
    # Set by a loader whose labels skip classes (e.g. {0, 200} without class names): fine for
    # scoring a bundle that has those classes, refused where the classes are decided (training).
    label_gaps: str | None = None

    def __post_init__(self) -> None:
        # Loaders validate user input with FFEdgeError first; these are internal invariants.
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"x_{split} must be uint8 NHWC, got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"y_{split} must be int64 [{x.shape[0]}], got {y.dtype} {y.shape}")
            if y.size and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise ValueError(
                    f"y_{split} labels must lie in 0..{len(self.classes) - 1}, got {int(y.min())}..{int(y.max())}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"train/test image shapes differ: {self.x_train.shape[1:]} vs {self.x_test.shape[1:]}")

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 .. num_classes - 1)."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, h, w, c = self.x_train.shape
        return (int(c), int(h), int(w))


def as_nhwc(x: np.ndarray) -> np.ndarray:
    """NHW -> NHW1; NHWC unchanged."""
    return x[..., np.newaxis] if x.ndim == 3 else x


def as_labels(y: np.ndarray) -> np.ndarray:
    """Labels as a contiguous int64 vector."""
    return np.ascontiguousarray(y, dtype=np.int64).reshape(-1)


def resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 NHWC images to (H, W) with bilinear filtering (no-op when already that size)."""
    h, w = size
    if x.shape[1:3] == (h, w):
        return x
    from PIL import Image  # here: reading a bundle's arrays (ffedge.untrusted) needs no Pillow

    out = np.empty((x.shape[0], h, w, x.shape[3]), dtype=np.uint8)
    for i, img in enumerate(x):
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        arr = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))
        out[i] = arr.reshape(h, w, -1)
    return out


def resized(ds: Dataset, size: tuple[int, int] | None) -> Dataset:
    """``ds`` with both splits resized to (H, W) (:func:`resize_images`); itself when ``size`` is None or already its size."""
    if size is None or ds.x_train.shape[1:3] == size:
        return ds
    return Dataset(
        ds.name, resize_images(ds.x_train, size), ds.y_train, resize_images(ds.x_test, size), ds.y_test, ds.classes
    )


def stratified_split(y: np.ndarray, test_fraction: float, seed: int | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Train and test index arrays, ``test_fraction`` of each class in test, both in shuffled order.

    Uses its own ``default_rng(seed)``: independent of numpy's global state.
    """
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(idx.size * test_fraction))
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train = np.concatenate(train_parts) if train_parts else np.empty(0, dtype=np.int64)
    test = np.concatenate(test_parts) if test_parts else np.empty(0, dtype=np.int64)
    # Interleave classes so a consumer that does not shuffle still sees a mix.
    return train[rng.permutation(train.size)], test[rng.permutation(test.size)]
