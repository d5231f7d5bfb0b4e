"""Forward-Forward convolutional network built from Brevitas quantized layers.

Each :class:`FFConvLayer` is one FF unit with its own objective:

    norm -> QuantIdentity (int) -> QuantConv2d (int weights)
    -> QuantReLU (unsigned int) -> [MaxPool2d]

with ``norm`` one of :data:`NORMS`: ``batch`` (BatchNorm2d(affine=False), the
default) or ``rms`` (:class:`RMSNorm`, parameter-free per-sample length
normalization as in Hinton's FF and loeweX/Forward-Forward).
Its *goodness* is the mean of squared activations after the ReLU and before
pooling (:func:`goodness`, the torch twin of :func:`ffedge.ff.goodness`). The normalization at the start of the next layer removes the
magnitude information, so a layer cannot just hand its goodness on.
With ``quant=False`` the same layers are plain float torch modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ffedge.errors import FFEdgeError
from ffedge.bundle.manifest import NORMS
from ffedge.ff import HEAD_NORM_EPS, MAX_HEAD_GRID, pool_matrix


@dataclass(frozen=True)
class LayerSpec:
    """One FF conv layer: output channels, kernel size and whether a 2x2 max-pool follows."""

    channels: int
    kernel: int
    pool: bool = False

    def to_str(self) -> str:
        return f"{self.channels}x{self.kernel}" + ("p" if self.pool else "")


DEFAULT_LAYERS = "16x5p,64x5p,128x3,128x3"
# eps of the rms norm, as loeweX/Forward-Forward; the exporter writes it to master.npz (``layer{i}.rms_eps``).
RMS_EPS = 1e-8


def parse_layers(text: str) -> list[LayerSpec]:
    """Parse ``"32x5p,64x5p,128x3"``: channels x kernel, ``p`` = max-pool 2x2 after the layer."""
    specs = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        pool = part.endswith("p")
        body = part[:-1] if pool else part
        try:
            ch, k = (int(v) for v in body.split("x"))
        except ValueError:
            raise FFEdgeError(
                f"bad layer '{part}' in --layers: use CHANNELSxKERNEL[p], e.g. {DEFAULT_LAYERS}"
            ) from None
        if ch < 1 or k < 1 or k % 2 == 0:
            raise FFEdgeError(f"bad layer '{part}' in --layers: channels >= 1 and an odd kernel size")
        specs.append(LayerSpec(ch, k, pool))
    if not specs:
        raise FFEdgeError("--layers is empty")
    return specs


def layers_to_str(specs: list[LayerSpec]) -> str:
    return ",".join(s.to_str() for s in specs)


@dataclass(frozen=True)
class QuantConfig:
    """How layers are quantized, or float when ``enabled`` is false.

    ``bits`` is the activation bit width; weights use ``weight_bits`` (default 7,
    still stored as int8). x86 CPUs without VNNI multiply uint8 x int8 pairs with
    a 16-bit saturating add (pmaddubsw): with full-range int8 weights onnxruntime's
    integer convolutions then saturate and drift from the trained model by tens of
    quantization steps. 7-bit weights cannot saturate (onnxruntime's own quantizer
    calls this ``reduce_range``).
    """

    enabled: bool = True
    bits: int = 8
    stats_steps: int = 30
    weight_bits: int = 7

    def __post_init__(self) -> None:
        if self.enabled and not 2 <= self.bits <= 8:
            raise FFEdgeError(f"--bits must be between 2 and 8 (got {self.bits})")
        if self.enabled and not 2 <= self.weight_bits <= 8:
            raise FFEdgeError(f"--weight-bits must be between 2 and 8 (got {self.weight_bits})")


class RMSNorm(nn.Module):
    """``x / (sqrt(mean over C, H, W of x^2) + eps)``, per sample; no parameters, no running statistics.

    Unlike BatchNorm in training mode it never mixes the statistics of the samples
    of a batch (positive and negative data stay apart); train and eval compute the same.
    The ONNX export is ``Mul -> ReduceMean -> Sqrt -> Add -> Div`` (opset 13).
    """

    def __init__(self, eps: float = RMS_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / ((x * x).mean(dim=(1, 2, 3), keepdim=True).sqrt() + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def make_norm(norm: str, in_channels: int) -> nn.Module:
    """The normalization at the start of a layer: ``batch`` or ``rms`` (see :data:`NORMS`)."""
    if norm == "batch":
        return nn.BatchNorm2d(in_channels, affine=False)
    if norm == "rms":
        return RMSNorm()
    raise FFEdgeError(f"unknown --norm {norm!r}: choose one of {', '.join(NORMS)}")


class FFConvLayer(nn.Module):
    """One Forward-Forward layer; ``forward`` returns (activity before pooling, output for the next layer)."""

    def __init__(self, in_channels: int, spec: LayerSpec, quant: QuantConfig, norm: str = "batch") -> None:
        super().__init__()
        self.spec = spec
        self.norm_kind = norm
        self.norm = make_norm(norm, in_channels)
        pad = spec.kernel // 2
        if quant.enabled:
            from brevitas.nn import QuantConv2d, QuantIdentity, QuantReLU
            from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat, Int32Bias

            # Activation scales start from statistics of the first batches, then are learned.
            # Brevitas' default collects a percentile over 300 steps, which costs more than
            # the convolutions on a CPU; a few dozen steps give the same starting scale.
            stats = {"collect_stats_steps": quant.stats_steps}
            self.in_quant = QuantIdentity(
                act_quant=Int8ActPerTensorFloat, bit_width=quant.bits, return_quant_tensor=True, **stats
            )
            self.conv = QuantConv2d(
                in_channels,
                spec.channels,
                spec.kernel,
                padding=pad,
                weight_quant=Int8WeightPerTensorFloat,
                weight_bit_width=quant.weight_bits,
                bias_quant=Int32Bias,
                return_quant_tensor=False,
            )
            self.act = QuantReLU(bit_width=quant.bits, return_quant_tensor=False, **stats)
        else:
            self.in_quant = nn.Identity()
            self.conv = nn.Conv2d(in_channels, spec.channels, spec.kernel, padding=pad)
            self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if spec.pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self.conv(self.in_quant(self.norm(x))))
        return h, self.pool(h)


def goodness(h: torch.Tensor) -> torch.Tensor:
    """Mean of squared activations over C, H, W per sample: [B, C, H, W] -> [B].

    The torch twin of :func:`ffedge.ff.goodness`: training, the exported layer graphs
    (``Pow -> ReduceMean``) and the torch benchmark all compute it here.
    """
    return h.pow(2).mean(dim=(1, 2, 3))


def head_pool(h: torch.Tensor, grid: int = 1) -> torch.Tensor:
    """A layer's head feature: activity [B, C, H, W] averaged per cell of a grid x grid grid, [B, C*grid*grid].

    The torch twin of :func:`ffedge.ff.head_pool`: ``grid`` 1 is the spatial mean (``ReduceMean`` in the
    exported graph, as in bundles made before the grid existed); a larger grid multiplies by the constant
    :func:`ffedge.ff.pool_matrix` (one ``MatMul``; exports for any H, W, unlike adaptive pooling).
    """
    if grid == 1:
        return h.mean(dim=(2, 3))
    b, c, hh, ww = h.shape
    p = torch.from_numpy(pool_matrix(hh, ww, grid)).to(device=h.device, dtype=h.dtype)
    return torch.matmul(h.reshape(b, c, hh * ww), p).reshape(b, c * grid * grid)


def normalize_features(f: torch.Tensor, cells: int = 1) -> torch.Tensor:
    """Head features [B, C * cells], each cell's C-vector divided by its L2 norm + ``HEAD_NORM_EPS``.

    The torch twin of :func:`ffedge.ff.normalize_features` (training's head and the exported head graph).
    """
    if cells == 1:
        return f / (f.norm(dim=1, keepdim=True) + HEAD_NORM_EPS)
    g = f.reshape(f.shape[0], -1, cells)
    return (g / (g.norm(dim=1, keepdim=True) + HEAD_NORM_EPS)).reshape(f.shape[0], -1)


def default_head_layers(n_layers: int) -> list[int]:
    """The layers the softmax head reads unless told otherwise: every layer but the last (one layer: that one).

    Not the last: mode ``topk``'s neutral pass then stops a layer early (on the default net the last layer is 44% of
    a hypothesis' multiply-adds), and on mnist-5k's default run the head on layers 0-2 scored 97.4% against 96.9%
    on layers 1-3, and on a 6-epoch CIFAR-10 run 50.1% against 50.4% (benchmarks/results/head_layers-*.md).
    """
    return list(range(n_layers - 1)) if n_layers > 1 else [0]


class FFNet(nn.Module):
    """A stack of FF conv layers plus a linear softmax head on neutral-label activities.

    The head reads each head layer's activity pooled to a ``head_grid`` x ``head_grid`` grid
    (:func:`head_pool`), each cell normalized (:func:`normalize_features`), all concatenated.
    """

    def __init__(
        self,
        in_channels: int,
        image_hw: tuple[int, int],
        num_classes: int,
        layers: list[LayerSpec],
        quant: QuantConfig,
        head_layers: list[int] | None = None,
        norm: str = "batch",
        head_grid: int = 1,
    ) -> None:
        super().__init__()
        self.layer_specs = list(layers)
        self.quant = quant
        self.in_channels = in_channels
        self.norm = norm
        self.image_hw = tuple(image_hw)
        self.layers = nn.ModuleList()
        ch = in_channels
        h, w = image_hw
        self.out_shapes: list[tuple[int, int, int]] = []
        self.act_shapes: list[tuple[int, int, int]] = []  # before pooling
        for spec in layers:
            self.layers.append(FFConvLayer(ch, spec, quant, norm))
            ch = spec.channels
            self.act_shapes.append((ch, h, w))
            if spec.pool:
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise FFEdgeError("too many pooling layers for this image size")
            self.out_shapes.append((ch, h, w))
        # The head reads the normalized outputs of these layers.
        self.head_layers = head_layers if head_layers is not None else default_head_layers(len(layers))
        for i in self.head_layers:
            _, hh, ww = self.pre_pool_shape(i)
            if not 1 <= head_grid <= min(hh, ww, MAX_HEAD_GRID):
                raise FFEdgeError(
                    f"--head-grid {head_grid} does not fit layer {i}'s {hh}x{ww} activity (1..{min(hh, ww, MAX_HEAD_GRID)})"
                )
        self.head_grid = head_grid
        feat = sum(self.out_shapes[i][0] for i in self.head_layers) * head_grid * head_grid
        self.head = nn.Linear(feat, num_classes)

    def pre_pool_shape(self, i: int) -> tuple[int, int, int]:
        """Layer ``i``'s activity before its pooling, (C, H, W): what goodness and the head feature read."""
        return self.act_shapes[i]

    def forward_layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activities (before pooling) of every layer, inference style (no gradient blocking)."""
        hs = []
        for layer in self.layers:
            h, x = layer(x)
            hs.append(h)
        return hs

    def goodness_all(self, x: torch.Tensor) -> torch.Tensor:
        """Per-layer goodness, [L, B]."""
        return torch.stack([goodness(h) for h in self.forward_layers(x)])

    @staticmethod
    def head_features(hs: list[torch.Tensor], which: list[int], grid: int = 1) -> torch.Tensor:
        """The head's input: the activities of layers ``which`` pooled to a grid (:func:`head_pool`), each
        cell normalized (:func:`normalize_features`), concatenated."""
        return torch.cat([normalize_features(head_pool(hs[i], grid), grid * grid) for i in which], dim=1)

    def head_logits(self, x_neutral: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_features(self.forward_layers(x_neutral), self.head_layers, self.head_grid))


def float_copy(net: FFNet) -> FFNet:
    """The same network as plain float torch modules, with the trained float weights.

    For a quantized net these are the master weights before fake quantization, and
    each quantizer becomes a clamp to its learned range (the float limit of the
    trained int8 net: without the clamps its goodness, a mean of squares, differs
    and accuracy drops; 84% vs 96% on the default mnist-5k run). This is the fp32
    model the exporter's ``--fp32`` writes and the torch baseline of benchmarks.
    """
    ff = FFNet(
        net.in_channels,
        net.image_hw,
        net.head.out_features,
        net.layer_specs,
        QuantConfig(enabled=False),
        net.head_layers,
        norm=net.norm,
        head_grid=net.head_grid,
    )
    own = ff.state_dict()
    src = net.state_dict()
    missing = [k for k in own if k not in src]
    if missing:
        raise FFEdgeError(f"cannot make a float copy: the model lacks {', '.join(missing[:3])}")
    ff.load_state_dict({k: src[k].detach().clone() for k in own})
    if net.quant.enabled:
        with torch.no_grad():
            for q, f in zip(net.layers, ff.layers):
                s_in, b_in = float(q.in_quant.act_quant.scale()), int(q.in_quant.act_quant.bit_width())
                s_out, b_out = float(q.act.act_quant.scale()), int(q.act.act_quant.bit_width())
                f.in_quant = nn.Hardtanh(-(2 ** (b_in - 1)) * s_in, (2 ** (b_in - 1) - 1) * s_in)
                f.act = nn.Hardtanh(0.0, (2**b_out - 1) * s_out)
    return ff.eval()
