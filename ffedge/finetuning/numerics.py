"""Numeric core of on-device Forward-Forward fine-tuning, in numpy only (device side).

No torch or onnx here. The building blocks mirror the Brevitas training graph
(``ffedge.train.model.FFConvLayer`` in eval mode) so that a layer fine-tuned
here and re-quantized with :meth:`QuantFFLayer.quantized` gives the int8 /
int32 tensors the exporter would have written:

- input:  z = (x - mean) / sqrt(var + eps) (frozen BatchNorm statistics; layers with
  ``norm="rms"``: z = x / (sqrt(mean over C, H, W of x^2) + eps) per sample), then
  signed fake-quant ``clip(round(z / s_in), -2^(b-1), 2^(b-1) - 1) * s_in``
  (Brevitas ``Int8ActPerTensorFloat``: ``narrow_range=False``);
- weights: ``s_w = max|w| / (2^(wb-1) - 1)`` from the current float weights,
  ``clip(round(w / s_w), -(2^(wb-1) - 1), 2^(wb-1) - 1) * s_w`` (``narrow_range=True``);
- bias: ``round(b / (s_in * s_w)) * (s_in * s_w)`` (``Int32Bias``);
- output: ``clip(round(relu(a) / s_out), 0, 2^b - 1) * s_out`` (``Uint8ActPerTensorFloat``).

Rounding is half-to-even everywhere (``np.rint``), as Brevitas' ``RoundSte``
(``torch.round``) and onnxruntime's QuantizeLinear. Gradients use straight-through
estimators as Brevitas does: rounding is the identity; the output quantizer passes
the gradient where ``a > 0`` (ReLU) and ``round(a / s_out) <= 2^b - 1`` (Brevitas'
``TensorClamp`` keeps values equal to the bound); the weight and bias scales are
treated as constants.

The Forward-Forward definitions (goodness, the loss registry, the head-feature
normalization, the objective's defaults) are :mod:`ffedge.ff`'s, shared with training.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from numpy.typing import DTypeLike

from ffedge.bundle.manifest import NORMS
from ffedge.bundle.names import (  # noqa: F401  (master_keys: part of this module's API)
    CONV_B_Q,
    CONV_B_SCALE,
    CONV_W_Q,
    CONV_W_SCALE,
    MASTER_BIAS,
    MASTER_BN_EPS,
    MASTER_BN_MEAN,
    MASTER_BN_VAR,
    MASTER_HEAD_BIAS,
    MASTER_HEAD_WEIGHT,
    MASTER_RMS_EPS,
    MASTER_WEIGHT,
    master_keys,
    master_prefix,
)
from ffedge.errors import FFEdgeError
from ffedge.ff import DEFAULT_ALPHA, DEFAULT_LOSS, DEFAULT_THRESHOLD, ff_loss, goodness, head_pool, normalize_features

# Upper bound on the im2col buffer of one chunk of the batch (the batch is processed in chunks).
COLS_CHUNK_BYTES = 4 << 20
SCALE_MIN = 1e-10  # Brevitas' scaling_min_val for the weight scale
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ---------------------------------------------------------------------------- quantizers


def int_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Integer range of a quantizer, as Brevitas' ``min_int`` / ``max_int``."""
    if signed:
        hi = 2 ** (bits - 1) - 1
        return (-hi if narrow else -hi - 1), hi
    return 0, 2**bits - 1 - (1 if narrow else 0)


def quant_int(x: np.ndarray, scale: np.floating, lo: int, hi: int) -> np.ndarray:
    """``clip(round(x / scale), lo, hi)`` with round half to even, in ``x``'s float dtype."""
    return np.clip(np.rint(x / scale), lo, hi)


def fake_quant(x: np.ndarray, scale: np.floating, lo: int, hi: int) -> np.ndarray:
    """Quantize and dequantize: ``quant_int(x, scale, lo, hi) * scale``."""
    return quant_int(x, scale, lo, hi) * scale


def weight_scale(w: np.ndarray, bits: int) -> np.floating:
    """Per-tensor abs-max scale of narrow-range signed ``bits`` weights: ``max|w| / (2^(bits-1) - 1)``."""
    _, hi = int_range(bits, signed=True, narrow=True)
    m = np.maximum(np.abs(w).max(), w.dtype.type(SCALE_MIN))
    return m / w.dtype.type(hi)


# ---------------------------------------------------------------------------- convolution


def _chunk_size(x: np.ndarray, kernel: int, pad: int, chunk_bytes: int) -> int:
    """Samples per chunk so that one chunk's im2col buffer stays below ``chunk_bytes``."""
    _, c, h, w = x.shape
    per_sample = c * kernel * kernel * (h + 2 * pad - kernel + 1) * (w + 2 * pad - kernel + 1) * x.itemsize
    return max(1, int(chunk_bytes // max(per_sample, 1)))


def im2col(x: np.ndarray, kernel: int, pad: int) -> np.ndarray:
    """[N, C, H, W] -> patches [C*k*k, N*Ho*Wo] (stride 1, zero padding).

    Rows are ordered (c, ky, kx) like a flattened [O, C, k, k] weight, columns
    (n, y, x); one GEMM with the weight then convolves the whole chunk.
    """
    c = x.shape[1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kernel, kernel), axis=(2, 3))  # N, C, Ho, Wo, k, k
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kernel * kernel, -1)


def _check_conv(x: np.ndarray, kernel: int) -> None:
    if x.ndim != 4:
        raise FFEdgeError(f"conv2d expects NCHW input, got shape {list(x.shape)}")
    if kernel < 1 or kernel % 2 == 0:
        raise FFEdgeError(f"conv2d supports odd square kernels, got {kernel}")


def conv2d_forward(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int, chunk_bytes: int = COLS_CHUNK_BYTES
) -> np.ndarray:
    """Stride-1 convolution, NCHW: x [N, C, H, W], w [O, C, k, k], b [O] -> [N, O, Ho, Wo].

    Works through the batch in chunks whose im2col buffer stays under ``chunk_bytes``;
    computes in the common dtype of x and w (float32 stays float32).
    """
    o, c, k, k2 = w.shape
    _check_conv(x, k)
    if k != k2 or x.shape[1] != c:
        raise FFEdgeError(f"conv2d: weight {list(w.shape)} does not fit input {list(x.shape)}")
    n, _, h, wd = x.shape
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    dtype = np.result_type(x, w)
    w2 = w.reshape(o, -1).astype(dtype, copy=False)
    out = np.empty((n, o, ho, wo), dtype=dtype)
    step = _chunk_size(x, k, pad, chunk_bytes)
    for s in range(0, n, step):
        xs = x[s : s + step].astype(dtype, copy=False)
        y = w2 @ im2col(xs, k, pad)  # O, n*Ho*Wo
        out[s : s + step] = y.reshape(o, xs.shape[0], ho, wo).transpose(1, 0, 2, 3)
    if b is not None:
        out += b.astype(dtype, copy=False).reshape(1, o, 1, 1)
    return out


def conv2d_backward(
    x: np.ndarray, dy: np.ndarray, kernel: int, pad: int, chunk_bytes: int = COLS_CHUNK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of :func:`conv2d_forward` w.r.t. weight and bias, given dLoss/dy [N, O, Ho, Wo].

    Returns (dw [O, C, k, k], db [O]); no gradient w.r.t. the (frozen) input.
    """
    _check_conv(x, kernel)
    n, c = x.shape[:2]
    o = dy.shape[1]
    if dy.ndim != 4 or dy.shape[0] != n:
        raise FFEdgeError(f"conv2d_backward: gradient {list(dy.shape)} does not fit input {list(x.shape)}")
    dtype = np.result_type(x, dy)
    dw = np.zeros((o, c * kernel * kernel), dtype=dtype)
    step = _chunk_size(x, kernel, pad, chunk_bytes)
    for s in range(0, n, step):
        cols = im2col(x[s : s + step].astype(dtype, copy=False), kernel, pad)  # CKK, n*P
        d = dy[s : s + step].astype(dtype, copy=False).transpose(1, 0, 2, 3).reshape(o, -1)  # O, n*P
        dw += d @ cols.T
    db = dy.sum(axis=(0, 2, 3), dtype=dtype)
    return dw.reshape(o, c, kernel, kernel), db


def maxpool2x2(h: np.ndarray) -> np.ndarray:
    """2x2 max-pool with stride 2 (floor: an odd last row/column is dropped, as torch and ONNX)."""
    n, c, hh, ww = h.shape
    h2, w2 = hh // 2, ww // 2
    return h[:, :, : 2 * h2, : 2 * w2].reshape(n, c, h2, 2, w2, 2).max(axis=(3, 5))


# ---------------------------------------------------------------------------- optimizer


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` to 0 over ``total`` steps."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class Adam:
    """Adam as ``torch.optim.Adam`` (no weight decay); updates the given arrays in place."""

    def __init__(
        self,
        params: Sequence[np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.t = 0
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """One update with ``grads`` (same order and shapes as ``params``)."""
        if len(grads) != len(self.params):
            raise FFEdgeError(f"Adam: {len(grads)} gradients for {len(self.params)} parameters")
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1.0 - b1**self.t)
        bc2_sqrt = np.sqrt(1.0 - b2**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            g = np.asarray(g, dtype=p.dtype)
            m += (1.0 - b1) * (g - m)
            v *= b2
            v += (1.0 - b2) * g * g
            denom = np.sqrt(v) / p.dtype.type(bc2_sqrt) + p.dtype.type(self.eps)
            p -= p.dtype.type(step_size) * m / denom


# ---------------------------------------------------------------------------- FF layer


def _scalar(v: np.ndarray | float) -> float:
    """A 0-d or one-element array (``master.npz`` stores BatchNorm eps as shape [1]) as a float."""
    a = np.asarray(v).reshape(-1)
    if a.size != 1:
        raise FFEdgeError(f"expected a single value, got shape {list(np.shape(v))}")
    return float(a[0])


class LayerCache(NamedTuple):
    """What :meth:`QuantFFLayer.grads` needs from a forward pass."""

    zq: np.ndarray  # quantized conv input [N, C, H, W]
    h: np.ndarray  # quantized activity before pooling [N, O, H, W]
    pass_mask: np.ndarray  # where the output quantizer passes the gradient (bool, like h)


class QuantFFLayer:
    """One FF conv layer in fake-quant training mode: frozen normalization and activation scales, trainable w and b.

    ``norm="batch"``: eval-mode BatchNorm with ``bn_mean``, ``bn_var``, ``bn_eps``; ``norm="rms"``: the
    parameter-free per-sample rms norm, ``bn_mean`` and ``bn_var`` are None and ``bn_eps`` is its eps.
    """

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray,
        bn_mean: np.ndarray | None,
        bn_var: np.ndarray | None,
        bn_eps: float,
        input_scale: float,
        output_scale: float,
        weight_bits: int = 7,
        act_bits: int = 8,
        pool: bool = False,
        dtype: DTypeLike = np.float32,
        norm: str = "batch",
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.weight = np.array(weight, dtype=self.dtype)
        self.bias = np.array(bias, dtype=self.dtype).reshape(-1)
        o, c, k, k2 = self.weight.shape
        if k != k2 or k % 2 == 0 or self.bias.shape != (o,):
            raise FFEdgeError(f"QuantFFLayer: bad weight {list(self.weight.shape)} / bias {list(self.bias.shape)}")
        if norm not in NORMS:
            raise FFEdgeError(f"QuantFFLayer: unknown norm {norm!r} (this ffedge knows {', '.join(NORMS)})")
        self.norm = norm
        t = self.dtype.type
        self.bn_eps = float(bn_eps)
        if norm == "rms":
            self.bn_mean = self.bn_var = None
        else:
            if np.shape(bn_mean) != (c,) or np.shape(bn_var) != (c,):
                raise FFEdgeError(f"QuantFFLayer: BatchNorm statistics must have {c} channels")
            # Eval-mode BatchNorm as torch: z = x * inv + shift, inv = 1 / sqrt(var + eps).
            self.bn_mean = np.asarray(bn_mean, dtype=self.dtype)
            self.bn_var = np.asarray(bn_var, dtype=self.dtype)
            inv = t(1) / np.sqrt(self.bn_var + t(bn_eps))
            self._bn_mul = inv.reshape(1, c, 1, 1)
            self._bn_add = (-self.bn_mean * inv).reshape(1, c, 1, 1)
        self.input_scale, self.output_scale = t(input_scale), t(output_scale)
        self.weight_bits, self.act_bits, self.pool = int(weight_bits), int(act_bits), bool(pool)
        self.in_range = int_range(self.act_bits, signed=True)
        self.out_range = int_range(self.act_bits, signed=False)
        self.w_range = int_range(self.weight_bits, signed=True, narrow=True)

    @classmethod
    def from_master(
        cls, master: Mapping[str, np.ndarray], index: int, layer: Mapping[str, Any], dtype: DTypeLike = np.float32
    ) -> "QuantFFLayer":
        """Layer ``index`` from ``master.npz`` arrays and its manifest entry (``manifest["layers"][index]``)."""
        p = master_prefix(index)
        q = layer.get("quant")
        if q is None:
            raise FFEdgeError(f"layer {index} has no quantization facts: fine-tuning needs an int8 bundle")
        norm = layer.get("norm") or "batch"  # absent in bundles made before rms norms existed
        if norm not in NORMS:
            raise FFEdgeError(f"layer {index} has norm {norm!r}: this ffedge fine-tunes {', '.join(NORMS)}")
        missing = [p + k for k in master_keys(norm) if p + k not in master]
        if missing:
            raise FFEdgeError(f"the master weights lack {', '.join(missing)}")
        if norm == "rms":
            stats: tuple[Any, Any, float] = (None, None, _scalar(master[p + MASTER_RMS_EPS]))
        else:
            stats = (master[p + MASTER_BN_MEAN], master[p + MASTER_BN_VAR], _scalar(master[p + MASTER_BN_EPS]))
        return cls(
            master[p + MASTER_WEIGHT],
            master[p + MASTER_BIAS],
            *stats,
            q["input_scale"],
            q["output_scale"],
            q["weight_bits"],
            q["act_bits"],
            bool(layer.get("pool", False)),
            dtype,
            norm=norm,
        )

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[2])

    @property
    def pad(self) -> int:
        return self.kernel // 2

    @property
    def params(self) -> list[np.ndarray]:
        """The trainable arrays [weight, bias]; :class:`Adam` updates them in place (do not rebind them)."""
        return [self.weight, self.bias]

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """The layer's normalization: frozen BatchNorm, or the per-sample rms norm."""
        if x.ndim != 4 or x.shape[1] != self.weight.shape[1]:
            raise FFEdgeError(f"layer input must be [N, {self.weight.shape[1]}, H, W], got {list(x.shape)}")
        x = x.astype(self.dtype, copy=False)
        if self.norm == "rms":
            rms = np.sqrt(np.square(x).mean(axis=(1, 2, 3), keepdims=True))
            return x / (rms + self.dtype.type(self.bn_eps))
        return x * self._bn_mul + self._bn_add

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """The normalization, then the signed input fake-quant."""
        return fake_quant(self.normalize(x), self.input_scale, *self.in_range)

    def weight_scale(self) -> np.floating:
        return weight_scale(self.weight, self.weight_bits)

    def quant_weight(self) -> np.ndarray:
        """Fake-quantized weights with the scale of the current float weights."""
        return fake_quant(self.weight, self.weight_scale(), *self.w_range)

    def quant_bias(self) -> np.ndarray:
        """Fake-quantized bias at the accumulator scale ``s_in * s_w``."""
        s = self.input_scale * self.weight_scale()
        return fake_quant(self.bias, s, INT32_MIN, INT32_MAX)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, LayerCache]:
        """x [N, C, H, W] -> (h: activity before pooling, y: next layer's input, g: goodness [N], cache)."""
        zq = self.quantize_input(x)
        a = conv2d_forward(zq, self.quant_weight(), self.quant_bias(), self.pad)
        hi = self.out_range[1]
        q = np.rint(np.maximum(a, 0) / self.output_scale)  # = quant_int(relu(a), s_out, 0, hi) before the clip
        mask = (a > 0) & (q <= hi)  # straight-through region of ReLU + output quantizer
        h = np.minimum(q, hi, out=q) * self.output_scale
        y = maxpool2x2(h) if self.pool else h
        return h, y, goodness(h), LayerCache(zq, h, mask)

    def grads(self, cache: LayerCache, dg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dLoss/dw, dLoss/db) from dLoss/dg [N] (straight-through estimators, scales constant)."""
        h = cache.h
        dg = np.asarray(dg, dtype=self.dtype).reshape(-1, 1, 1, 1)
        if dg.shape[0] != h.shape[0]:
            raise FFEdgeError(f"grads: {dg.shape[0]} goodness gradients for a batch of {h.shape[0]}")
        per = self.dtype.type(2.0 / (h[0].size))
        da = np.where(cache.pass_mask, dg * per * h, self.dtype.type(0))
        return conv2d_backward(cache.zq, da, self.kernel, self.pad)

    def quantized(self) -> dict[str, np.ndarray]:
        """The exported tensors for the current float weights (float32 arithmetic, as Brevitas):
        ``conv_w_q`` int8, ``conv_w_scale`` float32 scalar, ``conv_b_q`` int32, ``conv_b_scale`` float32 scalar."""
        w = self.weight.astype(np.float32)
        s_w = weight_scale(w, self.weight_bits)
        s_b = np.float32(self.input_scale) * s_w
        return {
            CONV_W_Q: quant_int(w, s_w, *self.w_range).astype(np.int8),
            CONV_W_SCALE: np.array(s_w, dtype=np.float32),
            # Round in float32 as Brevitas; clip in float64, where the int32 bounds are exact.
            CONV_B_Q: np.clip(
                np.rint(self.bias.astype(np.float32) / s_b).astype(np.float64), INT32_MIN, INT32_MAX
            ).astype(np.int32),
            CONV_B_SCALE: np.array(s_b, dtype=np.float32),
        }

    def master_arrays(self, index: int) -> dict[str, np.ndarray]:
        """This layer's ``master.npz`` entries (float32), for writing the fine-tuned master back."""
        p = master_prefix(index)
        arrays = {p + MASTER_WEIGHT: self.weight.astype(np.float32), p + MASTER_BIAS: self.bias.astype(np.float32)}
        if self.norm == "rms":
            arrays[p + MASTER_RMS_EPS] = np.array(
                [self.bn_eps], dtype=np.float32
            )  # shape [1], as write_master stores it
        else:
            assert self.bn_mean is not None and self.bn_var is not None
            arrays.update(
                {
                    p + MASTER_BN_MEAN: self.bn_mean.astype(np.float32),
                    p + MASTER_BN_VAR: self.bn_var.astype(np.float32),
                    p + MASTER_BN_EPS: np.array(
                        [self.bn_eps], dtype=np.float32
                    ),  # shape [1], as write_master stores it
                }
            )
        return arrays


# ---------------------------------------------------------------------------- FF step


def ff_step(
    layer: QuantFFLayer,
    opt: Adam,
    x_pos: np.ndarray,
    x_neg: np.ndarray,
    loss: str = DEFAULT_LOSS,
    alpha: float = DEFAULT_ALPHA,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[float, float, float]:
    """One FF update of ``layer``: positives and negatives in one forward, the registered loss
    (:func:`ffedge.ff.ff_loss`), grads, Adam step.

    ``opt`` must hold ``layer.params``. Returns (loss, mean g_pos, mean g_neg) before the update.
    """
    if x_pos.shape != x_neg.shape:
        raise FFEdgeError(f"ff_step: positive {list(x_pos.shape)} and negative {list(x_neg.shape)} batches differ")
    b = x_pos.shape[0]
    _, _, g, cache = layer.forward(np.concatenate([x_pos, x_neg], axis=0))
    value, dp, dn = ff_loss(loss, g[:b], g[b:], alpha, threshold)
    opt.step(layer.grads(cache, np.concatenate([dp, dn])))
    return value, float(g[:b].mean()), float(g[b:].mean())


# ---------------------------------------------------------------------------- softmax head


class SoftmaxHead:
    """Linear softmax head on grid-pooled, per-cell normalized per-layer features (:meth:`features`):
    W [K, F], b [K]; trained with Adam."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, lr: float = 1e-2) -> None:
        self.weight = np.array(weight, dtype=np.float32)
        self.bias = np.array(bias, dtype=np.float32).reshape(-1)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise FFEdgeError(f"SoftmaxHead: bad weight {list(self.weight.shape)} / bias {list(self.bias.shape)}")
        self.opt = Adam([self.weight, self.bias], lr=lr)

    @classmethod
    def from_master(cls, master: Mapping[str, np.ndarray], lr: float = 1e-2) -> "SoftmaxHead":
        if MASTER_HEAD_WEIGHT not in master or MASTER_HEAD_BIAS not in master:
            raise FFEdgeError(f"the master weights lack {MASTER_HEAD_WEIGHT} / {MASTER_HEAD_BIAS}")
        return cls(master[MASTER_HEAD_WEIGHT], master[MASTER_HEAD_BIAS], lr)

    @staticmethod
    def features(acts: Sequence[np.ndarray], grid: int = 1) -> np.ndarray:
        """Head input [N, F] from the head layers' activities, in head-layer order.

        Each is [N, C, H, W] (activity before pooling; pooled here to the head's ``grid`` x ``grid``
        cells, :func:`ffedge.ff.head_pool`) or [N, C * grid * grid] (already pooled: a layer
        session's ``feature`` output). Each cell's C-vector is normalized as
        :func:`ffedge.ff.normalize_features` (divided by its L2 norm + ``HEAD_NORM_EPS``), then all are
        concatenated.
        """
        feats = []
        for a in acts:
            f = np.asarray(a, dtype=np.float32)
            f = head_pool(f, grid) if f.ndim == 4 else f
            if f.ndim != 2 or f.shape[1] % (grid * grid):
                raise FFEdgeError(
                    f"head features must be [N, C, H, W] or [N, C * {grid * grid}], got shape {list(f.shape)}"
                )
            feats.append(normalize_features(f, grid * grid))
        return np.concatenate(feats, axis=1)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        return feats.astype(np.float32, copy=False) @ self.weight.T + self.bias

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        """Softmax probabilities [N, K]."""
        z = self.logits(feats)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def loss_and_grads(self, feats: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Mean cross-entropy and its gradients (dW, db)."""
        y = np.asarray(labels).reshape(-1).astype(np.int64)
        n, k = feats.shape[0], self.weight.shape[0]
        if y.shape[0] != n or n == 0 or y.min() < 0 or y.max() >= k:
            raise FFEdgeError(f"head training needs {n} labels in 0..{k - 1}")
        z = self.logits(feats)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = float(-logp[np.arange(n), y].mean(dtype=np.float64))
        d = np.exp(logp)
        d[np.arange(n), y] -= 1.0
        d /= np.float32(n)
        return loss, d.T @ feats.astype(np.float32, copy=False), d.sum(axis=0)

    def train_step(self, feats: np.ndarray, labels: np.ndarray) -> float:
        """One Adam step on the cross-entropy of a batch; returns the loss before the step."""
        loss, dw, db = self.loss_and_grads(feats, labels)
        self.opt.step([dw, db])
        return loss
