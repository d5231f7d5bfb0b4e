"""Layer-local Forward-Forward training of an :class:`FFNet`, quantization-aware.

Every layer has its own optimizer and its own loss on (positive, negative)
goodness. With ``local="layer"`` a layer sees a detached input (pure FF). With
``local="pair"`` the loss of layer l+1 also updates layer l (overlapping pairs),
and no gradient ever crosses more than two layers: the gradient that reaches
layer l's input is pushed into layer l-1 and stops there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from ffedge.datasets import Dataset, load_dataset
from ffedge.errors import FFEdgeError
from ffedge.labels import ENCODING_NAMES, LabelEncoding, make_encoding
from ffedge.preprocess import compute_normalization, normalize
from ffedge.train.losses import LOSS_NAMES, ff_loss
from ffedge.train.model import DEFAULT_LAYERS, FFNet, QuantConfig, goodness, parse_layers

LOCAL_MODES = ("pair", "layer")
NEGATIVE_MODES = ("random", "hard")


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run dir."""

    dataset: str = "mnist-5k"
    labels: str = "fourier"
    label_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    layers: str = DEFAULT_LAYERS
    quant: bool = True
    bits: int = 8
    weight_bits: int | None = None
    loss: str = "symba"
    alpha: float = 4.0
    threshold: float = 1.0
    local: str = "pair"
    negatives: str = "random"
    predict_layers: list[int] | None = None
    head_epochs: int = 40
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    eval_samples: int = 100
    data_dir: str | None = None

    def validate(self) -> None:
        """Reject bad options with one clear message, before anything is written."""
        if self.labels not in ENCODING_NAMES:
            raise FFEdgeError(f"unknown label encoding '{self.labels}': choose one of {', '.join(ENCODING_NAMES)}")
        if self.loss not in LOSS_NAMES:
            raise FFEdgeError(f"unknown loss '{self.loss}': choose one of {', '.join(LOSS_NAMES)}")
        if self.local not in LOCAL_MODES:
            raise FFEdgeError(f"unknown --local '{self.local}': choose one of {', '.join(LOCAL_MODES)}")
        if self.negatives not in NEGATIVE_MODES:
            raise FFEdgeError(f"unknown --negatives '{self.negatives}': choose one of {', '.join(NEGATIVE_MODES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise FFEdgeError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise FFEdgeError("--lr must be a positive number")
        if self.head_epochs < 0 or self.eval_samples < 0:
            raise FFEdgeError("--head-epochs and --eval-samples must be >= 0")
        self.quant_config()
        n = len(parse_layers(self.layers))
        for i in self.prediction_layers(n):
            if not 0 <= i < n:
                raise FFEdgeError(f"--predict-layers: layer {i} does not exist (the net has layers 0..{n - 1})")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise FFEdgeError("--device cuda: no CUDA device is available to torch here")

    def quant_config(self) -> QuantConfig:
        """Weights default to min(bits, 7) bits; see :class:`QuantConfig` for why 7."""
        wb = self.weight_bits if self.weight_bits is not None else min(self.bits, 7)
        return QuantConfig(self.quant, self.bits, weight_bits=wb)

    def prediction_layers(self, n_layers: int) -> list[int]:
        """Layers whose goodness is summed for prediction (default: the last one)."""
        return list(self.predict_layers) if self.predict_layers else [n_layers - 1]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        if "weight_bits" not in d:  # runs made before weight_bits existed used one width for all
            d = {**d, "weight_bits": d.get("bits", 8)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class PreparedData:
    """Normalized float tensors and the label encoding for one dataset."""

    dataset: Dataset
    mean: list[float]
    std: list[float]
    encoding: LabelEncoding
    x_train: np.ndarray  # float32 NCHW, normalized
    x_test: np.ndarray


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load the dataset, compute normalization on the training split, build the label encoding."""
    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    mean, std = compute_normalization(ds.x_train)
    enc = make_encoding(cfg.labels, ds.num_classes, ds.image_shape, **cfg.label_params)
    return PreparedData(ds, mean, std, enc, normalize(ds.x_train, mean, std), normalize(ds.x_test, mean, std))


def build_model(cfg: TrainConfig, in_channels: int, image_hw: tuple[int, int], num_classes: int) -> FFNet:
    """The network described by ``cfg`` (fresh weights)."""
    return FFNet(in_channels, image_hw, num_classes, parse_layers(cfg.layers), cfg.quant_config())


class LocalTrainer:
    """One optimizer per layer; :meth:`step` does one FF update of every layer on a batch."""

    def __init__(self, net: FFNet, cfg: TrainConfig) -> None:
        self.net, self.cfg = net, cfg
        self.optimizers = [torch.optim.Adam(layer.parameters(), lr=cfg.lr) for layer in net.layers]

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def step(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> list[tuple[float, float, float]]:
        """Update every layer once; returns (loss, mean g_pos, mean g_neg) per layer."""
        cfg, pair = self.cfg, self.cfg.local == "pair"
        b = x_pos.shape[0]
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        inp = torch.cat([x_pos, x_neg], 0)
        prev_out: torch.Tensor | None = None
        stats = []
        for idx, layer in enumerate(self.net.layers):
            leaf = inp.detach().requires_grad_(pair and idx > 0)
            h, out = layer(leaf)
            g = goodness(h)
            loss = ff_loss(cfg.loss, g[:b], g[b:], cfg.alpha, cfg.threshold)
            # Pair mode keeps this layer's graph until the next layer pushes its gradient in.
            loss.backward(retain_graph=pair)
            if pair and prev_out is not None:
                torch.autograd.backward(prev_out, grad_tensors=leaf.grad)
            stats.append((loss.item(), g[:b].mean().item(), g[b:].mean().item()))
            # In layer mode keep only the detached output: the pooling's graph would hold this layer's
            # activity alive while the next layer runs; one graph at a time is what makes FF light.
            prev_out, inp = (out, out) if pair else (None, out.detach())
            del h, g, loss, out
        for opt in self.optimizers:
            opt.step()
        return stats


@torch.no_grad()
def goodness_matrix(
    net: FFNet, enc: LabelEncoding, x: np.ndarray, device: str = "cpu", batch_images: int = 100
) -> np.ndarray:
    """Goodness of every layer for every label hypothesis: [L, N, K] (inference mode)."""
    was_training = net.training
    net.eval()
    k = enc.num_classes
    out = []
    for s in range(0, len(x), batch_images):
        xb = x[s : s + batch_images]
        xa = torch.from_numpy(enc.encode_all(xb)).to(device)
        g = net.goodness_all(xa).view(len(net.layers), len(xb), k)
        out.append(g.cpu().numpy())
    net.train(was_training)
    return np.concatenate(out, axis=1) if out else np.zeros((len(net.layers), 0, k), np.float32)


def goodness_accuracy(g: np.ndarray, y: np.ndarray, layers: list[int]) -> float:
    """Accuracy of argmax over labels of goodness summed over ``layers``; g is [L, N, K]."""
    return float((g[layers].sum(0).argmax(1) == y).mean()) if len(y) else float("nan")


def hard_negatives(net: FFNet, enc: LabelEncoding, xb: np.ndarray, yb: np.ndarray, layers: list[int], device: str) -> np.ndarray:
    """The wrong label the net currently likes most, per image."""
    g = goodness_matrix(net, enc, xb, device, batch_images=len(xb))[layers].sum(0)
    g[np.arange(len(yb)), yb] = -np.inf
    return g.argmax(1)


@torch.no_grad()
def neutral_features(net: FFNet, enc: LabelEncoding, x: np.ndarray, device: str = "cpu", batch: int = 500) -> torch.Tensor:
    """Head input features of neutral-label passes, [N, F]."""
    was_training = net.training
    net.eval()
    feats = [
        net.head_features(net.forward_layers(torch.from_numpy(enc.neutral(x[s : s + batch])).to(device)), net.head_layers)
        for s in range(0, len(x), batch)
    ]
    net.train(was_training)
    return torch.cat(feats)


def fit_head(net: FFNet, f_train: torch.Tensor, y_train: np.ndarray, epochs: int, seed: int) -> None:
    """Train the linear softmax head on frozen neutral-label features (its own local objective)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.from_numpy(y_train).to(f_train.device)
    opt = torch.optim.Adam(net.head.parameters(), lr=1e-2)
    n = len(y)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(f_train.device)
        for s in range(0, n, 256):
            idx = perm[s : s + 256]
            loss = torch.nn.functional.cross_entropy(net.head(f_train[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.no_grad()
def head_accuracy(net: FFNet, f: torch.Tensor, y: np.ndarray) -> float:
    return float((net.head(f).argmax(1).cpu().numpy() == y).mean()) if len(y) else float("nan")


def eval_subset(n_test: int, n: int, seed: int) -> np.ndarray:
    """A fixed random subset of the held-out split for per-epoch accuracy (all of it when n=0)."""
    if n == 0 or n >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng([seed, 7]).choice(n_test, n, replace=False))
