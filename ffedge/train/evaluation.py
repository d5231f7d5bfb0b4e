"""Scoring during and after training: the per-epoch held-out record, and the final metrics (``metrics.json``).

Scores are goodness over every label hypothesis, summed over the prediction
layers, as the device predicts; the final metrics add each layer alone and the
softmax head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ffedge.progress import Reporter
from ffedge.train.data_parallel import DataParallel
from ffedge.train.model import FFNet
from ffedge.train.trainer import PreparedData, TrainConfig, goodness_accuracy, goodness_matrix, head_accuracy


def heldout_scores(
    net: FFNet, cfg: TrainConfig, data: PreparedData, sub: np.ndarray, dp: DataParallel | None = None
) -> tuple[float, list[float]]:
    """Goodness accuracy on the held-out images ``sub``: of the prediction layers, and of each layer alone.

    Data parallel (``dp``): each rank scores its shard of ``sub`` and the counts are summed over the ranks.
    """
    ds = data.dataset
    part = sub if dp is None else sub[dp.shard(len(sub))]
    g = goodness_matrix(net, data.encoding, data.x_test[part], cfg.device)
    layer_sets = [cfg.prediction_layers(len(net.layers))] + [[l] for l in range(len(net.layers))]
    if dp is None:
        scores = [goodness_accuracy(g, ds.y_test[part], layers) for layers in layer_sets]
    else:
        right = [float((g[layers].sum(0).argmax(1) == ds.y_test[part]).sum()) for layers in layer_sets]
        scores = [c / len(sub) if len(sub) else float("nan") for c in dp.sum(right)]
    return scores[0], scores[1:]


def epoch_record(
    epoch: int, elapsed: float, means: np.ndarray, acc: float, per_layer: list[float], n_images: int
) -> dict[str, Any]:
    """The history record of ``epoch`` (0-based): training seconds so far, mean loss and goodness per layer
    (``means``: [layers, (loss, g+, g-)]), held-out accuracy on ``n_images`` images."""
    return {
        "epoch": epoch + 1,
        "seconds": round(elapsed, 2),
        "loss": [round(float(v), 5) for v in means[:, 0]],
        "g_pos": [round(float(v), 4) for v in means[:, 1]],
        "g_neg": [round(float(v), 4) for v in means[:, 2]],
        "heldout_accuracy": acc,
        "heldout_per_layer": per_layer,
        "heldout_images": n_images,
    }


def log_epoch(reporter: Reporter, cfg: TrainConfig, rec: dict[str, Any], means: np.ndarray, elapsed: float) -> None:
    """One line per epoch: time, loss and goodness per layer, held-out accuracy."""
    reporter.log(
        f"epoch {rec['epoch']:3d}/{cfg.epochs}  {elapsed:6.0f}s  loss {' '.join(f'{v:.3f}' for v in means[:, 0])}  "
        f"g+/g- {' '.join(f'{p:.2f}/{n:.2f}' for p, n in means[:, 1:])}  "
        f"held-out acc {rec['heldout_accuracy']:.4f} (per layer {' '.join(f'{a:.3f}' for a in rec['heldout_per_layer'])})"
    )


def final_metrics(
    net: FFNet,
    cfg: TrainConfig,
    data: PreparedData,
    f_test: torch.Tensor,
    precision: str,
    train_seconds: float,
    head_seconds: float,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """``metrics.json``: accuracies on the whole held-out split (``f_test``: its head features), sizes, times, history."""
    ds = data.dataset
    n_layers = len(net.layers)
    pred_layers = cfg.prediction_layers(n_layers)
    g = goodness_matrix(net, data.encoding, data.x_test, cfg.device)
    return {
        "dataset": cfg.dataset,
        "labels": cfg.labels,
        "test_accuracy": goodness_accuracy(g, ds.y_test, pred_layers),
        "predict_layers": pred_layers,
        "per_layer_test_accuracy": [goodness_accuracy(g, ds.y_test, [l]) for l in range(n_layers)],
        "all_layers_test_accuracy": goodness_accuracy(g, ds.y_test, list(range(n_layers))),
        "head_test_accuracy": head_accuracy(net, f_test, ds.y_test),
        "n_train": int(len(ds.y_train)),
        "n_test": int(len(ds.y_test)),
        "epochs": cfg.epochs,
        "train_seconds": round(train_seconds, 2),
        "head_seconds": round(head_seconds, 2),
        "threads": torch.get_num_threads(),
        "float_precision": precision,
        "history": history,
    }
