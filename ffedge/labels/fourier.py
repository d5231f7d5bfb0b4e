"""The ``fourier`` label encoding: class-specific gratings.

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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ffedge.errors import FFEdgeError
from ffedge.labels.base import LabelEncoding, LabelPicture, check_amplitude, check_float
from ffedge.labels.registry import register

FAN_MAX_CLASSES = 16
FAN_FREQUENCY = 4.0
LATTICE_MIN_LENGTH = 2.0


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


@register
class FourierEncoding(LabelEncoding):
    """Class-specific gratings, as an extra channel (default) or added to the image."""

    name = "fourier"
    # Where the grating goes, and what the help of --label-mode says of it.
    MODE_HELP = {
        "channel": "the grating as an extra input channel",
        "add": "the grating added to the image, as in the paper",
    }
    MODES = tuple(MODE_HELP)

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
        self.amplitude = check_amplitude(amplitude)
        self.channel_phase = check_float("channel_phase", channel_phase)
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
            lists.append([check_float(f"fourier {name}", v) for v in values])
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

    def label_channels(self) -> np.ndarray | None:
        """Channel mode: the gratings, then a channel of zeros (neutral); add mode: None."""
        if self.mode == "add":
            return None
        neutral = np.zeros((1,) + self._patterns.shape[1:], dtype=np.float32)
        return np.ascontiguousarray(np.concatenate([self._patterns, neutral]), dtype=np.float32)

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

    def pictures(self) -> tuple[list[LabelPicture], str]:
        a = self.amplitude
        pics = [LabelPicture(np.zeros_like(self._patterns[0]), -a, a)]
        pics += [LabelPicture(self._patterns[i], -a, a) for i in range(self.num_classes)]
        what = "label channel" if self.mode == "channel" else "pattern added to the image"
        return pics, f"Fourier gratings ({what}; grey = 0, white = +{a:g})"

    def detail(self) -> str:
        return f"{self.mode} mode"
