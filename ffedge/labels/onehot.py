"""The ``onehot`` label encoding.

onehot (Hinton 2022; the baseline that fails on CNNs)
    In every channel the first K pixels (row-major from the top-left) are
    overwritten: ``amplitude`` (default 3.0, about a white pixel of a
    standardized image: (1 - 0.13) / 0.31 = 2.8 for MNIST) at the true class,
    0 elsewhere. Neutral: every label pixel = ``amplitude / K``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ffedge.errors import FFEdgeError
from ffedge.labels.base import LabelEncoding, LabelPicture, check_amplitude
from ffedge.labels.registry import register

ONEHOT_DEFAULT_AMPLITUDE = 3.0


@register
class OneHotEncoding(LabelEncoding):
    """Hinton's one-hot label in the first K pixels of every channel."""

    name = "onehot"

    def __init__(
        self, num_classes: int, image_shape: tuple[int, int, int], amplitude: float = ONEHOT_DEFAULT_AMPLITUDE
    ) -> None:
        super().__init__(num_classes, image_shape)
        self.amplitude = check_amplitude(amplitude)
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

    def pictures(self) -> tuple[list[LabelPicture], str]:
        rows, cols = self.region_shape
        zero = np.zeros((1,) + self.image_shape, dtype=np.float32)

        def crop(e: np.ndarray) -> LabelPicture:
            return LabelPicture(e[0, :, :rows, :cols], 0.0, self.amplitude)

        pics = [crop(self.neutral(zero))]
        pics += [crop(self.encode(zero, np.array([i]))) for i in range(self.num_classes)]
        return (
            pics,
            f"one-hot label pixels: the top-left {rows}x{cols} block of every channel (white = {self.amplitude:g})",
        )
