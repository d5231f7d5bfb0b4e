"""Read the files a user wants classified (PNG/JPG/... or .npy) into pixels a bundle takes.

Images must already have the bundle's size and channel count; with ``resize``
they are resized (bilinear) and converted (grey <-> RGB) instead. Nothing is
resized silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ffedge.datasets.base import resize_images
from ffedge.untrusted import check_regular, load_npy
from ffedge.datasets.images import load_images
from ffedge.errors import FFEdgeError
from ffedge.runtime.preprocess import check_pixels


def _fit(x: np.ndarray, name: str, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    c, h, w = shape
    if x.shape[1:] == (h, w, c):
        return x
    if not resize:
        raise FFEdgeError(
            f"{name}: image is {x.shape[1]}x{x.shape[2]} with {x.shape[3]} channel(s), the bundle takes "
            f"{h}x{w} with {c}: pass --resize to resize and convert it"
        )
    if x.shape[3] != c and c == 1:
        x = x.mean(axis=3, keepdims=True).round().astype(np.uint8)
    if x.shape[1:3] != (h, w):
        x = resize_images(x, (h, w))
    return np.repeat(x[..., :1], c, axis=3) if x.shape[3] != c else x  # grey -> RGB after resizing: a third of the work


def read_npy(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A .npy of one image (HW, HWC) or a batch (NHW, NHWC) with pixel values 0..255 -> uint8 NHWC."""
    x = check_pixels(load_npy(path), str(path))
    if x.size == 0:
        raise FFEdgeError(f"{path}: array of shape {list(x.shape)} holds no pixels")
    c = shape[0]
    if x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3) and x.shape[2] == c and x.shape[:2] == shape[1:]):
        x = x[None]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise FFEdgeError(f"{path}: array of shape {list(x.shape)} is not an image (HW, HWC, NHW or NHWC)")
    return x


def read_inputs(paths: list[Path], shape: tuple[int, int, int], resize: bool = False) -> tuple[np.ndarray, list[str]]:
    """Images from files (each image file, or each image of a .npy batch) -> uint8 NHWC and a name per image.

    Only regular files are read (a folder, pipe or device is one error line); see
    :mod:`ffedge.datasets.images` for the formats, the pixel limit and 16-bit/float pixels.
    """
    if not paths:
        raise FFEdgeError("no input files given")
    for p in map(Path, paths):  # every name checked before any is decoded
        if p.is_dir():
            raise FFEdgeError(f"{p} is a folder: pass image files (e.g. {p}/*.png)")
        check_regular(p)
    batches, names = [], []
    for p in map(Path, paths):
        if p.suffix.lower() == ".npy":
            x = read_npy(p, shape)
            names += [str(p)] if len(x) == 1 else [f"{p}[{i}]" for i in range(len(x))]
        else:
            x = load_images([p])
            names.append(str(p))
        batches.append(_fit(x, str(p), shape, resize))
    return np.concatenate(batches), names
