"""Refit the softmax head of a finished run with another head grid, keeping its FF layers: a new run folder.

The FF layers are what takes minutes to hours to train; the head is fitted after them on frozen
neutral-label activities (seconds). This compares head recipes on the same trained layers, e.g. a run
made before the head grid existed (global mean, ``--head-grid 1``) against the 2x2 default, or other head layers
(``--layers 1,2,3``: those of runs made before ``--head-layers`` existed):

    python benchmarks/refit_head.py runs/mnist-5k runs/mnist-5k-grid2 --grid 2
    ffedge export runs/mnist-5k-grid2 --int8 && ffedge eval export/mnist-5k-grid2-int8 --mode head

The new folder holds ``config.json`` (``train.head_grid`` set), ``weights.pt`` (the same layers, the new
head) and ``metrics.json`` (the old one, ``head_test_accuracy`` replaced, ``head_refit`` added).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from ffedge.fsutil import atomic_write_json
from ffedge.train.run_files import CONFIG, METRICS, WEIGHTS, load_run, model_from_run_config, save_torch
from ffedge.train.trainer import (
    TrainConfig,
    fit_head,
    head_accuracy,
    head_training_features,
    neutral_features,
    prepare_data,
)
from ffedge.labels import encoding_from_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--grid", type=int, default=2)
    ap.add_argument("--layers", default=None, help="head layers, comma-separated (default: the run's)")
    ap.add_argument("--head-epochs", type=int, default=None, help="default: the run's")
    ap.add_argument("--head-augment", type=int, default=4, help="augmented copies of the training images (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, old = load_run(a.run)
    cfg = json.loads(json.dumps(cfg))
    cfg["train"]["head_grid"] = a.grid
    cfg["train"]["head_augment"] = a.head_augment
    if a.layers is not None:
        cfg["train"]["head_layers"] = [int(v) for v in a.layers.split(",")]
    if a.head_epochs is not None:
        cfg["train"]["head_epochs"] = a.head_epochs
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    net = model_from_run_config(cfg)
    res = net.load_state_dict({k: v for k, v in old.state_dict().items() if not k.startswith("head.")}, strict=False)
    assert sorted(res.missing_keys) == ["head.bias", "head.weight"] and not res.unexpected_keys, res
    net.eval()
    data = prepare_data(tcfg, encoding_from_config(cfg["encoding"]))
    t = time.perf_counter()
    f_train, y_train = head_training_features(net, tcfg, data)
    f_test = neutral_features(net, data.encoding, data.x_test, tcfg.device)
    fit_head(net, f_train, y_train, tcfg.head_epochs, tcfg.seed)
    seconds = time.perf_counter() - t
    acc = head_accuracy(net, f_test, data.dataset.y_test)
    metrics_path = a.run / METRICS
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    before = metrics.get("head_test_accuracy")
    metrics["head_test_accuracy"] = acc
    metrics["head_refit"] = {
        "from": str(a.run),
        "grid": a.grid,
        "layers": list(net.head_layers),
        "head_augment": a.head_augment,
        "head_epochs": tcfg.head_epochs,
        "seconds": round(seconds, 2),
        "head_test_accuracy_before": before,
    }
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    atomic_write_json(a.out / CONFIG, cfg)
    save_torch(a.out / WEIGHTS, net.state_dict())
    atomic_write_json(a.out / METRICS, metrics)
    print(
        f"head grid {a.grid}, layers {net.head_layers}: held-out {acc:.4f} (was {before}), fitted in {seconds:.1f}s -> {a.out}"
    )


if __name__ == "__main__":
    main()
