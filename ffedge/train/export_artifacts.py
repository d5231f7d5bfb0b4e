"""The non-graph files of a bundle and its manifest: label arrays, ``master.npz``, ``replay.npz``, file hashes.

``master.npz`` (float master weights) and ``replay.npz`` (class-balanced training
examples) are what on-device fine-tuning (``ffedge finetune``) trains and
rehearses; the label arrays let the device use the training encoding bit for bit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import ffedge
from ffedge.bundle.names import (
    HEAD_FILE,
    MASTER_HEAD_BIAS,
    MASTER_HEAD_WEIGHT,
    REPLAY_IMAGES,
    REPLAY_LABELS,
    MASTER_BIAS,
    MASTER_BN_EPS,
    MASTER_BN_MEAN,
    MASTER_BN_VAR,
    MASTER_FILE,
    MASTER_RMS_EPS,
    MASTER_WEIGHT,
    REPLAY_FILE,
    label_array_file,
    master_key,
)
from ffedge.bundle import BUNDLE_FORMAT, BUNDLE_VERSION
from ffedge.fsutil import sha256_file
from ffedge.labels import encoding_from_config
from ffedge.train.model import FFNet

DEFAULT_REPLAY = 500


def write_label_arrays(encoding: dict[str, Any], folder: Path) -> dict[str, str]:
    """Save the arrays of the run's label encoding (its ``config.json`` entry) as ``labels_{key}.npy``; returns key -> file."""
    label_arrays: dict[str, str] = {}
    for key, arr in encoding_from_config(encoding).arrays().items():
        label_arrays[key] = label_array_file(key)
        np.save(folder / label_arrays[key], np.ascontiguousarray(arr), allow_pickle=False)
    return label_arrays


def write_master(net: FFNet, path: Path) -> None:
    """Float master weights (conv weight/bias per layer, with its BatchNorm statistics or its rms norm's
    eps; head), as a plain npz."""
    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(net.layers):
        arrays[master_key(i, MASTER_WEIGHT)] = layer.conv.weight.detach().numpy()
        arrays[master_key(i, MASTER_BIAS)] = layer.conv.bias.detach().numpy()
        if layer.norm_kind == "rms":
            arrays[master_key(i, MASTER_RMS_EPS)] = np.array(layer.norm.eps, dtype=np.float32)
        else:
            arrays[master_key(i, MASTER_BN_MEAN)] = layer.norm.running_mean.numpy()
            arrays[master_key(i, MASTER_BN_VAR)] = layer.norm.running_var.numpy()
            arrays[master_key(i, MASTER_BN_EPS)] = np.array(layer.norm.eps, dtype=np.float32)
    arrays[MASTER_HEAD_WEIGHT] = net.head.weight.detach().numpy()
    arrays[MASTER_HEAD_BIAS] = net.head.bias.detach().numpy()
    with open(path, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})


def write_replay(cfg: dict[str, Any], n: int, path: Path) -> int:
    """A class-balanced sample of ``n`` training examples (uint8 pixels and labels), for rehearsal during fine-tuning."""
    from ffedge.datasets import load_dataset

    tr = cfg["train"]
    ds = load_dataset(tr["dataset"], data_dir=tr.get("data_dir"), download=False)
    rng = np.random.default_rng(0)
    k = ds.num_classes
    per = [rng.permutation(np.flatnonzero(ds.y_train == c)) for c in range(k)]
    pick = np.sort(np.concatenate([p[: max(1, n // k)] for p in per]))[:n]
    with open(path, "wb") as f:
        np.savez(f, **{REPLAY_IMAGES: ds.x_train[pick], REPLAY_LABELS: ds.y_train[pick].astype(np.int64)})
    return int(len(pick))


def write_finetune_files(model: FFNet, cfg: dict[str, Any], folder: Path, replay: int) -> dict[str, Any]:
    """Write ``master.npz`` and (``replay`` > 0) ``replay.npz``; returns their manifest entries."""
    write_master(model, folder / MASTER_FILE)
    entries: dict[str, Any] = {"master": {"file": MASTER_FILE}}
    if replay > 0:
        n_replay = write_replay(cfg, replay, folder / REPLAY_FILE)
        if n_replay:
            entries["replay"] = {"file": REPLAY_FILE, "examples": n_replay}
    return entries


def hash_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder`` (the manifest's ``files``), by name."""
    return {f.name: sha256_file(f) for f in sorted(folder.iterdir())}


def provenance(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The manifest keys that say when, by which ffedge and from which run, and what goes in: ``created``,
    ``ffedge_version``, ``source``, ``classes``, ``input`` (shared by the bundle and the QONNX file set)."""
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ffedge_version": ffedge.__version__,
        "source": {
            "run": str(run_dir),
            "dataset": cfg["train"].get("dataset"),
            "epochs": metrics.get("epochs"),
            "run_test_accuracy": metrics.get("test_accuracy"),
        },
        "classes": list(cfg["classes"]),
        "input": {**cfg["input"], "pixels": "uint8 NHWC 0..255; normalized (x/255 - mean)/std per channel"},
    }


def build_manifest(
    cfg: dict[str, Any],
    net: FFNet,
    precision: str,
    run_dir: Path,
    files: dict[str, str],
    layers: list[dict[str, Any]],
    label_arrays: dict[str, str],
    fused: dict[str, Any],
    shared: dict[str, Any] | None = None,
    topk: dict[str, Any] | None = None,
    head_net: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a bundle (see export/README.md); ``shared``, ``topk`` and ``head_net``: the entries of
    ``net_shared.onnx``, ``net_topk.onnx`` and ``net_head.onnx``, if written."""
    quant = {
        "precision": precision,
        "format": "QCDQ (QuantizeLinear / DequantizeLinear around float ops), opset 13"
        if precision == "int8"
        else "float32",
    }
    if precision == "int8":
        quant.update(
            weights=f"int8 storage, {layers[0]['quant']['weight_bits']}-bit symmetric, per tensor",
            activations="layer input int8 symmetric, ReLU output uint8 (zero point 0), per tensor",
            bias="int32",
        )
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "precision": precision,
        **provenance(cfg, run_dir),
        "encoding": cfg["encoding"],
        "label_arrays": label_arrays,
        "layers": layers,
        "predict_layers": list(cfg["model"]["predict_layers"]),
        "objective": {k: cfg["train"].get(k) for k in ("loss", "alpha", "threshold", "negatives")},
        "head": {"file": HEAD_FILE, "layers": list(net.head_layers), "grid": net.head_grid},
        "fused": fused,
        **({"shared": shared} if shared else {}),
        **({"topk": topk} if topk else {}),
        **({"head_net": head_net} if head_net else {}),
        "quantization": quant,
        "files": files,
        "history": [],
    }
