"""Run a bundle with onnxruntime: classification by goodness over label hypotheses (device side).

No torch here: numpy, onnxruntime and ffedge's own label encodings only.
Three modes:

- ``all``: every image with every label; the label whose hypothesis has the
  highest goodness (summed over the bundle's prediction layers) wins. All B*K
  hypotheses go through each layer session in one call (chunked only above
  ``max_hypotheses``).
- ``head``: one pass with the neutral label; the softmax head decides.
- ``topk``: the head proposes ``k`` labels, goodness decides among them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import onnxruntime as ort

from ffedge.bundle import Bundle, open_bundle
from ffedge.errors import FFEdgeError
from ffedge.preprocess import normalize

MODES = ("all", "head", "topk")


class Prediction(NamedTuple):
    """``labels`` [B] class indices; ``scores`` [B, K]: goodness per label (``all``; ``topk``: -inf
    for labels not tried) or the head's softmax probabilities (``head``)."""

    labels: np.ndarray
    scores: np.ndarray


# onnxruntime moves MaxPool ahead of DequantizeLinear onto uint8 tensors, where its
# kernel is about 8x slower than the float one (measured with ORT 1.32 on x86).
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


def session_options(threads: int | None, spin: bool = True, arena: bool = True) -> ort.SessionOptions:
    """EXTENDED optimization: the level at which onnxruntime fuses QDQ convs into QLinearConv.

    ``spin=False`` stops idle pool threads from busy-waiting: with one pool per layer
    session, spinning pools of finished layers steal the cores of the running one.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not arena:  # lower peak memory, a little slower: buffers are freed instead of pooled
        so.enable_cpu_mem_arena = False
    return so


def make_session(
    path: str | Path,
    threads: int | None = None,
    spin: bool = True,
    providers: Sequence[str] | None = None,
    optimized_path: str | Path | None = None,
    arena: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session as ffedge runs it; a file onnxruntime rejects is a one-line error."""
    so = session_options(threads, spin, arena)
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), so, providers=list(providers or ["CPUExecutionProvider"]),
                                    disabled_optimizers=DISABLED_OPTIMIZERS)
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FFEdgeError(f"{path}: onnxruntime cannot load it: {msg}") from None


def as_pixels(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Check a batch of images against the bundle's (C, H, W) and return uint8 NHWC.

    Accepts [B, H, W, C], or [B, H, W] when C is 1; uint8, or floats holding pixel
    values 0..255. Never resizes: a wrong size is an error.
    """
    c, h, w = shape
    x = np.asarray(images)
    if x.ndim == 3 and c == 1:
        x = x[..., None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
        raise FFEdgeError(
            f"images of shape {list(x.shape[1:]) if x.ndim >= 3 else list(x.shape)} do not fit this bundle, "
            f"which takes {h}x{w} pixels with {c} channel(s) (resize with --resize or ffedge.datasets.load_images)"
        )
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise FFEdgeError(f"images must be numeric pixel arrays, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise FFEdgeError("images contain NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise FFEdgeError(f"pixel values must lie in 0..255, got {x.min():g}..{x.max():g}")
    return np.rint(x).astype(np.uint8)


class Runtime:
    """A loaded bundle: the fused whole-net session (or one session per FF layer), plus the head.

    The per-layer sessions are opened on first use (per-layer timing, parity
    checks, bundles without a fused graph).
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        verify: bool = True,
        max_hypotheses: int = 4096,
        arena: bool = True,
        replaced: dict[str, Path] | None = None,
    ) -> None:
        """``arena=False`` trades a little speed for lower peak memory. ``replaced`` maps file
        names of the bundle to other files to run instead (candidate files of an update,
        evaluated before they are committed; they are not checksum-verified)."""
        self.bundle: Bundle = open_bundle(bundle_dir, verify=verify)
        self.arena = arena
        self.replaced = dict(replaced or {})
        self.encoding = self.bundle.encoding
        self.threads = threads
        self.providers = list(providers) if providers else None
        self.max_hypotheses = max(1, int(max_hypotheses))
        self.n_layers = len(self.bundle.layers)
        head = self.bundle.head
        self.head_layers = [int(i) for i in head["layers"]] if head else []
        self.head_session = self._open(head["file"], spin=False) if head else None
        fused = self.bundle.manifest.get("fused")
        self.fused_session = self._open(fused["file"], spin=True) if fused else None
        self._layer_sessions: list[ort.InferenceSession] | None = None
        self.layer_seconds = [0.0] * self.n_layers

    def _open(self, name: str, spin: bool) -> ort.InferenceSession:
        path = self.replaced.get(Path(name).name, self.bundle.file(name))
        return make_session(path, self.threads, spin, self.providers, arena=self.arena)

    @property
    def layer_sessions(self) -> list[ort.InferenceSession]:
        """One session per FF layer (input ``x``; outputs ``y``, ``goodness``, ``feature``)."""
        if self._layer_sessions is None:
            self._layer_sessions = [self._open(layer["file"], spin=False) for layer in self.bundle.layers]
        return self._layer_sessions

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def num_classes(self) -> int:
        return len(self.bundle.classes)

    def reset_timings(self) -> None:
        self.layer_seconds = [0.0] * self.n_layers

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Pixels -> normalized float32 NCHW, exactly as in training."""
        inp = self.bundle.manifest["input"]
        return normalize(as_pixels(images, self.bundle.input_shape), inp["mean"], inp["std"])

    def forward(self, x_encoded: np.ndarray, feature_layers: Sequence[int] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
        """Encoded inputs [N, C', H, W] -> goodness summed over the prediction layers [N], and the requested features."""
        if self.fused_session is None:
            g, feats = self.run_layers(x_encoded, feature_layers)
            return g[self.bundle.predict_layers].sum(0), feats
        names = ["goodness"] + [f"feature{i}" for i in feature_layers]
        outs = self.fused_session.run(names, {"x": x_encoded})
        return outs[0], outs[1:]

    def run_layers(self, x_encoded: np.ndarray, feature_layers: Sequence[int] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
        """The layer files one by one: goodness of every layer [L, N] and the requested features.

        Accumulates ``layer_seconds``.
        """
        gs, feats = [], []
        cur = x_encoded
        for i, sess in enumerate(self.layer_sessions):
            t = time.perf_counter()
            cur, g, f = sess.run(None, {"x": cur})
            self.layer_seconds[i] += time.perf_counter() - t
            gs.append(g)
            if i in feature_layers:
                feats.append(f)
        return np.stack(gs), feats

    def goodness(self, x_norm: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Goodness (summed over the prediction layers) of every label hypothesis: [B, K'] (K' = len(classes) or K)."""
        k = self.num_classes if classes is None else len(classes)
        per = max(1, self.max_hypotheses // max(k, 1))
        out = [self.forward(self.encoding.encode_all(x_norm[s : s + per], classes))[0].reshape(-1, k) for s in range(0, len(x_norm), per)]
        return np.concatenate(out) if out else np.zeros((0, k), np.float32)

    def head_probs(self, x_norm: np.ndarray) -> np.ndarray:
        """Softmax head on one neutral-label pass: [B, K]."""
        if self.head_session is None:
            raise FFEdgeError(f"{self.bundle.path} has no softmax head: use --mode all")
        outs = []
        for s in range(0, len(x_norm), self.max_hypotheses):
            _, feats = self.forward(self.encoding.neutral(x_norm[s : s + self.max_hypotheses]), self.head_layers)
            outs.append(self.head_session.run(None, {f"f{i}": f for i, f in zip(self.head_layers, feats)})[0])
        return np.concatenate(outs) if outs else np.zeros((0, self.num_classes), np.float32)

    def predict(self, images: np.ndarray, mode: str = "all", k: int = 3) -> Prediction:
        """Classify a batch of images (pixels, NHWC or NHW)."""
        if mode not in MODES:
            raise FFEdgeError(f"unknown mode '{mode}': choose one of {', '.join(MODES)}")
        x = self.normalize(images)
        return self.predict_normalized(x, mode, k)

    def predict_normalized(self, x: np.ndarray, mode: str = "all", k: int = 3) -> Prediction:
        """Like :meth:`predict` for inputs already normalized (float32 NCHW)."""
        if mode == "all":
            g = self.goodness(x)
            return Prediction(g.argmax(1), g)
        probs = self.head_probs(x)
        if mode == "head":
            return Prediction(probs.argmax(1), probs)
        if mode != "topk":
            raise FFEdgeError(f"unknown mode '{mode}': choose one of {', '.join(MODES)}")
        k = int(k)
        if not 1 <= k <= self.num_classes:
            raise FFEdgeError(f"--k must be between 1 and {self.num_classes}")
        cand = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # [B, k]
        scores = np.full(probs.shape, -np.inf, dtype=np.float32)
        if len(x):
            reps = np.repeat(x, k, axis=0)
            g = np.concatenate(
                [
                    self.forward(self.encoding.encode(reps[s : s + self.max_hypotheses], cand.reshape(-1)[s : s + self.max_hypotheses]))[0]
                    for s in range(0, len(reps), self.max_hypotheses)
                ]
            ).reshape(len(x), k)
            np.put_along_axis(scores, cand, g, axis=1)
        return Prediction(scores.argmax(1), scores)
