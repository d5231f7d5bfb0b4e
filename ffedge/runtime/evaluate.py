"""Accuracy and confusion matrix of a bundle on a labelled test set, and the datasets that fit a bundle (device side).

:func:`evaluate` also reports batch-1 latency (:mod:`ffedge.runtime.timing`) and peak memory
(:mod:`ffedge.runtime.memory`).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ffedge.bundle import Bundle
from ffedge.datasets import Dataset, load_dataset
from ffedge.errors import FFEdgeError
from ffedge.options import check_int
from ffedge.progress import QuietReporter, Reporter
from ffedge.runtime.memory import peak_rss_mb
from ffedge.runtime.modes import DEFAULT_MODE, mode_spec
from ffedge.runtime.session import Runtime
from ffedge.runtime.timing import latency


def load_fitting(
    spec: str,
    input_shape: Sequence[int],
    data_dir: str | None = None,
    resize: bool = False,
    owner: str = "the bundle",
    hint: str = " (pass --resize)",
    download: bool = True,
) -> Dataset:
    """A dataset whose images have ``input_shape`` (C, H, W) (resized to it with ``resize``); ``owner`` names who needs it.
    ``download``: a standard dataset's missing files may be downloaded."""
    c, h, w = (int(v) for v in input_shape)
    ds = load_dataset(spec, data_dir=data_dir, download=download, image_size=(h, w) if resize else None)
    if tuple(ds.image_shape) != (c, h, w):
        dc, dh, dw = ds.image_shape
        raise FFEdgeError(f"{spec}: images are {dh}x{dw} with {dc} channel(s), {owner} takes {h}x{w} with {c}{hint}")
    return ds


def load_for_bundle(
    bundle: Bundle, spec: str, data_dir: str | None = None, resize: bool = False, download: bool = True
) -> Dataset:
    """A dataset whose images have the bundle's input shape (resized to it with ``resize``)."""
    return load_fitting(spec, bundle.input_shape, data_dir, resize, download=download)


def first_held_out(
    spec: str,
    input_shape: Sequence[int],
    num_classes: int,
    data_dir: str | None = None,
    resize: bool = False,
    limit: int | None = None,
    owner: str = "the bundle",
    hint: str = " (pass --resize)",
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images (all without it) of the held-out split of a dataset that fits ``input_shape`` and
    ``num_classes``, as uint8 NHWC pixels and labels.

    ``ffedge eval`` and ``ffedge bench`` (:func:`first_held_out_for_bundle`) and ``ffedge report`` score these;
    the export's parity check uses a random subset instead (``ffedge.train.parity.random_held_out_of_run``).
    """
    check_int(limit, "--limit", 1)
    ds = load_fitting(spec, input_shape, data_dir, resize, owner, hint, download)
    if ds.num_classes != num_classes:
        if ds.label_gaps:
            raise FFEdgeError(ds.label_gaps)
        raise FFEdgeError(f"{spec} has {ds.num_classes} classes, {owner} {num_classes}")
    x, y = ds.x_test, ds.y_test
    if limit:
        x, y = x[:limit], y[:limit]
    if len(y) == 0:
        raise FFEdgeError(f"{spec} has no held-out images")
    return x, y


def first_held_out_for_bundle(
    rt: Runtime,
    spec: str,
    data_dir: str | None = None,
    resize: bool = False,
    limit: int | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`first_held_out` of a dataset, checked against the bundle's classes and input shape."""
    return first_held_out(spec, rt.bundle.input_shape, rt.num_classes, data_dir, resize, limit, download=download)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """[true, predicted] counts."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def evaluate(
    rt: Runtime,
    x: np.ndarray,
    y: np.ndarray,
    mode: str = DEFAULT_MODE,
    k: int = 3,
    batch_size: int = 64,
    latency_images: int = 200,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Accuracy and confusion matrix over (x, y), throughput at ``batch_size``, batch-1 latency, peak RSS."""
    rep = reporter or QuietReporter()
    check_int(batch_size, "--batch-size", 1)
    check_int(latency_images, "--latency-images", 0)
    rt.check_mode(mode, k)
    preds = []
    t0 = time.perf_counter()
    with rep.task(f"evaluating {len(y)} images ({mode})", len(y)) as advance:
        for s in range(0, len(y), batch_size):
            preds.append(rt.predict(x[s : s + batch_size], mode, k).labels)
            advance(len(preds[-1]))
    seconds = time.perf_counter() - t0
    pred = np.concatenate(preds)
    lat = latency(rt, x, mode, k, latency_images) if latency_images else None
    return {
        "mode": mode,
        "k": k if mode_spec(mode).uses_k else None,
        "images": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "confusion": confusion(y, pred, rt.num_classes).tolist(),
        "classes": rt.classes,
        "throughput_images_per_s": len(y) / seconds,
        "batch_size": batch_size,
        "latency_batch1": lat,
        "peak_rss_mb": peak_rss_mb(),
    }
