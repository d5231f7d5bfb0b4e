"""On-device Forward-Forward fine-tuning of a bundle (device side: numpy + onnxruntime, no torch).

The frozen layers run as the bundle's own int8 onnxruntime sessions; the chosen
layers (default: the last FF layer) learn with the FF objective of training
(``manifest["objective"]``), layer-local, from the float master weights in
``master.npz``, in fake-quant mode (:mod:`ffedge.ff_numpy`); then the softmax head
is refit on the new features. The results are re-quantized exactly as the
exporter does, patched into copies of the ONNX files (:mod:`ffedge.onnx_patch`),
scored on the held-out part of the data, and committed as a new bundle version
(:mod:`ffedge.bundle_update`): the bundle is never half-updated and ``ffedge
rollback`` returns to the previous version.

Memory: the data are the few hundred examples asked for; batches are encoded
on the fly; only the trainable layers' weights, Adam state and one batch's
activations are held; onnxruntime runs without its memory arena.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ffedge.bundle import Bundle, load_master, load_replay
from ffedge.bundle_update import bundle_version, commit_update
from ffedge.errors import FFEdgeError
from ffedge.evaluate import load_for_bundle, peak_rss_mb
from ffedge.ff_numpy import Adam, QuantFFLayer, SoftmaxHead, cosine_lr, ff_step
from ffedge.fsutil import fsync_dir
from ffedge.onnx_patch import patch_initializers
from ffedge.preprocess import normalize
from ffedge.progress import QuietReporter, Reporter
from ffedge.runtime import MODES, Runtime

EVAL_BATCH = 2  # images per onnxruntime call when scoring (10 labels -> 20 hypotheses): bounds peak memory


@dataclass
class FinetuneConfig:
    """What ``ffedge finetune`` does; recorded in the bundle's history."""

    data: str
    layers: str = "last"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    max_examples: int = 500
    head_epochs: int = 30
    anchor: float = 0.002
    replay: bool = True
    eval_examples: int = 1000
    mode: str = "all"
    seed: int = 0
    data_dir: str | None = None
    resize: bool = False
    threads: int | None = None

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "max_examples", "eval_examples"):
            if getattr(self, name) < 1:
                raise FFEdgeError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 <= self.anchor < 1:
            raise FFEdgeError("--anchor must lie in [0, 1)")
        if self.head_epochs < 0:
            raise FFEdgeError("--head-epochs must be >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FFEdgeError("--lr must be a positive number")
        if self.mode not in MODES:
            raise FFEdgeError(f"unknown mode '{self.mode}': choose one of {', '.join(MODES)}")


def trainable_layers(text: str, n_layers: int) -> list[int]:
    """``last`` or comma-separated layer indices (0-based) -> sorted unique indices."""
    if text.strip().lower() == "last":
        return [n_layers - 1]
    try:
        idx = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise FFEdgeError(f"--layers takes 'last' or layer numbers like 2,3 (got '{text}')") from None
    if not idx or any(not 0 <= i < n_layers for i in idx):
        raise FFEdgeError(f"--layers: the bundle has layers 0..{n_layers - 1} (got '{text}')")
    return idx


def _load_master(b: Bundle) -> dict[str, np.ndarray]:
    return load_master(b)


def _load_replay(b: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's rehearsal examples (``replay.npz``), checked against its input shape and classes."""
    return load_replay(b)


def _load_data(b: Bundle, cfg: FinetuneConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training examples (at most max_examples, a seeded random choice) and held-out examples, checked against the bundle."""
    ds = load_for_bundle(b, cfg.data, cfg.data_dir, cfg.resize)
    if [str(k) for k in ds.classes] != [str(k) for k in b.classes]:
        raise FFEdgeError(
            f"{cfg.data}: classes {', '.join(map(str, ds.classes[:12]))} do not match the bundle's {', '.join(map(str, b.classes[:12]))}"
        )
    k = len(b.classes)
    if len(ds.y_train) < 2 * k:
        raise FFEdgeError(f"{cfg.data}: {len(ds.y_train)} training examples are too few (need at least {2 * k}, two per class)")
    if len(ds.y_test) == 0:
        raise FFEdgeError(f"{cfg.data}: no held-out examples to measure the fine-tuning on")
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.permutation(len(ds.y_train))[: cfg.max_examples])
    return ds.x_train[pick].copy(), ds.y_train[pick].copy(), ds.x_test[: cfg.eval_examples].copy(), ds.y_test[: cfg.eval_examples].copy()


def accuracy(rt: Runtime, x: np.ndarray, y: np.ndarray, mode: str) -> float:
    """Held-out accuracy of a runtime, in small batches (bounded memory)."""
    pred = np.concatenate([rt.predict(x[s : s + EVAL_BATCH], mode).labels for s in range(0, len(x), EVAL_BATCH)])
    return float((pred == y).mean())


class HybridNet:
    """The bundle's net with some layers replaced by trainable numpy layers; the rest run in onnxruntime."""

    def __init__(self, rt: Runtime, layers: dict[int, QuantFFLayer], anchor: float = 0.0) -> None:
        self.layers = layers
        self.anchor = anchor
        # Starting weights: each step pulls the weights back toward them by ``anchor`` (limits forgetting).
        self.start = {i: [p.copy() for p in layer.params] for i, layer in layers.items()}
        self.sessions = rt.layer_sessions

    def features(self, x_encoded: np.ndarray, which: list[int]) -> list[np.ndarray]:
        """Spatial means of the activities (before pooling) of layers ``which``."""
        out: dict[int, np.ndarray] = {}
        cur = x_encoded
        for i in range(max(which) + 1):
            if i in self.layers:
                h, cur, _, _ = self.layers[i].forward(cur)
                out[i] = h.mean(axis=(2, 3))
            else:
                cur, out[i] = self.sessions[i].run(["y", "feature"], {"x": cur})
        return [out[i] for i in which]

    def train_batch(self, x_pos: np.ndarray, x_neg: np.ndarray, opts: dict[int, Adam], objective: dict[str, Any]) -> list[float]:
        """One FF step on every trainable layer (each on its own input: layer-local); returns their losses."""
        n = len(x_pos)
        cur = np.concatenate([x_pos, x_neg])
        losses = []
        for i in range(max(self.layers) + 1):
            if i in self.layers:
                loss, _, _ = ff_step(self.layers[i], opts[i], cur[:n], cur[n:], objective.get("loss", "symba"),
                                     float(objective.get("alpha", 4.0)), float(objective.get("threshold", 1.0)))
                losses.append(loss)
                if self.anchor:
                    for p, p0 in zip(self.layers[i].params, self.start[i]):
                        p -= self.anchor * (p - p0)
                if i < max(self.layers):
                    cur = self.layers[i].forward(cur)[1]
            else:
                cur = self.sessions[i].run(["y"], {"x": cur})[0]
        return losses


def _write_candidates(b: Bundle, net: HybridNet, head: SoftmaxHead | None, master: dict[str, np.ndarray], tmp: Path) -> dict[str, Path]:
    """Patched copies of the changed files (layer files, net.onnx, head.onnx, master.npz) in ``tmp``."""
    files: dict[str, Path] = {}
    fused_values: dict[str, np.ndarray] = {}
    for i, layer in net.layers.items():
        q = layer.quantized()
        entry = b.layers[i]
        name = Path(entry.file).name
        patch_initializers(b.file(entry.file), tmp / name, q)
        files[name] = tmp / name
        fused_values.update({f"l{i}_{k}": v for k, v in q.items()})
        master[f"layer{i}.weight"], master[f"layer{i}.bias"] = layer.weight, layer.bias
    fused = b.manifest.fused
    if fused:
        name = Path(fused.file).name
        patch_initializers(b.file(fused.file), tmp / name, fused_values)
        files[name] = tmp / name
    if head is not None and b.head:
        name = Path(b.head.file).name
        patch_initializers(b.file(b.head.file), tmp / name, {"head_w": head.weight, "head_b": head.bias})
        files[name] = tmp / name
        master["head.weight"], master["head.bias"] = head.weight, head.bias
    name = Path(b.manifest.master.file).name
    with open(tmp / name, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in master.items()})
    files[name] = tmp / name
    return files


def _copy_bundle(src: Path, out: Path) -> None:
    """Copy a bundle to a new folder (via a temp folder and a rename: never half-copied)."""
    if out.exists():
        raise FFEdgeError(f"{out} already exists: choose another --out")
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.resolve().parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
        os.replace(tmp, out)
        fsync_dir(out.resolve().parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FFEdgeError(f"cannot create {out}: {e.strerror or e}") from None


def finetune(bundle: str | Path, cfg: FinetuneConfig, out: str | Path | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Fine-tune ``bundle`` (in place, or a copy at ``out``) on ``cfg.data``; returns what was measured."""
    rep = reporter or QuietReporter()
    cfg.validate()
    t0 = time.perf_counter()
    rt = Runtime(bundle, threads=cfg.threads, arena=False)
    b = rt.bundle
    if b.manifest.precision != "int8":
        raise FFEdgeError(f"{b.path} is an {b.manifest.precision} bundle: fine-tuning works on int8 bundles")
    master = _load_master(b)
    which = trainable_layers(cfg.layers, len(b.layers))
    target = Path(out) if out is not None else b.path
    if out is None and not os.access(b.path, os.W_OK):
        raise FFEdgeError(f"cannot write to {b.path}: fine-tune into a copy with --out")
    x_tr, y_tr, x_te, y_te = _load_data(b, cfg)
    n_new = len(y_tr)
    if cfg.replay and b.manifest.replay:
        # Rehearse the stored training examples alongside the new ones: what keeps the old data's accuracy.
        x_old, y_old = _load_replay(b)
        x_tr, y_tr = np.concatenate([x_tr, x_old]), np.concatenate([y_tr, y_old])
    layers = {i: QuantFFLayer.from_master(master, i, b.layers[i].to_dict()) for i in which}
    net = HybridNet(rt, layers, cfg.anchor)
    k = len(b.classes)
    mean, std = b.manifest.input.mean, b.manifest.input.std
    rep.log(f"fine-tuning {b.path} on {cfg.data}: {n_new} examples (+{len(y_tr) - n_new} replayed), layers {which} + head, {cfg.epochs} epochs; "
            f"scoring on {len(y_te)} held-out examples")
    before = accuracy(rt, x_te, y_te, cfg.mode)
    rep.log(f"held-out accuracy before: {before:.2%}")
    opts = {i: Adam(layer.params, lr=cfg.lr) for i, layer in layers.items()}
    rng = np.random.default_rng(cfg.seed)
    steps = cfg.epochs * math.ceil(len(y_tr) / cfg.batch_size)
    step = 0
    history = []
    for epoch in range(cfg.epochs):
        perm = rng.permutation(len(y_tr))
        losses = []
        with rep.task(f"epoch {epoch + 1}/{cfg.epochs}", len(perm)) as advance:
            for s in range(0, len(perm), cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                for o in opts.values():
                    o.lr = cosine_lr(cfg.lr, step, steps)
                xn = normalize(x_tr[idx], mean, std)
                y = y_tr[idx]
                wrong = (y + rng.integers(1, k, size=len(y))) % k
                losses.append(net.train_batch(b.encoding.encode(xn, y), b.encoding.encode(xn, wrong), opts, b.manifest.objective.options() if b.manifest.objective else {}))
                step += 1
                advance(len(idx), loss=f"{np.mean(losses[-1]):.3f}")
        history.append(float(np.mean(losses)))
        rep.log(f"epoch {epoch + 1}/{cfg.epochs}  FF loss {history[-1]:.4f}")
    head = None
    if b.head and cfg.head_epochs:
        head = SoftmaxHead.from_master(master)
        hl = list(b.head.layers)
        feats = np.concatenate([
            head.features(net.features(b.encoding.neutral(normalize(x_tr[s : s + 64], mean, std)), hl)) for s in range(0, len(y_tr), 64)
        ])
        with rep.task("softmax head", cfg.head_epochs) as advance:
            for _ in range(cfg.head_epochs):
                perm = rng.permutation(len(y_tr))
                for s in range(0, len(perm), 64):
                    head.train_step(feats[perm[s : s + 64]], y_tr[perm[s : s + 64]])
                advance(1)
    with tempfile.TemporaryDirectory(prefix="ffedge-finetune-") as tmpdir:
        files = _write_candidates(b, net, head, master, Path(tmpdir))
        del rt, net  # free the training sessions before the candidate's are opened (peak memory)
        after_rt = Runtime(b.path, threads=cfg.threads, arena=False, replaced=files, verify=False)
        after = accuracy(after_rt, x_te, y_te, cfg.mode)
        del after_rt
        rep.log(f"held-out accuracy after: {after:.2%}")
        new_layers = [e.to_dict() for e in b.layers]
        for i, layer in layers.items():
            new_layers[i]["quant"] = {**new_layers[i]["quant"], "weight_scale": float(layer.weight_scale())}
        seconds = time.perf_counter() - t0
        entry = {
            "event": "finetune", "data": cfg.data, "examples": int(n_new), "replayed": int(len(y_tr) - n_new), "held_out": int(len(y_te)),
            "layers": which, "head": head is not None, "epochs": cfg.epochs, "mode": cfg.mode,
            "accuracy_before": before, "accuracy_after": after, "seconds": round(seconds, 1), "ff_loss": history,
            "config": asdict(cfg),
        }
        if out is not None:
            _copy_bundle(b.path, target)
        manifest = commit_update(target, files, {"layers": new_layers}, entry)
    return {
        "bundle": str(target), "version": bundle_version(manifest), "examples": int(n_new), "replayed": int(len(y_tr) - n_new),
        "held_out": int(len(y_te)),
        "layers": which, "accuracy_before": before, "accuracy_after": after, "ff_loss": history,
        "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
    }
