"""Scoring for ``ffedge report``: the run's held-out split, goodness of every label hypothesis, which images to show.

Scores are computed as the prediction does: goodness over every label
hypothesis, summed over the run's prediction layers, on the same split and
normalization the trainer and ``ffedge eval`` use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffedge.runtime.evaluate import first_held_out
from ffedge.labels import LabelEncoding
from ffedge.runtime.preprocess import normalize
from ffedge.progress import Reporter
from ffedge.train.model import FFNet
from ffedge.train.trainer import goodness_accuracy, goodness_matrix

SCORE_BATCH = 100  # held-out images per goodness_matrix call (one progress step)


def first_held_out_of_run(
    cfg: dict[str, Any], limit: int | None = None, data_dir: str | Path | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``limit`` images of the run's held-out split (:func:`~ffedge.runtime.evaluate.first_held_out`):
    raw uint8 NHWC, normalized NCHW as in training, labels."""
    tr = cfg["train"]
    where = data_dir if data_dir is not None else tr.get("data_dir")
    raw, y = first_held_out(
        tr["dataset"],
        cfg["input"]["shape"],
        len(cfg["classes"]),
        str(where) if where else None,
        limit=limit,
        owner="the run",
        hint="",
        download=download,
    )
    return raw, normalize(raw, cfg["input"]["mean"], cfg["input"]["std"]), y


@torch.no_grad()
def goodness_maps(net: FFNet, x_enc: np.ndarray, device: str = "cpu") -> list[np.ndarray]:
    """Per layer, each position's contribution to the layer's goodness, upsampled to the input size: [L][B, H, W].

    The contribution is sum over channels of squared activations divided by the
    layer's number of activations, so at the layer's own resolution a map sums
    to :func:`ffedge.train.model.goodness`. Upsampling is bilinear (for display).
    """
    net.eval()
    hs = net.forward_layers(torch.from_numpy(x_enc).to(device))
    size = tuple(x_enc.shape[2:])
    maps = []
    for h in hs:
        m = h.pow(2).sum(1, keepdim=True) / h[0].numel()
        m = torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)
        maps.append(m[:, 0].cpu().numpy())
    return maps


def spread_over_classes(candidates: np.ndarray, y: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` of ``candidates`` (indices, in held-out order), taken class by class so several classes show."""
    by_class: dict[int, list[int]] = {}
    for i in candidates:
        by_class.setdefault(int(y[i]), []).append(int(i))
    queues = [by_class[c] for c in sorted(by_class)]
    picked: list[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return picked


@dataclass
class Scores:
    """Goodness of every held-out image under every label, and what the prediction makes of it."""

    g: np.ndarray  # [L, N, K] goodness per layer, image and label hypothesis
    gsum: np.ndarray  # [N, K] summed over the prediction layers
    pred: np.ndarray  # [N] predicted class
    wrong: np.ndarray  # [N] best wrong label of every image
    accuracy: float


def score_held_out(
    net: FFNet,
    enc: LabelEncoding,
    x: np.ndarray,
    y: np.ndarray,
    predict_layers: list[int],
    device: str,
    reporter: Reporter,
) -> Scores:
    """Goodness of every image of ``x`` under every label (in batches, with progress), and the predictions."""
    n = len(y)
    parts = []
    with reporter.task(f"scoring {n} held-out images x {enc.num_classes} labels", -(-n // SCORE_BATCH)) as advance:
        for s in range(0, n, SCORE_BATCH):
            parts.append(goodness_matrix(net, enc, x[s : s + SCORE_BATCH], device))
            advance(1)
    g = np.concatenate(parts, axis=1)  # [L, N, K]
    accuracy = goodness_accuracy(g, y, predict_layers)
    gsum = g[predict_layers].sum(0)
    pred = gsum.argmax(1)
    masked = gsum.copy()
    masked[np.arange(n), y] = -np.inf
    return Scores(g, gsum, pred, masked.argmax(1), accuracy)


@dataclass
class Shown:
    """Which held-out images the figures show (indices, spread over classes)."""

    correct: list[int]  # correctly classified, in the goodness-bar figure
    wrong: list[int]  # wrongly classified, in the other one
    cams: list[int]  # any, in the activation maps (the first also in the label sheet)


def pick_images(scores: Scores, y: np.ndarray, images: int) -> Shown:
    """Up to ``images`` correctly classified, wrongly classified and any images, several classes each."""
    return Shown(
        correct=spread_over_classes(np.flatnonzero(scores.pred == y), y, images),
        wrong=spread_over_classes(np.flatnonzero(scores.pred != y), y, images),
        cams=spread_over_classes(np.arange(len(y)), y, images),
    )
