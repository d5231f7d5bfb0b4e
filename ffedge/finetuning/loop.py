"""On-device Forward-Forward fine-tuning of a bundle (device side: numpy + onnxruntime, no torch).

The frozen layers run as the bundle's own int8 onnxruntime sessions; the chosen
layers (default: the last FF layer) learn with the FF objective of training
(``manifest["objective"]``), layer-local, from the float master weights in
``master.npz``, in fake-quant mode (:mod:`ffedge.finetuning.numerics`); then the softmax head
is refit on the new features. The results are re-quantized exactly as the
exporter does, patched into copies of the ONNX files (:mod:`ffedge.bundle.onnx_patch`),
scored on the held-out part of the data, and committed as a new bundle version
(:mod:`ffedge.bundle.update`): the bundle is never half-updated and ``ffedge
rollback`` returns to the previous version.

Memory: the data are the few hundred examples asked for; batches are encoded
on the fly; only the trainable layers' weights, Adam state and one batch's
activations are held; onnxruntime runs without its memory arena.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ffedge.bundle import Bundle, load_master, load_replay, read_manifest
from ffedge.bundle.names import (
    FEATURE,
    HEAD_B,
    HEAD_W,
    INPUT,
    MASTER_BIAS,
    MASTER_HEAD_BIAS,
    MASTER_HEAD_WEIGHT,
    MASTER_WEIGHT,
    NEXT,
    fused_name,
    master_key,
)
from ffedge.bundle.onnx_patch import patch_initializers
from ffedge.bundle.update import bundle_version, check_no_links, commit_update, os_reason, update_lock
from ffedge.errors import FFEdgeError
from ffedge.ff import DEFAULT_ALPHA, DEFAULT_LOSS, DEFAULT_THRESHOLD, head_pool, wrong_labels
from ffedge.finetuning.numerics import Adam, QuantFFLayer, SoftmaxHead, cosine_lr, ff_step
from ffedge.fsutil import fsync_dir
from ffedge.options import check_float, check_int, check_threads
from ffedge.progress import QuietReporter, Reporter
from ffedge.runtime.evaluate import load_for_bundle
from ffedge.runtime.memory import peak_rss_mb
from ffedge.runtime.preprocess import normalize
from ffedge.runtime.modes import DEFAULT_MODE, check_mode
from ffedge.runtime.session import Runtime

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
    mode: str = DEFAULT_MODE
    seed: int = 0
    data_dir: str | None = None
    resize: bool = False
    threads: int | None = None
    download: bool = True  # a standard dataset's missing files may be downloaded

    def validate(self) -> None:
        """Every option checked before any work (one line naming the option)."""
        for name in ("epochs", "batch_size", "max_examples", "eval_examples"):
            check_int(getattr(self, name), f"--{name.replace('_', '-')}", minimum=1)
        check_int(self.head_epochs, "--head-epochs", minimum=0)
        check_int(self.seed, "--seed", minimum=0)
        check_float(self.lr, "--lr", minimum=0, strict_min=True)
        check_float(self.anchor, "--anchor", minimum=0, maximum=1, strict_max=True)  # 1 would undo every step
        check_threads(self.threads)
        if not isinstance(self.replay, bool):
            raise FFEdgeError(f"replay must be True or False, got {self.replay!r}")
        check_mode(self.mode)


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
    ds = load_for_bundle(b, cfg.data, cfg.data_dir, cfg.resize, download=cfg.download)
    if [str(k) for k in ds.classes] != [str(k) for k in b.classes]:
        raise FFEdgeError(
            f"{cfg.data}: classes {', '.join(map(str, ds.classes[:12]))} do not match the bundle's {', '.join(map(str, b.classes[:12]))}"
        )
    k = len(b.classes)
    if len(ds.y_train) < 2 * k:
        raise FFEdgeError(
            f"{cfg.data}: {len(ds.y_train)} training examples are too few (need at least {2 * k}, two per class)"
        )
    if len(ds.y_test) == 0:
        raise FFEdgeError(f"{cfg.data}: no held-out examples to measure the fine-tuning on")
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.permutation(len(ds.y_train))[: cfg.max_examples])
    return (
        ds.x_train[pick].copy(),
        ds.y_train[pick].copy(),
        ds.x_test[: cfg.eval_examples].copy(),
        ds.y_test[: cfg.eval_examples].copy(),
    )


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

    def features(self, x_encoded: np.ndarray, which: list[int], grid: int = 1) -> list[np.ndarray]:
        """The head features of layers ``which``: their activities (before pooling) averaged over a
        ``grid`` x ``grid`` grid (:func:`ffedge.ff.head_pool`; the bundle's layer files output it so)."""
        out: dict[int, np.ndarray] = {}
        cur = x_encoded
        for i in range(max(which) + 1):
            if i in self.layers:
                h, cur, _, _ = self.layers[i].forward(cur)
                out[i] = head_pool(h, grid)
            else:
                cur, out[i] = self.sessions[i].run([NEXT, FEATURE], {INPUT: cur})
        return [out[i] for i in which]

    def train_batch(
        self, x_pos: np.ndarray, x_neg: np.ndarray, opts: dict[int, Adam], objective: dict[str, Any]
    ) -> list[float]:
        """One FF step on every trainable layer (each on its own input: layer-local); returns their losses."""
        n = len(x_pos)
        cur = np.concatenate([x_pos, x_neg])
        losses = []
        for i in range(max(self.layers) + 1):
            if i in self.layers:
                loss, _, _ = ff_step(
                    self.layers[i],
                    opts[i],
                    cur[:n],
                    cur[n:],
                    objective.get("loss", DEFAULT_LOSS),
                    float(objective.get("alpha", DEFAULT_ALPHA)),
                    float(objective.get("threshold", DEFAULT_THRESHOLD)),
                )
                losses.append(loss)
                if self.anchor:
                    for p, p0 in zip(self.layers[i].params, self.start[i]):
                        p -= self.anchor * (p - p0)
                if i < max(self.layers):
                    cur = self.layers[i].forward(cur)[1]
            else:
                cur = self.sessions[i].run([NEXT], {INPUT: cur})[0]
        return losses


def _write_candidates(
    b: Bundle, net: HybridNet, head: SoftmaxHead | None, master: dict[str, np.ndarray], tmp: Path
) -> dict[str, Path]:
    """Patched copies of the changed files (layer files, the whole-net graphs, head.onnx, master.npz) in ``tmp``."""
    files: dict[str, Path] = {}
    fused_values: dict[str, np.ndarray] = {}
    for i, layer in net.layers.items():
        q = layer.quantized()
        entry = b.layers[i]
        name = Path(entry.file).name
        patch_initializers(b.file(entry.file), tmp / name, q)
        files[name] = tmp / name
        fused_values.update({fused_name(i, k): v for k, v in q.items()})
        master[master_key(i, MASTER_WEIGHT)], master[master_key(i, MASTER_BIAS)] = layer.weight, layer.bias
    head_values = {HEAD_W: head.weight, HEAD_B: head.bias} if head is not None and b.head else {}
    # The whole-net graphs carry every layer's weights under the same names; the top-k and head graphs also the
    # head's. The head graph stops at the last head layer: it lacks the layers after it.
    for graph, values, partial in (
        (b.manifest.fused, fused_values, False),
        (b.manifest.shared, fused_values, False),
        (b.manifest.topk, {**fused_values, **head_values}, False),
        (b.manifest.head_net, {**fused_values, **head_values}, True),
        (b.head, head_values, False),
    ):
        if graph and values:
            name = Path(graph.file).name
            patch_initializers(b.file(graph.file), tmp / name, values, present_only=partial)
            files[name] = tmp / name
    if head is not None and b.head:
        master[MASTER_HEAD_WEIGHT], master[MASTER_HEAD_BIAS] = head.weight, head.bias
    name = Path(b.manifest.master.file).name
    with open(tmp / name, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in master.items()})
    files[name] = tmp / name
    return files


def _check_out(out: Path, src: Path) -> Path:
    """Up front: ``out`` does not exist, lies outside the bundle, and a writable folder above it (returned) can hold it."""
    if os.path.lexists(out):
        raise FFEdgeError(f"{out} already exists: choose another --out (fine-tuning makes a new bundle folder there)")
    here = Path(os.path.abspath(out))
    if Path(os.path.realpath(here)).is_relative_to(os.path.realpath(src)):
        raise FFEdgeError(f"--out {out} lies inside the bundle {src}: choose a folder outside it")
    ancestor = here.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FFEdgeError(f"cannot create {out}: {ancestor} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ffedge-probe-", dir=ancestor))
    except OSError as e:
        raise FFEdgeError(f"cannot create {out}: cannot write in {ancestor} ({os_reason(e)})") from None
    return ancestor


def _temp_root() -> str:
    try:
        return tempfile.gettempdir()
    except OSError:  # no usable temporary directory at all
        return os.environ.get("TMPDIR") or "the temporary directory"


def _check_space(folder: Path | str, needed: int, hint: str = "") -> None:
    """Refuse up front when ``folder``'s disk cannot hold ``needed`` bytes (where the OS tells)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise FFEdgeError(
            f"{folder}: {free / 1e6:.1f} MB free, this fine-tune writes about {needed / 1e6:.1f} MB there{hint}; nothing was done"
        )


def _check_temp(needed: int) -> None:
    """Up front: the temporary directory can take a folder and ``needed`` bytes."""
    root = _temp_root()
    try:
        os.rmdir(tempfile.mkdtemp(prefix="ffedge-finetune-"))
    except OSError as e:
        raise FFEdgeError(
            f"cannot make a temporary folder in {root}: {os_reason(e)} (set TMPDIR to a writable folder)"
        ) from None
    _check_space(root, needed, " (set TMPDIR to a folder with room)")


@contextlib.contextmanager
def _temp_folder(version: int) -> Iterator[Path]:
    """A private temporary folder for the candidate files, removed on every exit path."""
    try:
        tmp = tempfile.TemporaryDirectory(prefix="ffedge-finetune-")
    except OSError as e:
        raise FFEdgeError(
            f"cannot make a temporary folder in {_temp_root()}: {os_reason(e)}; the bundle is unchanged (still version {version})"
        ) from None
    with tmp as name:
        try:
            yield Path(name)
        except OSError as e:
            if not (e.filename and Path(os.path.abspath(e.filename)).is_relative_to(name)):
                raise
            raise FFEdgeError(
                f"cannot write temporary files in {_temp_root()}: {os_reason(e)}; the bundle is unchanged (still version {version}) "
                "(set TMPDIR to a folder with room)"
            ) from None


def _replaced_bytes(b: Bundle, which: list[int]) -> int:
    """Bytes of the files a fine-tune of layers ``which`` writes (the same sizes as the files they replace)."""
    m = b.manifest
    names = {b.layers[i].file for i in which} | {
        m.fused.file if m.fused else None,
        m.shared.file if m.shared else None,
        m.topk.file if m.topk else None,
        m.head_net.file if m.head_net else None,
        b.head.file if b.head else None,
        m.master.file if m.master else None,
    }
    return sum(b.file(n).stat().st_size for n in names if n)


def _hold_lock(b: Bundle, cleanup: contextlib.ExitStack) -> None:
    """Hold the bundle's update lock until ``cleanup`` closes; refuse if the bundle changed since it was opened."""
    version = bundle_version(b.manifest)
    try:
        cleanup.enter_context(update_lock(b.path))
    except OSError as e:
        raise FFEdgeError(
            f"{b.path}: cannot lock the bundle for the update: {os_reason(e)}; the bundle is unchanged (still version {version})"
        ) from None
    now = bundle_version(read_manifest(b.path))
    if now != version:
        raise FFEdgeError(
            f"{b.path}: version {now} became current while this fine-tune was starting from version {version}; nothing was done"
        )


def _copy_bundle(src: Path, out: Path, cleanup: contextlib.ExitStack, version: int) -> Path:
    """A copy of the bundle (still at ``version``) in a hidden folder beside ``out``, removed on any failure;
    :func:`_publish` renames it to ``out``."""
    parent = Path(os.path.abspath(out)).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise FFEdgeError(f"cannot create {out}: {os_reason(e)}") from None

    def remove() -> None:  # gone once published
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)

    cleanup.callback(remove)
    try:
        shutil.copytree(src, tmp, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    except OSError as e:
        raise FFEdgeError(f"cannot create {out}: {os_reason(e)}") from None
    now = bundle_version(read_manifest(tmp))
    if now != version:
        raise FFEdgeError(
            f"{src} became version {now} while this fine-tune of version {version} ran: {out} was not written; run it again"
        )
    return tmp


def _publish(tmp: Path, out: Path) -> Path:
    """Rename the finished copy to ``out`` (never over anything that appeared there meanwhile)."""
    if os.path.lexists(out):
        raise FFEdgeError(f"{out} appeared while fine-tuning: nothing was written there; choose another --out")
    try:
        os.rename(tmp, out)
    except OSError as e:
        raise FFEdgeError(f"cannot create {out}: {os_reason(e)}") from None
    fsync_dir(Path(os.path.abspath(out)).parent)
    return out


def finetune(
    bundle: str | Path, cfg: FinetuneConfig, out: str | Path | None = None, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Fine-tune ``bundle`` (in place, or a copy at ``out``) on ``cfg.data``; returns what was measured.

    Options, the bundle (no links), ``out`` and the temporary directory are
    checked before any work. In place, the bundle's update lock is held from
    before the training to the commit: a second fine-tune or a rollback is
    refused meanwhile. Temporary files are removed on every exit path
    (exceptions, KeyboardInterrupt).
    """
    with contextlib.ExitStack() as cleanup:  # the lock and the temporary folders
        return _finetune(Path(bundle), cfg, out, reporter or QuietReporter(), cleanup)


def _train_layers(
    net: HybridNet,
    layers: dict[int, QuantFFLayer],
    b: Bundle,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    cfg: FinetuneConfig,
    rng: np.random.Generator,
    rep: Reporter,
) -> list[float]:
    """The FF epochs of the trainable layers (cosine learning rate, one wrong label per image); the mean loss per epoch."""
    mean, std = b.manifest.input.mean, b.manifest.input.std
    k = len(b.classes)
    opts = {i: Adam(layer.params, lr=cfg.lr) for i, layer in layers.items()}
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
                wrong = wrong_labels(y, k, rng)
                losses.append(
                    net.train_batch(
                        b.encoding.encode(xn, y),
                        b.encoding.encode(xn, wrong),
                        opts,
                        b.manifest.objective.options() if b.manifest.objective else {},
                    )
                )
                step += 1
                advance(len(idx), loss=f"{np.mean(losses[-1]):.3f}")
        history.append(float(np.mean(losses)))
        rep.log(f"epoch {epoch + 1}/{cfg.epochs}  FF loss {history[-1]:.4f}")
    return history


def _fit_head(
    net: HybridNet,
    b: Bundle,
    master: dict[str, np.ndarray],
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    cfg: FinetuneConfig,
    rng: np.random.Generator,
    rep: Reporter,
) -> SoftmaxHead | None:
    """The softmax head refitted on the fine-tuned net's neutral-label features (None without a head or head epochs)."""
    mean, std = b.manifest.input.mean, b.manifest.input.std
    head = None
    if b.head and cfg.head_epochs:
        head = SoftmaxHead.from_master(master)
        hl, grid = list(b.head.layers), b.head.grid_size
        feats = np.concatenate(
            [
                head.features(net.features(b.encoding.neutral(normalize(x_tr[s : s + 64], mean, std)), hl, grid), grid)
                for s in range(0, len(y_tr), 64)
            ]
        )
        with rep.task("softmax head", cfg.head_epochs) as advance:
            for _ in range(cfg.head_epochs):
                perm = rng.permutation(len(y_tr))
                for s in range(0, len(perm), 64):
                    head.train_step(feats[perm[s : s + 64]], y_tr[perm[s : s + 64]])
                advance(1)
    return head


def _finetune(
    bundle: Path, cfg: FinetuneConfig, out: str | Path | None, rep: Reporter, cleanup: contextlib.ExitStack
) -> dict[str, Any]:
    cfg.validate()
    check_no_links(bundle)  # before anything in it is read
    out_disk = _check_out(Path(out), bundle) if out is not None else bundle
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
    base = bundle_version(b.manifest)
    needed = _replaced_bytes(b, which)
    _check_temp(needed)
    _check_space(out_disk, needed + (0 if out is None else b.size_bytes()))
    if out is None:
        _hold_lock(b, cleanup)
    if cfg.replay and b.manifest.replay:
        # Rehearse the stored training examples alongside the new ones: what keeps the old data's accuracy.
        x_old, y_old = _load_replay(b)
        x_tr, y_tr = np.concatenate([x_tr, x_old]), np.concatenate([y_tr, y_old])
    layers = {i: QuantFFLayer.from_master(master, i, b.layers[i].to_dict()) for i in which}
    net = HybridNet(rt, layers, cfg.anchor)
    rep.log(
        f"fine-tuning {b.path} on {cfg.data}: {n_new} examples (+{len(y_tr) - n_new} "
        f"replayed), layers {which} + head, {cfg.epochs} epochs; "
        f"scoring on {len(y_te)} held-out examples"
    )
    before = accuracy(rt, x_te, y_te, cfg.mode)
    rep.log(f"held-out accuracy before: {before:.2%}")
    rng = np.random.default_rng(cfg.seed)
    history = _train_layers(net, layers, b, x_tr, y_tr, cfg, rng, rep)
    head = _fit_head(net, b, master, x_tr, y_tr, cfg, rng, rep)
    with _temp_folder(base) as tmpdir:
        files = _write_candidates(b, net, head, master, tmpdir)
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
            "event": "finetune",
            "data": cfg.data,
            "examples": int(n_new),
            "replayed": int(len(y_tr) - n_new),
            "held_out": int(len(y_te)),
            "layers": which,
            "head": head is not None,
            "epochs": cfg.epochs,
            "mode": cfg.mode,
            "accuracy_before": before,
            "accuracy_after": after,
            "seconds": round(seconds, 1),
            "ff_loss": history,
            "config": asdict(cfg),
        }
        if out is not None:
            target = _copy_bundle(b.path, target, cleanup, base)
        manifest = commit_update(target, files, {"layers": new_layers}, entry, base_version=base)
        if out is not None:
            target = _publish(target, Path(out))
    return {
        "bundle": str(target),
        "version": bundle_version(manifest),
        "examples": int(n_new),
        "replayed": int(len(y_tr) - n_new),
        "held_out": int(len(y_te)),
        "layers": which,
        "accuracy_before": before,
        "accuracy_after": after,
        "ff_loss": history,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
    }
