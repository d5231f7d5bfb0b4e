"""Label encodings: how a class hypothesis is written into a network input.

Forward-Forward needs every input to carry a label (true label: positive
data; wrong label: negative data). Hinton's one-hot corner does not reach a
CNN's filters, so ffedge spreads the label over the whole image (Scodellaro
et al. 2025). This module is numpy-only and is the single implementation
used by the trainer and by the on-device runtime: both sides call ``encode``
with the same configuration and get the same bytes.

Images come in as normalized float32 NCHW; encodings come out as C-contiguous
float32 ``[N, out_channels, H, W]``. Pixel ``(i, j)`` is row ``i``, column ``j``.

fourier (default ``mode="channel"``)
    Class ``k`` owns a grating over the whole image::

        P_k(i, j) = cos(2*pi*f_k*(i*cos(t_k)/H + j*sin(t_k)/W) + phi_k)

    i.e. ``f_k*cos(t_k)`` cycles down the rows and ``f_k*sin(t_k)`` across the
    columns (for square images this is ``.../S`` with S the image size).

    * ``K <= 16`` ("fan"): ``f_k = 4``, ``t_k = pi*k/K``, ``phi_k = 0``. For
      K = 10 on 28x28 this is exactly the grating measured best in the
      feasibility study. Max pairwise |correlation| is 0.16 at K = 10 and
      0.31 at K = 16 (28x28 and 32x32).
    * ``K > 16`` ("lattice"): the wave vectors ``(f cos t, f sin t)`` are the
      K integer vectors ``(a, b)`` of one half-plane (b > 0, or b = 0 and
      a > 0) with length >= 2 and below Nyquist, shortest first (ties by
      angle). Gratings with distinct integer wave vectors are exactly
      orthogonal on the pixel grid, so all K patterns are pairwise
      uncorrelated (K = 100 uses lengths 2 .. 8.1 cycles per image, which
      fits 16x16 and up). Phases stay 0: a convolution is translation
      equivariant, so classes that differ only by phase would look alike
      to it.
    * ``mode="channel"``: the pattern, times ``amplitude`` (default 1.0), is
      an extra input channel after the image channels (``out_channels =
      C + 1``); neutral = a channel of zeros.
    * ``mode="add"``: ``amplitude * P_k`` (default 1.0, about the spread of a
      standardized image) is added to every channel; channel ``c`` gets the
      extra phase ``c * channel_phase`` (default 2*pi/3, so on RGB the grating
      is a hue that rotates along the wave and every colour channel carries
      it distinguishably). Neutral = the unchanged image.

    ``arrays()`` holds ``patterns``: float32 ``[K, P, H, W]`` (P = 1 in channel
    mode, C in add mode), exactly the values appended/added (amplitude
    included). ``to_config()`` lists every ``f_k, t_k, phi_k`` explicitly.

morph
    Class ``k`` owns a grey-scale morphological operation with a flat,
    line-shaped structuring element: an operation (``ops``, default dilate,
    erode, open; ``close`` may be added, but on thin bright strokes it is
    nearly the identity) and a digital line segment of ``2r + 1`` pixels
    from ``-(dy, dx)`` to ``+(dy, dx)`` with ``max(|dy|, |dx|) = r``
    (offsets ``round(t*(dy, dx)/r)``, t = -r..r, rounding half away from 0).
    Radius r offers 4r distinct orientations. Classes take transforms in the
    order radius 1, 2, 3, ... (shortest lines first: they keep the image
    recognizable), then operation, then orientation; when the last
    (radius, op) group is only partly needed its orientations are taken
    evenly spaced. The shrinking operations (erode, open) are used only up to
    ``shrink_max_radius`` (default 1): with 5-pixel lines they already wipe
    out MNIST strokes, and different wiped-out images would be the same
    input. K = 10: dilate with the 4 three-pixel lines (0, 45, 90, 135 deg),
    erode with the same 4, open with the 0 and 90 deg lines. K = 100: the 12
    radius-1 transforms, then dilations with 5- to 15-pixel lines (radii
    2..7; needs images of at least 15x15). ``radii`` may fix the radii to
    use; lines never exceed the image. Outside
    pixels are ignored (padding with -inf / +inf). Max and min commute with
    the per-channel affine normalization, so the result is the same as
    transforming raw pixels. No pattern is added, so a net cannot shortcut
    on it. Neutral = the untransformed image. ``to_config()`` lists each
    class as ``[op, dy, dx]``; ``arrays()`` holds ``footprints``: uint8
    ``[K, 2R+1, 2R+1]`` masks of the lines (R = the largest radius).

onehot (Hinton 2022; the baseline that fails on CNNs)
    In every channel the first K pixels (row-major from the top-left) are
    overwritten: ``amplitude`` (default 3.0, about a white pixel of a
    standardized image: (1 - 0.13) / 0.31 = 2.8 for MNIST) at the true class,
    0 elsewhere. Neutral: every label pixel = ``amplitude / K``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Iterable

import numpy as np

from ffedge.errors import FFEdgeError, quoted

ENCODING_NAMES = ("fourier", "morph", "onehot")
CONFIG_VERSION = 1
# Arrays loaded from a bundle may differ from regenerated ones by float rounding
# of cos() across CPUs; anything larger means a different encoding.
ARRAY_ATOL = 1e-5

FAN_MAX_CLASSES = 16
FAN_FREQUENCY = 4.0
LATTICE_MIN_LENGTH = 2.0
MORPH_OPS = ("dilate", "erode", "open", "close")
MORPH_DEFAULT_OPS = ("dilate", "erode", "open")
MORPH_SHRINKING = ("erode", "open")  # can erase thin strokes: kept to short lines
MORPH_SHRINK_MAX_RADIUS = 1
ONEHOT_DEFAULT_AMPLITUDE = 3.0
# Bound of amplitudes, angles and phases: larger values overflow float32 patterns (inf, then NaN).
MAX_PARAM = 1e6


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


def _check_amplitude(value: Any) -> float:
    try:
        amp = float(value)
    except (TypeError, ValueError):
        raise FFEdgeError(f"amplitude must be a number, got {quoted(value)}") from None
    except OverflowError:  # an integer too large for a float
        amp = math.inf
    if not math.isfinite(amp) or not 0 < amp <= MAX_PARAM:
        raise FFEdgeError(f"amplitude must be a number in (0, {MAX_PARAM:g}], got {quoted(value)}")
    return amp


def _check_float(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise FFEdgeError(f"{name} must be a number, got {quoted(value)}") from None
    except OverflowError:  # an integer too large for a float
        out = math.inf
    if not math.isfinite(out) or abs(out) > MAX_PARAM:
        raise FFEdgeError(f"{name} must be a finite number within +-{MAX_PARAM:g}, got {quoted(value)}")
    return out


def _check_unknown(name: str, params: dict[str, Any], allowed: Iterable[str]) -> None:
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise FFEdgeError(
            f"unknown parameter(s) for the {name!r} label encoding: {', '.join(map(quoted, extra))} "
            f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
        )


def _as_labels(labels: Any, n: int | None, num_classes: int, what: str = "labels") -> np.ndarray:
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
        ys = _as_labels(labels, xs.shape[0], self.num_classes)
        return np.ascontiguousarray(self._encode(xs, ys), dtype=np.float32)

    def neutral(self, x: np.ndarray) -> np.ndarray:
        """The "no label" input, for one-pass prediction with a softmax head."""
        return np.ascontiguousarray(self._neutral(self._check_x(x)), dtype=np.float32)

    def encode_all(self, x: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Every label hypothesis: ``[N*K', ...]``, row ``n*K' + k`` = image n with label ``classes[k]``."""
        xs = self._check_x(x)
        cls = np.arange(self.num_classes) if classes is None else _as_labels(classes, None, self.num_classes, "classes")
        if xs.shape[0] == 0 or cls.size == 0:
            return np.zeros((0,) + self.out_shape, dtype=np.float32)
        return np.ascontiguousarray(self._encode_all(xs, cls), dtype=np.float32)

    def _encode_all(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Default: repeat each image once per class (image-major) and encode."""
        reps = np.repeat(x, classes.size, axis=0)
        return self._encode(reps, np.tile(classes, x.shape[0]))

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_config()!r})"


# ---------------------------------------------------------------- fourier


def fan_waves(num_classes: int) -> tuple[list[float], list[float], list[float]]:
    """The K <= 16 scheme: f = 4, t_k = pi*k/K, phi = 0."""
    k = num_classes
    return [FAN_FREQUENCY] * k, [math.pi * i / k for i in range(k)], [0.0] * k


def lattice_waves(num_classes: int, height: int, width: int) -> tuple[list[float], list[float], list[float]]:
    """The K > 16 scheme: distinct integer wave vectors (exactly orthogonal gratings), shortest first."""
    vectors = []
    for a in range(-((height - 1) // 2), (height - 1) // 2 + 1):
        for b in range(0, (width - 1) // 2 + 1):
            if b == 0 and a <= 0:
                continue
            length = math.hypot(a, b)
            if length >= LATTICE_MIN_LENGTH:
                vectors.append((length, math.atan2(b, a), a, b))
    if len(vectors) < num_classes:
        raise FFEdgeError(
            f"a {height}x{width} image fits only {len(vectors)} distinct Fourier label patterns, "
            f"fewer than the {num_classes} classes: use larger images or the 'morph' encoding"
        )
    vectors.sort()
    chosen = vectors[:num_classes]
    return [v[0] for v in chosen], [v[1] for v in chosen], [0.0] * num_classes


def grating(freq: float, angle: float, phase: float, height: int, width: int) -> np.ndarray:
    """float64 ``[H, W]``: cos(2*pi*f*(i*cos t/H + j*sin t/W) + phase).

    Square images use the study's exact arithmetic, ``2*pi*f*(i*cos t + j*sin t)/S``.
    """
    i = np.arange(height, dtype=np.float64)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    if height == width:
        arg = 2.0 * np.pi * freq * (i * np.cos(angle) + j * np.sin(angle)) / height
    else:
        arg = 2.0 * np.pi * freq * (i * np.cos(angle) / height + j * np.sin(angle) / width)
    return np.cos(arg + phase) if phase else np.cos(arg)


class FourierEncoding(LabelEncoding):
    """Class-specific gratings, as an extra channel (default) or added to the image."""

    name = "fourier"
    MODES = ("channel", "add")
    PARAMS = ("mode", "amplitude", "freqs", "angles", "phases", "channel_phase")

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int],
        mode: str = "channel",
        amplitude: float = 1.0,
        freqs: list[float] | None = None,
        angles: list[float] | None = None,
        phases: list[float] | None = None,
        channel_phase: float = 2.0 * math.pi / 3.0,
    ) -> None:
        super().__init__(num_classes, image_shape)
        if mode not in self.MODES:
            raise FFEdgeError(f"fourier label mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.mode = mode
        self.amplitude = _check_amplitude(amplitude)
        self.channel_phase = _check_float("channel_phase", channel_phase)
        self.freqs, self.angles, self.phases = self._waves(freqs, angles, phases)
        self._patterns = self._make_patterns()

    def _waves(self, freqs: Any, angles: Any, phases: Any) -> tuple[list[float], list[float], list[float]]:
        _, h, w = self.image_shape
        given = [v is not None for v in (freqs, angles, phases)]
        if any(given) and not all(given):
            raise FFEdgeError("fourier: give all of freqs, angles and phases, or none of them")
        if not any(given):
            k = self.num_classes
            fits_fan = FAN_FREQUENCY < min(h, w) / 2.0
            return fan_waves(k) if k <= FAN_MAX_CLASSES and fits_fan else lattice_waves(k, h, w)
        lists = []
        for name, values in (("freqs", freqs), ("angles", angles), ("phases", phases)):
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != self.num_classes:
                raise FFEdgeError(f"fourier: {name} must be a list of {self.num_classes} numbers")
            lists.append([_check_float(f"fourier {name}", v) for v in values])
        for k, (f, t) in enumerate(zip(lists[0], lists[1])):
            if f <= 0 or abs(f * math.cos(t)) >= h / 2.0 or abs(f * math.sin(t)) >= w / 2.0:
                raise FFEdgeError(
                    f"fourier: class {k} pattern (f={f:g}, t={t:g}) is not a positive frequency below "
                    f"the Nyquist limit of a {h}x{w} image"
                )
        return lists[0], lists[1], lists[2]

    def _make_patterns(self) -> np.ndarray:
        c, h, w = self.image_shape
        offsets = [0.0] if self.mode == "channel" else [ch * self.channel_phase for ch in range(c)]
        pats = np.empty((self.num_classes, len(offsets), h, w), dtype=np.float32)
        for k, (f, t, p) in enumerate(zip(self.freqs, self.angles, self.phases)):
            for ch, off in enumerate(offsets):
                pats[k, ch] = self.amplitude * grating(f, t, p + off, h, w)
        self._check_distinct(pats)
        return pats

    def _check_distinct(self, pats: np.ndarray) -> None:
        flat = pats.reshape(pats.shape[0], -1).astype(np.float64)
        flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        corr = np.abs(flat @ flat.T)
        np.fill_diagonal(corr, 0.0)
        a, b = np.unravel_index(int(np.argmax(corr)), corr.shape)
        if corr[a, b] > 0.99:
            raise FFEdgeError(f"fourier: classes {min(a, b)} and {max(a, b)} would get the same label pattern")

    @property
    def out_channels(self) -> int:
        return self.image_shape[0] + (1 if self.mode == "channel" else 0)

    @property
    def patterns(self) -> np.ndarray:
        """float32 ``[K, P, H, W]``: the exact values appended (channel) or added (add) per class."""
        return self._patterns

    def _encode(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if self.mode == "add":
            return x + self._patterns[labels]
        n, c, h, w = x.shape
        out = np.empty((n, c + 1, h, w), dtype=np.float32)
        out[:, :c] = x
        out[:, c] = self._patterns[labels, 0]
        return out

    def _neutral(self, x: np.ndarray) -> np.ndarray:
        if self.mode == "add":
            return x.copy()
        n, c, h, w = x.shape
        out = np.zeros((n, c + 1, h, w), dtype=np.float32)
        out[:, :c] = x
        return out

    def _params(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "amplitude": self.amplitude,
            "freqs": list(self.freqs),
            "angles": list(self.angles),
            "phases": list(self.phases),
            "channel_phase": self.channel_phase,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"patterns": self._patterns.copy()}

    def _adopt_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._patterns = np.ascontiguousarray(arrays["patterns"], dtype=np.float32)


# ---------------------------------------------------------------- morph


def line_directions(radius: int) -> list[tuple[int, int]]:
    """The 4r endpoints (dy, dx) of distinct digital lines of radius r, by angle in [0, pi)."""
    r = radius
    ends = {(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if max(abs(dy), abs(dx)) == r}
    # One endpoint per line: angle measured upward from the +x axis (image rows grow downward).
    half = [(dy, dx) for dy, dx in ends if (-dy > 0) or (dy == 0 and dx > 0)]
    return sorted(half, key=lambda e: math.atan2(-e[0], e[1]))


def line_offsets(dy: int, dx: int) -> list[tuple[int, int]]:
    """Pixels of the symmetric digital segment from -(dy, dx) to (dy, dx)."""
    r = max(abs(dy), abs(dx))

    def rnd(v: float) -> int:  # round half away from zero keeps the segment symmetric
        return int(math.copysign(math.floor(abs(v) + 0.5), v))

    return [(rnd(t * dy / r), rnd(t * dx / r)) for t in range(-r, r + 1)]


def morph_transforms(
    num_classes: int,
    ops: tuple[str, ...],
    radii: list[int] | None,
    shrink_max_radius: int,
    max_radius: int,
) -> list[tuple[str, int, int]]:
    """The first K (op, dy, dx) transforms: by radius (shortest first), then op, then orientation.

    Shrinking ops (erode, open) are used only up to ``shrink_max_radius``. Whole
    (radius, op) groups are taken while they fit; the last, partly needed group
    contributes evenly spaced orientations. ``radii=None`` means 1, 2, ... up to
    ``max_radius``.
    """
    chosen: list[tuple[str, int, int]] = []
    radius_list = radii if radii is not None else range(1, max_radius + 1)
    for r in radius_list:
        for op in ops:
            need = num_classes - len(chosen)
            if need <= 0:
                return chosen
            if op in MORPH_SHRINKING and r > shrink_max_radius:
                continue
            dirs = line_directions(r)
            picks = range(len(dirs)) if need >= len(dirs) else [(m * len(dirs)) // need for m in range(need)]
            chosen += [(op, *dirs[i]) for i in picks]
        if len(chosen) >= num_classes:
            return chosen
    raise FFEdgeError(
        f"morph: ops {list(ops)} with radii {list(radius_list)} (erode/open up to radius {shrink_max_radius}) "
        f"give only {len(chosen)} transforms for {num_classes} classes; add ops or radii, or use larger images"
    )


def _shifted_reduce(x: np.ndarray, offsets: list[tuple[int, int]], use_max: bool) -> np.ndarray:
    """Flat grey-scale dilation (max) or erosion (min) of NCHW ``x``; outside pixels are ignored."""
    n, c, h, w = x.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    fill = -np.inf if use_max else np.inf
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="constant", constant_values=fill)
    reduce = np.maximum if use_max else np.minimum
    out = None
    for dy, dx in offsets:
        view = xp[:, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        out = view.copy() if out is None else reduce(out, view, out=out)
    return out


def morph_apply(x: np.ndarray, op: str, dy: int, dx: int) -> np.ndarray:
    """Apply one class transform (op with the line from -(dy,dx) to (dy,dx)) to NCHW float32 images."""
    offs = line_offsets(dy, dx)
    if op == "dilate":
        return _shifted_reduce(x, offs, True)
    if op == "erode":
        return _shifted_reduce(x, offs, False)
    if op == "open":
        return _shifted_reduce(_shifted_reduce(x, offs, False), offs, True)
    if op == "close":
        return _shifted_reduce(_shifted_reduce(x, offs, True), offs, False)
    raise FFEdgeError(f"morph: unknown operation {op!r} (choose from {', '.join(MORPH_OPS)})")


class MorphEncoding(LabelEncoding):
    """Class-specific morphological transforms with oriented line structuring elements."""

    name = "morph"
    PARAMS = ("ops", "radii", "shrink_max_radius", "transforms")

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int],
        ops: list[str] | None = None,
        radii: list[int] | None = None,
        shrink_max_radius: int | None = None,
        transforms: list[list[Any]] | None = None,
    ) -> None:
        super().__init__(num_classes, image_shape)
        if transforms is not None:
            if ops is not None or radii is not None or shrink_max_radius is not None:
                raise FFEdgeError("morph: give either transforms or ops/radii/shrink_max_radius, not both")
            self.transforms = self._check_transforms(transforms)
        else:
            self.transforms = self._choose(ops, radii, shrink_max_radius)
        self.radius = max(max(abs(dy), abs(dx)) for _, dy, dx in self.transforms)
        _, h, w = self.image_shape
        if 2 * self.radius + 1 > min(h, w):
            raise FFEdgeError(
                f"morph: {self.num_classes} classes need lines of {2 * self.radius + 1} pixels, "
                f"longer than a {h}x{w} image; use fewer classes or larger images"
            )

    def _choose(self, ops: Any, radii: Any, shrink_max_radius: Any) -> list[tuple[str, int, int]]:
        op_list = tuple(MORPH_DEFAULT_OPS if ops is None else self._check_ops(ops))
        radius_list = None if radii is None else self._check_radii(radii)
        shrink = MORPH_SHRINK_MAX_RADIUS if shrink_max_radius is None else shrink_max_radius
        if isinstance(shrink, bool) or not isinstance(shrink, (int, np.integer)) or shrink < 0:
            raise FFEdgeError(f"morph: shrink_max_radius must be an integer >= 0, got {shrink_max_radius!r}")
        _, h, w = self.image_shape
        return morph_transforms(self.num_classes, op_list, radius_list, int(shrink), (min(h, w) - 1) // 2)

    @staticmethod
    def _check_ops(ops: Any) -> list[str]:
        if isinstance(ops, str) or not hasattr(ops, "__iter__"):
            raise FFEdgeError(f"morph: ops must be a list of operations from {', '.join(MORPH_OPS)}")
        out = [str(o) for o in ops]
        bad = [o for o in out if o not in MORPH_OPS]
        if bad or not out or len(set(out)) != len(out):
            raise FFEdgeError(f"morph: ops must be distinct operations from {', '.join(MORPH_OPS)}, got {list(ops)}")
        return out

    @staticmethod
    def _check_radii(radii: Any) -> list[int]:
        if isinstance(radii, str) or not hasattr(radii, "__iter__"):
            raise FFEdgeError("morph: radii must be a list of positive integers")
        out = list(radii)
        if not out or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in out):
            raise FFEdgeError(f"morph: radii must be positive integers, got {out}")
        if len(set(out)) != len(out):
            raise FFEdgeError(f"morph: radii must be distinct, got {out}")
        return [int(r) for r in out]

    def _check_transforms(self, transforms: Any) -> list[tuple[str, int, int]]:
        if isinstance(transforms, str) or not hasattr(transforms, "__len__") or len(transforms) != self.num_classes:
            raise FFEdgeError(f"morph: transforms must be a list of {self.num_classes} [op, dy, dx] entries")
        out = []
        for k, t in enumerate(transforms):
            ok = isinstance(t, (list, tuple)) and len(t) == 3 and t[0] in MORPH_OPS
            ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in t[1:])
            if not ok or max(abs(int(t[1])), abs(int(t[2]))) < 1:
                raise FFEdgeError(f"morph: transform {k} must be [op, dy, dx] with op in {MORPH_OPS} and (dy, dx) != (0, 0), got {t!r}")
            out.append((str(t[0]), int(t[1]), int(t[2])))
        keys = [(op, frozenset(line_offsets(dy, dx))) for op, dy, dx in out]
        if len(set(keys)) != len(keys):
            raise FFEdgeError("morph: two classes have the same transform")
        return out

    def _encode(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for k in np.unique(labels):
            rows = labels == k
            out[rows] = morph_apply(x[rows], *self.transforms[int(k)])
        return out

    def _encode_all(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        out = np.empty((n, classes.size) + x.shape[1:], dtype=np.float32)
        for m, k in enumerate(classes):
            out[:, m] = morph_apply(x, *self.transforms[int(k)])
        return out.reshape((n * classes.size,) + x.shape[1:])

    def _neutral(self, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def _params(self) -> dict[str, Any]:
        return {"transforms": [[op, dy, dx] for op, dy, dx in self.transforms]}

    def footprints(self) -> np.ndarray:
        """uint8 ``[K, 2R+1, 2R+1]``: 1 where a class's line structuring element has a pixel."""
        r = self.radius
        fp = np.zeros((self.num_classes, 2 * r + 1, 2 * r + 1), dtype=np.uint8)
        for k, (_, dy, dx) in enumerate(self.transforms):
            for oy, ox in line_offsets(dy, dx):
                fp[k, r + oy, r + ox] = 1
        return fp

    def arrays(self) -> dict[str, np.ndarray]:
        return {"footprints": self.footprints()}

    def describe(self, k: int) -> str:
        """Short text for class k's transform, e.g. ``dilate 5px 45deg``."""
        op, dy, dx = self.transforms[k]
        deg = math.degrees(math.atan2(-dy, dx)) % 180.0
        return f"{op} {2 * max(abs(dy), abs(dx)) + 1}px {deg:.0f}deg"


# ---------------------------------------------------------------- onehot


class OneHotEncoding(LabelEncoding):
    """Hinton's one-hot label in the first K pixels of every channel."""

    name = "onehot"
    PARAMS = ("amplitude",)

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], amplitude: float = ONEHOT_DEFAULT_AMPLITUDE) -> None:
        super().__init__(num_classes, image_shape)
        self.amplitude = _check_amplitude(amplitude)
        _, h, w = self.image_shape
        if self.num_classes > h * w:
            raise FFEdgeError(f"onehot: {self.num_classes} classes do not fit in the {h * w} pixels of a {h}x{w} image")

    def _with_region(self, x: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Copy of x whose first K pixels of every channel are ``values`` ([N, K])."""
        n, c, h, w = x.shape
        out = x.reshape(n, c, h * w).copy()
        out[:, :, : self.num_classes] = values[:, None, :]
        return out.reshape(n, c, h, w)

    def _encode(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        values = np.zeros((x.shape[0], self.num_classes), dtype=np.float32)
        values[np.arange(x.shape[0]), labels] = self.amplitude
        return self._with_region(x, values)

    def _neutral(self, x: np.ndarray) -> np.ndarray:
        values = np.full((x.shape[0], self.num_classes), self.amplitude / self.num_classes, dtype=np.float32)
        return self._with_region(x, values)

    def _params(self) -> dict[str, Any]:
        return {"amplitude": self.amplitude}

    @property
    def region_shape(self) -> tuple[int, int]:
        """(rows, cols) of the top-left block that holds the label pixels."""
        w = self.image_shape[2]
        return (-(-self.num_classes // w), min(self.num_classes, w))


# ---------------------------------------------------------------- factory

_CLASSES: dict[str, type[LabelEncoding]] = {
    "fourier": FourierEncoding,
    "morph": MorphEncoding,
    "onehot": OneHotEncoding,
}


def make_encoding(name: str, num_classes: int, image_shape: tuple[int, int, int], **params: Any) -> LabelEncoding:
    """Build the named label encoding for K classes and (C, H, W) images."""
    key = str(name).strip().lower()
    if key not in _CLASSES:
        raise FFEdgeError(f"unknown label encoding {name!r}: choose one of {', '.join(ENCODING_NAMES)}")
    cls = _CLASSES[key]
    _check_unknown(key, params, cls.PARAMS)  # type: ignore[attr-defined]
    return cls(num_classes, image_shape, **params)


def _check_arrays(enc: LabelEncoding, arrays: dict[str, np.ndarray]) -> None:
    expected = enc.arrays()
    if set(arrays) != set(expected):
        raise FFEdgeError(
            f"label arrays do not match the {enc.name!r} encoding: got {sorted(arrays)}, expected {sorted(expected)}"
        )
    for key, want in expected.items():
        got = np.asarray(arrays[key])
        if got.shape != want.shape:
            raise FFEdgeError(f"label array {key!r} has shape {list(got.shape)}, the encoding gives {list(want.shape)}")
        if not np.issubdtype(got.dtype, np.number) or not np.allclose(got, want, rtol=0.0, atol=ARRAY_ATOL):
            raise FFEdgeError(
                f"label array {key!r} differs from the one the {enc.name!r} encoding regenerates: "
                "the saved labels and the configuration disagree"
            )


def encoding_from_config(cfg: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> LabelEncoding:
    """Rebuild an encoding from ``to_config()``; bundle ``arrays`` must match and are then used as-is."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise FFEdgeError("label encoding config must be a mapping with a 'name'")
    params = dict(cfg)
    name = params.pop("name")
    version = params.pop("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise FFEdgeError(f"label encoding config version {version!r} is not supported (this ffedge reads {CONFIG_VERSION})")
    for key in ("num_classes", "image_shape"):
        if key not in params:
            raise FFEdgeError(f"label encoding config lacks {key!r}")
    enc = make_encoding(name, params.pop("num_classes"), params.pop("image_shape"), **params)
    if arrays is not None:
        _check_arrays(enc, arrays)
        enc._adopt_arrays(arrays)
    return enc
