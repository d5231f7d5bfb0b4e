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


def session_options(threads: int | None) -> ort.SessionOptions:
    """EXTENDED optimization: the level at which onnxruntime fuses QDQ convs into QLinearConv."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return so


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
    """A loaded bundle: one onnxruntime session per FF layer, plus the head."""

    def __init__(
        self,
        bundle_dir: str,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        verify: bool = True,
        max_hypotheses: int = 4096,
    ) -> None:
        self.bundle: Bundle = open_bundle(bundle_dir, verify=verify)
        self.encoding = self.bundle.encoding
        self.max_hypotheses = max(1, int(max_hypotheses))
        so = session_options(threads)
        prov = list(providers) if providers else ["CPUExecutionProvider"]
        self.sessions = [self._session(layer["file"], so, prov) for layer in self.bundle.layers]
        head = self.bundle.head
        self.head_session = self._session(head["file"], so, prov) if head else None
        self.head_layers = [int(i) for i in head["layers"]] if head else []
        self.layer_seconds = [0.0] * len(self.sessions)

    def _session(self, name: str, so: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(self.bundle.file(name)), so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad models
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FFEdgeError(f"{self.bundle.file(name)}: onnxruntime cannot load it: {msg}") from None

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def num_classes(self) -> int:
        return len(self.bundle.classes)

    def reset_timings(self) -> None:
        self.layer_seconds = [0.0] * len(self.sessions)

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Pixels -> normalized float32 NCHW, exactly as in training."""
        inp = self.bundle.manifest["input"]
        return normalize(as_pixels(images, self.bundle.input_shape), inp["mean"], inp["std"])

    def run_layers(self, x_encoded: np.ndarray, feature_layers: Sequence[int] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
        """Encoded inputs [N, C', H, W] through every layer: goodness [L, N] and the requested features."""
        gs, feats = [], []
        cur = x_encoded
        for i, sess in enumerate(self.sessions):
            t = time.perf_counter()
            cur, g, f = sess.run(None, {"x": cur})
            self.layer_seconds[i] += time.perf_counter() - t
            gs.append(g)
            if i in feature_layers:
                feats.append(f)
        return np.stack(gs), feats

    def goodness(self, x_norm: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Goodness of every layer for every label hypothesis: [L, B, K'] (K' = len(classes) or K)."""
        k = self.num_classes if classes is None else len(classes)
        per = max(1, self.max_hypotheses // max(k, 1))
        out = [
            self.run_layers(self.encoding.encode_all(x_norm[s : s + per], classes))[0].reshape(len(self.sessions), -1, k)
            for s in range(0, len(x_norm), per)
        ]
        return np.concatenate(out, axis=1) if out else np.zeros((len(self.sessions), 0, k), np.float32)

    def head_probs(self, x_norm: np.ndarray) -> np.ndarray:
        """Softmax head on one neutral-label pass: [B, K]."""
        if self.head_session is None:
            raise FFEdgeError(f"{self.bundle.path} has no softmax head: use --mode all")
        outs = []
        for s in range(0, len(x_norm), self.max_hypotheses):
            _, feats = self.run_layers(self.encoding.neutral(x_norm[s : s + self.max_hypotheses]), self.head_layers)
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
        pl = self.bundle.predict_layers
        if mode == "all":
            g = self.goodness(x)[pl].sum(0)
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
                    self.run_layers(self.encoding.encode(reps[s : s + self.max_hypotheses], cand.reshape(-1)[s : s + self.max_hypotheses]))[0]
                    for s in range(0, len(reps), self.max_hypotheses)
                ],
                axis=1,
            )[pl].sum(0).reshape(len(x), k)
            np.put_along_axis(scores, cand, g, axis=1)
        return Prediction(scores.argmax(1), scores)
