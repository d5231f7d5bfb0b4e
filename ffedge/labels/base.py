"""The label-encoding base class and the checks every encoding shares.

Forward-Forward needs every input to carry a label (true label: positive
data; wrong label: negative data). Hinton's one-hot corner does not reach a
CNN's filters, so ffedge spreads the label over the whole image (Scodellaro
et al. 2025). This package is numpy-only and is the single implementation
used by the trainer and by the on-device runtime: both sides call ``encode``
with the same configuration and get the same bytes.

Images come in as normalized float32 NCHW; encodings come out as C-contiguous
float32 ``[N, out_channels, H, W]``. Pixel ``(i, j)`` is row ``i``, column ``j``.

Each encoding is one module of this package (``fourier``, ``morph``,
``onehot``) holding one :class:`LabelEncoding` subclass decorated with
:func:`ffedge.labels.registry.register`.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import numpy as np

from ffedge.errors import FFEdgeError, quoted

CONFIG_VERSION = 1
# Arrays loaded from a bundle may differ from regenerated ones by float rounding
# of cos() across CPUs; anything larger means a different encoding.
ARRAY_ATOL = 1e-5
# Bound of amplitudes, angles and phases: larger values overflow float32 patterns (inf, then NaN).
MAX_PARAM = 1e6
# Constructor arguments every encoding takes; the others are its parameters (``make_encoding``'s ``**params``).
_COMMON_ARGS = ("self", "num_classes", "image_shape")


# ---------------------------------------------------------------- validation


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise FFEdgeError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(image_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise FFEdgeError(f"image_shape must be (C, H, W) with positive integers, got {image_shape!r}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def check_amplitude(value: Any) -> float:
    """A label amplitude: a finite number in (0, MAX_PARAM]."""
    try:
        amp = float(value)
    except (TypeError, ValueError):
        raise FFEdgeError(f"amplitude must be a number, got {quoted(value)}") from None
    except OverflowError:  # an integer too large for a float
        amp = math.inf
    if not math.isfinite(amp) or not 0 < amp <= MAX_PARAM:
        raise FFEdgeError(f"amplitude must be a number in (0, {MAX_PARAM:g}], got {quoted(value)}")
    return amp


def check_float(name: str, value: Any) -> float:
    """A finite number within +-MAX_PARAM (an angle, a phase)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise FFEdgeError(f"{name} must be a number, got {quoted(value)}") from None
    except OverflowError:  # an integer too large for a float
        out = math.inf
    if not math.isfinite(out) or abs(out) > MAX_PARAM:
        raise FFEdgeError(f"{name} must be a finite number within +-{MAX_PARAM:g}, got {quoted(value)}")
    return out


def as_labels(labels: Any, n: int | None, num_classes: int, what: str = "labels") -> np.ndarray:
    """Class indices in [0, num_classes) as int64 ``[n]`` (any length when ``n`` is None)."""
    arr = np.asarray(labels)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise FFEdgeError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        want = f"[{n}]" if n is not None else "1-D"
        raise FFEdgeError(f"{what} must have shape {want}, got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = arr[(arr < 0) | (arr >= num_classes)][0]
        raise FFEdgeError(f"{what} out of range: {int(bad)} is not in [0, {num_classes})")
    return arr.astype(np.int64, copy=False)


# ---------------------------------------------------------------- base class


class LabelPicture(NamedTuple):
    """The label by itself as ``ffedge labels`` draws it: ``values`` [C, h, w] shown with ``lo`` black and ``hi`` white."""

    values: np.ndarray
    lo: float
    hi: float
    note: str = ""  # a second caption line (e.g. a morph class's transform)


class LabelEncoding(ABC):
    """Writes label hypotheses into normalized float32 NCHW images."""

    name: str = ""

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.image_shape = _check_image_shape(image_shape)

    @property
    def out_channels(self) -> int:
        """Channels of an encoded input (the image's C unless a label channel is appended)."""
        return self.image_shape[0]

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(out_channels, H, W) of one encoded input."""
        return (self.out_channels, self.image_shape[1], self.image_shape[2])

    def _check_x(self, x: Any) -> np.ndarray:
        """Validate images and return them as C-contiguous float32."""
        if not isinstance(x, np.ndarray):
            raise FFEdgeError(f"images must be a numpy array, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            c, h, w = self.image_shape
            raise FFEdgeError(f"images must have shape [N, {c}, {h}, {w}] (normalized NCHW), got {list(x.shape)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise FFEdgeError(f"images must be normalized floats, got dtype {x.dtype} (normalize uint8 pixels first)")
        return np.ascontiguousarray(x, dtype=np.float32)

    def encode(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Images ``[N, C, H, W]`` with labels ``[N]`` -> float32 ``[N, out_channels, H, W]``."""
        xs = self._check_x(x)
        ys = as_labels(labels, xs.shape[0], self.num_classes)
        return np.ascontiguousarray(self._encode(xs, ys), dtype=np.float32)

    def neutral(self, x: np.ndarray) -> np.ndarray:
        """The "no label" input, for one-pass prediction with a softmax head."""
        return np.ascontiguousarray(self._neutral(self._check_x(x)), dtype=np.float32)

    def encode_all(self, x: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Every label hypothesis: ``[N*K', ...]``, row ``n*K' + k`` = image n with label ``classes[k]``."""
        xs = self._check_x(x)
        cls = np.arange(self.num_classes) if classes is None else as_labels(classes, None, self.num_classes, "classes")
        if xs.shape[0] == 0 or cls.size == 0:
            return np.zeros((0,) + self.out_shape, dtype=np.float32)
        return np.ascontiguousarray(self._encode_all(xs, cls), dtype=np.float32)

    def _encode_all(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Default: repeat each image once per class (image-major) and encode."""
        reps = np.repeat(x, classes.size, axis=0)
        return self._encode(reps, np.tile(classes, x.shape[0]))

    def label_channels(self) -> np.ndarray | None:
        """The label channels by themselves, when the encoding appends them to the unchanged image.

        float32 ``[K + 1, L, H, W]``: row k is what ``encode`` appends for class k, row K what
        ``neutral`` appends. None (the default) when the label is mixed into the image's own
        channels: then a network's first layer cannot see image and label apart.
        """
        return None

    def to_config(self) -> dict[str, Any]:
        """JSON-able description holding every parameter needed to rebuild this encoding exactly."""
        return {
            "name": self.name,
            "version": CONFIG_VERSION,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            **self._params(),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays to save next to a model (as .npy); may be empty."""
        return {}

    def _adopt_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Use verified bundle arrays instead of regenerated ones (so the device matches training bit for bit)."""

    @abstractmethod
    def _encode(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _neutral(self, x: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _params(self) -> dict[str, Any]: ...

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The encoding's own parameters: its constructor's keyword arguments after ``num_classes`` and ``image_shape``.

        What ``make_encoding`` accepts as ``**params`` (and ``to_config`` writes back).
        """
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return tuple(
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind in kinds and p.name not in _COMMON_ARGS
        )

    def pictures(self) -> tuple[list[LabelPicture], str]:
        """The label by itself, for ``ffedge labels``: the neutral label, then one picture per class; and a heading."""
        raise FFEdgeError(f"cannot draw label encoding {self.name!r}")

    def detail(self) -> str:
        """A few words telling this configuration from the encoding's others, for titles (e.g. ``channel mode``); may be empty."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_config()!r})"
