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
from typing import Any, Callable

import numpy as np
import torch

from ffedge.datasets import Dataset, load_dataset
from ffedge.errors import FFEdgeError, quoted
from ffedge.ff import DEFAULT_ALPHA, DEFAULT_LOSS, DEFAULT_THRESHOLD, MAX_HEAD_GRID, ConfusionMemory
from ffedge.ff.defaults import LOCAL_MODES, NEGATIVE_MODES, TRAIN_PRECISIONS as PRECISIONS
from ffedge.labels import ENCODING_NAMES, LabelEncoding, make_encoding
from ffedge.options import check_float, check_int, check_threads
from ffedge.runtime.preprocess import compute_normalization, normalize
from ffedge.train.data_parallel import DataParallel
from ffedge.train.losses import ff_loss, torch_loss
from ffedge.train.model import (
    DEFAULT_LAYERS,
    NORMS,
    FFNet,
    QuantConfig,
    default_head_layers,
    goodness,
    parse_layers,
)

MAX_SEED = 2**63 - 1
MAX_CHANNELS = 4096  # per layer; far more only exhausts memory while the model is built
MAX_KERNEL = 31
MAX_SHIFT = 64  # pixels of random translation; far beyond any useful value
MAX_HEAD_AUGMENT = 64  # augmented copies of the training set for the head
# Far beyond any useful value; larger ones overflow float32 inside the optimizer or the loss.
MAX_LR, MAX_ALPHA, MAX_THRESHOLD = 1e3, 1e4, 1e6


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run dir."""

    dataset: str = "mnist-5k"
    labels: str = "fourier"
    label_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 50
    batch_size: int = 64
    lr: float = 2e-3
    layers: str = DEFAULT_LAYERS
    quant: bool = True
    bits: int = 8
    weight_bits: int | None = None
    loss: str = DEFAULT_LOSS
    alpha: float = DEFAULT_ALPHA
    threshold: float = DEFAULT_THRESHOLD
    local: str = "pair"
    negatives: str = "random"
    wrong_labels: int = 1
    predict_layers: list[int] | None = None
    head_layers: list[int] | None = None
    head_epochs: int = 40
    head_grid: int = 2
    head_augment: int = 4
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    eval_samples: int = 100
    data_dir: str | None = None
    qat_epochs: int | None = 1
    shift: int = 2
    rotate: float = 12.0
    scale: float = 0.1
    flip: bool = False
    norm: str = "batch"
    precision: str = "auto"
    preset: str | None = None  # the ffedge.train.presets entry the values started from (a record; not re-applied)

    def check_types(self, source: str = "") -> None:
        """Every field has its declared type (``config.json`` may have been edited); ``source`` names where from."""
        where = f"{source}: " if source else ""
        for f in fields(self):
            value = getattr(self, f.name)
            if not _type_ok(value, str(f.type)):
                raise FFEdgeError(
                    f"{where}training option '{f.name}' must be {_TYPE_WORDS.get(str(f.type), f.type)}, got {quoted(value)}"
                )

    def validate(self) -> None:
        """Reject bad options with one clear message, before anything is written or loaded."""
        self.check_types()
        if self.labels not in ENCODING_NAMES:
            raise FFEdgeError(
                f"unknown label encoding {quoted(self.labels)}: choose one of {', '.join(ENCODING_NAMES)}"
            )
        torch_loss(self.loss)  # a name of the loss registry (ffedge.ff.losses) with a torch twin
        if self.local not in LOCAL_MODES:
            raise FFEdgeError(f"unknown --local {quoted(self.local)}: choose one of {', '.join(LOCAL_MODES)}")
        if self.norm not in NORMS:
            raise FFEdgeError(f"unknown --norm {quoted(self.norm)}: choose one of {', '.join(NORMS)}")
        if self.precision not in PRECISIONS:
            raise FFEdgeError(f"unknown --precision {quoted(self.precision)}: choose one of {', '.join(PRECISIONS)}")
        if self.negatives not in NEGATIVE_MODES:
            raise FFEdgeError(
                f"unknown --negatives {quoted(self.negatives)}: choose one of {', '.join(NEGATIVE_MODES)}"
            )
        check_int(self.epochs, "--epochs", 1)
        check_int(self.batch_size, "--batch-size", 1)
        check_int(self.head_epochs, "--head-epochs", 0)
        check_int(self.head_grid, "--head-grid", 1, MAX_HEAD_GRID)
        check_int(self.head_augment, "--head-augment", 0, MAX_HEAD_AUGMENT)
        check_int(self.eval_samples, "--eval-samples", 0)
        check_int(self.shift, "--shift", 0, MAX_SHIFT)
        check_float(self.rotate, "--rotate", 0.0, 180.0)
        check_float(self.scale, "--scale", 0.0, 0.9)
        check_int(self.wrong_labels, "--wrong-labels", 1)
        if self.negatives in ("hard", "confused") and self.wrong_labels != 1:
            raise FFEdgeError(
                f"--negatives {self.negatives} picks one wrong label per image: use it with --wrong-labels 1"
            )
        if self.qat_epochs is not None:
            check_int(self.qat_epochs, "--qat-epochs", 1 if self.quant else 0, self.epochs)
        check_int(self.seed, "--seed", 0, MAX_SEED)
        check_float(self.lr, "--lr", 0.0, MAX_LR, strict_min=True)
        check_float(self.alpha, "--alpha", 0.0, MAX_ALPHA, strict_min=True)
        check_float(self.threshold, "--threshold", 0.0, MAX_THRESHOLD)
        check_threads(self.threads)
        self.quant_config()
        specs = parse_layers(self.layers)
        for spec in specs:
            if spec.channels > MAX_CHANNELS or spec.kernel > MAX_KERNEL:
                raise FFEdgeError(
                    f"bad layer {quoted(spec.to_str())} in --layers: at most {MAX_CHANNELS} channels and a kernel of {MAX_KERNEL}"
                )
        for option, which in (
            ("--predict-layers", self.prediction_layers(len(specs))),
            ("--head-layers", self.feature_layers(len(specs))),
        ):
            for i in which:
                if not 0 <= i < len(specs):
                    raise FFEdgeError(f"{option}: layer {i} does not exist (the net has layers 0..{len(specs) - 1})")
            if len(set(which)) != len(which):
                raise FFEdgeError(f"{option} names a layer twice: {quoted(which)}")
        check_device(self.device)

    def quant_config(self, enabled: bool | None = None) -> QuantConfig:
        """Weights default to min(bits, 7) bits; see :class:`QuantConfig` for why 7.

        ``enabled=False`` gives the float config of the same net (the float phase before QAT).
        """
        wb = self.weight_bits if self.weight_bits is not None else min(self.bits, 7)
        return QuantConfig(self.quant if enabled is None else enabled, self.bits, weight_bits=wb)

    def float_precision(self) -> str:
        """The arithmetic of the float phase: ``fp32``, or ``bf16`` autocast (``auto``: bf16 where the CPU
        computes bf16 natively, see :func:`cpu_has_native_bf16`).

        bf16 cuts the convolutions' cost on such CPUs (per training step of the default net, 2 threads:
        2.5x with AMX tiles on a Xeon, 1.6x with AVX512-BF16 on an AMD EPYC) and costs no accuracy here;
        elsewhere oneDNN emulates bf16, which is slower, so ``auto`` keeps fp32.
        QAT (Brevitas fake quantization) always runs in fp32.
        """
        if self.precision != "auto":
            return self.precision
        return "bf16" if torch.device(self.device).type == "cpu" and cpu_has_native_bf16() else "fp32"

    def autocast_bf16(self, quantized: bool) -> bool:
        """Whether a net of this config trains under bf16 autocast: only a float one (``quantized`` false) in bf16."""
        return not quantized and self.float_precision() == "bf16"

    def float_epochs(self) -> int:
        """Epochs trained in float before quantization-aware training starts (0: QAT from the first step)."""
        if not self.quant or self.qat_epochs is None:
            return 0
        return self.epochs - self.qat_epochs

    def prediction_layers(self, n_layers: int) -> list[int]:
        """Layers whose goodness is summed for prediction (default: the last one)."""
        return list(self.predict_layers) if self.predict_layers else [n_layers - 1]

    def feature_layers(self, n_layers: int) -> list[int]:
        """Layers whose neutral-label activities the softmax head reads (default: :func:`default_head_layers`)."""
        return list(self.head_layers) if self.head_layers else default_head_layers(n_layers)

    @classmethod
    def from_dict(cls, d: Any, source: str = "") -> "TrainConfig":
        """The config saved in a run's ``config.json``; wrong types and unknown keys are one clear error."""
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise FFEdgeError(f"{where}'train' must be an object of training options, got {quoted(d)}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise FFEdgeError(
                f"{where}unknown training option {quoted(unknown[0])} (written by another ffedge version?)"
            )
        if "weight_bits" not in d:  # runs made before weight_bits existed used one width for all
            d = {**d, "weight_bits": d.get("bits", 8)}
        # Runs made before the float phase and augmentation existed: QAT from the first step, no augmentation.
        # Runs made before the precision option trained in fp32.
        # Runs made before the head grid existed: the head read the global spatial mean.
        # Runs made before --head-layers existed: the head read every layer but the first.
        if "head_layers" not in d:
            d = {**d, "head_layers": _layers_but_first(d.get("layers", DEFAULT_LAYERS))}
        d = {
            "qat_epochs": None,
            "shift": 0,
            "rotate": 0.0,
            "scale": 0.0,
            "precision": "fp32",
            "head_grid": 1,
            "head_augment": 0,
            **d,
        }
        cfg = cls(**d)
        cfg.check_types(source)
        return cfg


def _layers_but_first(layers: Any) -> list[int] | None:
    """The head layers of a run made before ``--head-layers`` existed (None where ``layers`` does not parse:
    :meth:`TrainConfig.validate` says why)."""
    try:
        n = len(parse_layers(layers))
    except (FFEdgeError, TypeError, AttributeError):
        return None
    return list(range(1, n)) if n > 1 else [0]


def _type_ok(value: Any, annotation: str) -> bool:
    """``value`` fits a field annotation of :class:`TrainConfig` (written as a string)."""
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None" and value is None:
            return True
        if part == "bool" and isinstance(value, bool):
            return True
        if part == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if part == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if part == "str" and isinstance(value, str):
            return True
        if part.startswith("dict[str") and isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return True
        if part == "list[int]" and isinstance(value, list) and all(_type_ok(v, "int") for v in value):
            return True
    return False


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "int | None": "an integer or null",
    "str | None": "a string or null",
    "list[int] | None": "a list of integers or null",
    "dict[str, Any]": "an object",
}


def cpu_has_native_bf16() -> bool:
    """The CPU multiplies bf16 natively (AMX tiles or AVX512-BF16 dot products), which oneDNN uses for bf16
    convolutions; without either it emulates bf16 at more cost than fp32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in probes:
        try:
            if getattr(torch.cpu, name)():
                return True
        except (AttributeError, RuntimeError):  # a torch without the probe
            continue
    return False


def check_device(device: str) -> None:
    """``cpu``, ``cuda``/``cuda:N`` (with that GPU present) or ``mps`` (when available); else one clear error."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise FFEdgeError(f"--device {quoted(device)}: choose cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FFEdgeError(f"--device {device}: no CUDA device is available to torch here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FFEdgeError(
                f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s) (0..{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise FFEdgeError(f"--device {device}: MPS is not available to torch here")
    elif dev.type != "cpu":
        raise FFEdgeError(f"--device {quoted(device)}: choose cpu, cuda, cuda:N or mps")


@dataclass
class PreparedData:
    """Normalized float tensors and the label encoding for one dataset."""

    dataset: Dataset
    mean: list[float]
    std: list[float]
    encoding: LabelEncoding
    x_train: np.ndarray  # float32 NCHW, normalized
    x_test: np.ndarray


def prepare_data(cfg: TrainConfig, encoding: LabelEncoding | None = None, download: bool = True) -> PreparedData:
    """Load the dataset, compute normalization on the training split, build the label encoding.

    ``encoding``: use this one (a resumed run's, as its ``config.json`` records it) instead of
    building it from ``cfg.labels`` and ``cfg.label_params``; it must fit the dataset. ``download``: a standard
    dataset's missing files may be downloaded.
    """
    ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=download)
    if ds.label_gaps:
        raise FFEdgeError(ds.label_gaps)
    mean, std = compute_normalization(ds.x_train)
    if encoding is None:
        enc = make_encoding(cfg.labels, ds.num_classes, ds.image_shape, **cfg.label_params)
    else:
        _check_encoding_fits(encoding, ds)
        enc = encoding
    return PreparedData(ds, mean, std, enc, normalize(ds.x_train, mean, std), normalize(ds.x_test, mean, std))


def _check_encoding_fits(enc: LabelEncoding, ds: Dataset) -> None:
    """A given label encoding is for this dataset's number of classes and image shape."""
    if enc.num_classes != ds.num_classes or tuple(enc.image_shape) != tuple(ds.image_shape):
        raise FFEdgeError(
            f"the label encoding the run recorded in config.json is for {enc.num_classes} classes of {list(enc.image_shape)} images, "
            f"but {ds.name} has {ds.num_classes} classes of {list(ds.image_shape)} images"
        )


def build_model(
    cfg: TrainConfig, in_channels: int, image_hw: tuple[int, int], num_classes: int, quant: bool | None = None
) -> FFNet:
    """The network described by ``cfg`` (fresh weights); ``quant=False`` builds its float version."""
    specs = parse_layers(cfg.layers)
    return FFNet(
        in_channels,
        image_hw,
        num_classes,
        specs,
        cfg.quant_config(quant),
        head_layers=cfg.feature_layers(len(specs)),
        norm=cfg.norm,
        head_grid=cfg.head_grid,
    )


def to_quantized(net: FFNet, cfg: TrainConfig) -> FFNet:
    """The quantization-aware net of ``cfg`` starting from the float ``net``'s weights and statistics.

    The quantizers' scales are then collected from the first QAT steps, as for a net quantized from the start.
    """
    qnet = build_model(cfg, net.in_channels, net.image_hw, net.head.out_features, quant=True)
    own = qnet.state_dict()
    qnet.load_state_dict({k: v for k, v in net.state_dict().items() if k in own}, strict=False)
    return qnet.to(next(net.parameters()).device)


def augment(
    x: np.ndarray,
    shift: int,
    flip: bool,
    fill: np.ndarray,
    rng: np.random.Generator,
    rotate: float = 0.0,
    scale: float = 0.0,
) -> np.ndarray:
    """Random label-preserving distortions of a batch of normalized images, before the label is embedded
    (so the label pattern never moves).

    - ``shift``: translate each image by up to ``shift`` pixels in x and y (uniform);
    - ``rotate`` (degrees), ``scale`` (fraction): a random rotation in [-rotate, rotate] and zoom in
      [1 - scale, 1 + scale]; with either set, the translation is continuous and the image is resampled
      bilinearly, else it moves by whole pixels (exact);
    - ``flip``: mirror half of the images left-right.

    The uncovered border is filled with ``fill`` per channel (the value of a black pixel).
    """
    if flip:
        mirror = rng.random(x.shape[0]) < 0.5
        x = x.copy()
        x[mirror] = x[mirror][..., ::-1]
    b, c, h, w = x.shape
    fill_b = np.asarray(fill, np.float32).reshape(1, c, 1, 1)
    if rotate or scale:
        import torch.nn.functional as F

        theta = np.deg2rad(rng.uniform(-rotate, rotate, b))
        inv = 1.0 / (1.0 + rng.uniform(-scale, scale, b))
        m = np.zeros((b, 2, 3), np.float32)
        m[:, 0, 0], m[:, 0, 1] = np.cos(theta) * inv, -np.sin(theta) * inv
        m[:, 1, 0], m[:, 1, 1] = np.sin(theta) * inv, np.cos(theta) * inv
        m[:, 0, 2], m[:, 1, 2] = rng.uniform(-shift, shift, b) * 2 / w, rng.uniform(-shift, shift, b) * 2 / h
        xt = torch.from_numpy(np.ascontiguousarray(x - fill_b))
        grid = F.affine_grid(torch.from_numpy(m), [b, c, h, w], align_corners=False)
        return (F.grid_sample(xt, grid, align_corners=False, padding_mode="zeros").numpy() + fill_b).astype(np.float32)
    if shift == 0:
        return x
    padded = np.empty((b, c, h + 2 * shift, w + 2 * shift), np.float32)
    padded[...] = fill_b
    padded[:, :, shift : shift + h, shift : shift + w] = x
    oy, ox = rng.integers(0, 2 * shift + 1, b), rng.integers(0, 2 * shift + 1, b)
    return np.stack([padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w] for i in range(b)])


class Diverged(FFEdgeError):
    """A training step produced a loss or goodness that is not finite (NaN or infinite)."""


class LocalTrainer:
    """One optimizer per layer; :meth:`step` does one FF update of every layer on a batch.

    With ``dp`` (data parallel, :mod:`ffedge.train.data_parallel`) the batch given to :meth:`step` is this
    rank's shard of the global batch, and the layers' gradients are summed over the ranks before they step.
    A layer-pipeline stage (:mod:`ffedge.train.layer_pipeline`) trains its own layers with :meth:`layer_pass`
    and :meth:`apply`.
    """

    def __init__(self, net: FFNet, cfg: TrainConfig, dp: DataParallel | None = None) -> None:
        self.net, self.cfg, self.dp = net, cfg, dp
        if dp is not None:
            dp.prepare(net)
        self.optimizers = [self._adam(idx) for idx in range(len(net.layers))]
        # --negatives confused: the class pairs' margins, learnt from the goodness each step computes anyway.
        self.confusion: ConfusionMemory | None = None
        if cfg.negatives == "confused":
            if dp is not None:
                raise FFEdgeError(
                    "--negatives confused learns from the goodness of the whole batch: train it in one process"
                )
            self.confusion = ConfusionMemory(net.head.out_features)
        self.goodness: dict[int, torch.Tensor] = {}  # each layer's goodness of the last step (positives, negatives)
        # bf16 autocast for the float phase only: Brevitas' fake quantization stays in fp32.
        self.bf16 = cfg.autocast_bf16(net.quant.enabled)

    def load_layer(self, idx: int, layer_state: dict[str, Any], optimizer_state: dict[str, Any]) -> list[str]:
        """Load layer ``idx``'s state and its optimizer's (as ``state_dict()`` gave them); returns the keys
        the layer state lacked (a quantizer still collecting its statistics has no scale in it).

        Brevitas replaces an activation quantizer's scale parameter when a state is loaded, so the
        optimizer is made anew for the layer's current parameters before its state goes in: the old one
        would go on updating the replaced scale and never train the new one.
        """
        keys = self.net.layers[idx].load_state_dict(layer_state, strict=False)
        if keys.unexpected_keys:
            raise ValueError(f"unexpected key(s) {', '.join(keys.unexpected_keys[:3])}")
        self.optimizers[idx] = self._adam(idx)
        self.optimizers[idx].load_state_dict(optimizer_state)
        return list(keys.missing_keys)

    def load_optimizers(self, states: list[dict[str, Any]]) -> None:
        """Every layer's optimizer made anew and loaded with ``states``, after the net's state was loaded
        (see :meth:`load_layer` for why anew)."""
        self.optimizers = [self._adam(idx) for idx in range(len(self.net.layers))]
        for opt, sd in zip(self.optimizers, states):
            opt.load_state_dict(sd)

    def _adam(self, idx: int) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.layers[idx].parameters(), lr=self.cfg.lr)

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def shard(self, n: int) -> slice:
        """The part of a global batch of ``n`` images this process trains on (all of it without data parallel)."""
        return slice(None) if self.dp is None else self.dp.shard(n)

    def step(
        self, x_pos: torch.Tensor, x_neg: torch.Tensor, global_batch: int | None = None
    ) -> list[tuple[float, float, float]]:
        """Update every layer once; returns (loss, mean g_pos, mean g_neg) per layer (of the global batch).

        ``global_batch``: images in the whole batch of which ``x_pos`` is this rank's shard (data parallel).
        Raises :class:`Diverged` (before any weight changes) when one of them is not finite.
        """
        b = x_pos.shape[0]
        weight = b / (global_batch or b)  # this shard's share of the global batch's mean loss
        every = range(len(self.net.layers))
        stats, _ = self.layer_pass(torch.cat([x_pos, x_neg], 0), b, every, loss_weight=weight)
        if self.dp is not None:
            stats = self.dp.average_gradients(list(self.net.layers.parameters()), stats, weight)
        self.apply(stats, every)
        if self.dp is not None:
            self.dp.reduce_quant_stats(self.net)
        return stats

    def layer_pass(
        self,
        inp: torch.Tensor,
        b: int,
        layers: range,
        on_output: Callable[[torch.Tensor], None] | None = None,
        on_input_grad: Callable[[torch.Tensor], None] | None = None,
        loss_weight: float = 1.0,
    ) -> tuple[list[tuple[float, float, float]], torch.Tensor | None]:
        """The forward and backward passes of the consecutive ``layers`` on ``inp`` (``b`` positives, then the
        negatives); their gradients are left for :meth:`apply`. Returns (loss, mean g_pos, mean g_neg) per layer
        and, in pair mode, the last layer's output with its graph kept (the next layer's gradient goes in there).
        ``loss_weight`` scales the losses that are differentiated (a data-parallel shard's share).

        A pipeline stage (:mod:`ffedge.train.layer_pipeline`) runs its own layers this way: ``on_output`` gets
        the last layer's detached output as soon as it is computed; in pair mode ``on_input_grad`` gets the
        gradient of the first layer's loss at its input, which single-process training pushes into the layer
        before (only when the first layer is not layer 0; the next layer's backward pass adds to that tensor
        afterwards, so a caller that keeps it copies it).
        """
        cfg, pair = self.cfg, self.cfg.local == "pair"
        for idx in layers:
            self.optimizers[idx].zero_grad(set_to_none=True)
        prev_out: torch.Tensor | None = None
        stats = []
        for idx in layers:
            layer = self.net.layers[idx]
            leaf = inp.detach().requires_grad_(pair and idx > 0)
            with torch.autocast(leaf.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                h, out = layer(leaf)
            if on_output is not None and idx == layers[-1]:
                on_output(out.detach())
            g = goodness(h.float())
            self.goodness[idx] = g.detach()
            loss = ff_loss(cfg.loss, g[:b], g[b:], cfg.alpha, cfg.threshold)
            # Pair mode keeps this layer's graph until the next layer pushes its gradient in.
            (loss if loss_weight == 1.0 else loss * loss_weight).backward(retain_graph=pair)
            if pair and idx > 0:
                if prev_out is not None:
                    torch.autograd.backward(prev_out, grad_tensors=leaf.grad)
                elif on_input_grad is not None:
                    on_input_grad(leaf.grad)
            stats.append((loss.item(), g[:b].mean().item(), g[b:].mean().item()))
            # In layer mode keep only the detached output: the pooling's graph would hold this layer's
            # activity alive while the next layer runs; one graph at a time is what makes FF light.
            prev_out, inp = (out, out) if pair else (None, out.detach())
            del h, g, loss, out
        return stats, prev_out

    def learn_confusion(self, layers: list[int]) -> None:
        """``--negatives confused``: the margins of the last step's negatives (goodness summed over ``layers``, the
        prediction layers: negative minus its positive) go into the confusion memory."""
        if self.confusion is None:
            return
        g = torch.stack([self.goodness[i] for i in layers]).sum(0)
        b = len(g) // 2
        self.confusion.learn((g[b:] - g[:b]).cpu().numpy())

    def apply(self, stats: list[tuple[float, float, float]], layers: range) -> None:
        """The optimizer steps of ``layers`` after :meth:`layer_pass` (``stats``: its result).

        Raises :class:`Diverged` (before any weight changes) when a loss or goodness is not finite.
        """
        for idx, values in zip(layers, stats):
            if not all(math.isfinite(v) for v in values):
                raise Diverged(
                    f"layer {idx} has loss {values[0]}, goodness {values[1]}/{values[2]} (positive/negative)"
                )
        for idx in layers:
            self.optimizers[idx].step()


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


def hard_negatives(
    net: FFNet, enc: LabelEncoding, xb: np.ndarray, yb: np.ndarray, layers: list[int], device: str
) -> np.ndarray:
    """The wrong label the net currently likes most, per image."""
    g = goodness_matrix(net, enc, xb, device, batch_images=len(xb))[layers].sum(0)
    g[np.arange(len(yb)), yb] = -np.inf
    return g.argmax(1)


@torch.no_grad()
def neutral_features(
    net: FFNet, enc: LabelEncoding, x: np.ndarray, device: str = "cpu", batch: int = 500
) -> torch.Tensor:
    """Head input features of neutral-label passes, [N, F]."""
    was_training = net.training
    net.eval()
    feats = [
        net.head_features(
            net.forward_layers(torch.from_numpy(enc.neutral(x[s : s + batch])).to(device)),
            net.head_layers,
            net.head_grid,
        )
        for s in range(0, len(x), batch)
    ]
    net.train(was_training)
    return torch.cat(feats)


def head_training_features(
    net: FFNet, cfg: TrainConfig, data: PreparedData, batch: int = 500
) -> tuple[torch.Tensor, np.ndarray]:
    """The head's training set: neutral-label features of the training images and of ``cfg.head_augment``
    augmented copies of them (the FF training's own distortions: ``shift``, ``rotate``, ``scale``, ``flip``), and
    their labels.

    The copies come from their own random stream (seed ``[cfg.seed, 13]``), so the layers' training is unchanged.
    On mnist-5k's default run 4 copies took the 2x2-grid head from 97.0% to 97.6% (mean of 3 head seeds).
    """
    feats = [neutral_features(net, data.encoding, data.x_train, cfg.device, batch)]
    if cfg.head_augment:
        rng = np.random.default_rng([cfg.seed, 13])
        fill = np.array([-m / s for m, s in zip(data.mean, data.std)], np.float32)  # a black pixel
        for _ in range(cfg.head_augment):
            for s in range(0, len(data.x_train), batch):
                xa = augment(data.x_train[s : s + batch], cfg.shift, cfg.flip, fill, rng, cfg.rotate, cfg.scale)
                feats.append(neutral_features(net, data.encoding, xa.astype(np.float32, copy=False), cfg.device, batch))
    return torch.cat(feats), np.tile(data.dataset.y_train, 1 + cfg.head_augment)


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
