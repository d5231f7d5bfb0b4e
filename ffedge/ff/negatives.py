"""Negative data of Forward-Forward training: each image with wrong labels (numpy)."""

from __future__ import annotations

import numpy as np


def wrong_labels(y: np.ndarray, num_classes: int, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """``n`` different wrong labels per image, uniform over the other classes: [n, B] (n=1: [B]).

    The negatives of FF training; every trainer (torch and on-device) draws them here.
    """
    if n == 1:
        return (y + rng.integers(1, num_classes, size=len(y))) % num_classes
    offsets = rng.random((len(y), num_classes - 1)).argsort(1)[:, :n].T + 1
    return (y[None, :] + offsets) % num_classes


class ConfusionMemory:
    """Hard negatives from goodness the trainer already computed (``--negatives confused``), with no extra pass.

    For every (true class, wrong label) pair it keeps a running mean of the margin goodness(wrong) - goodness(true)
    that the training steps measured on the negatives it proposed. Each negative is drawn uniformly (probability
    ``1 - mix``) or from a softmax over the true class's margins at ``temperature`` (in goodness units), so the
    pairs the net confuses come up more often; all margins start at 0, i.e. uniform. ``--negatives hard`` instead
    scores every label of every image before each step (an extra pass over all K hypotheses).
    """

    def __init__(self, num_classes: int, mix: float = 0.5, temperature: float = 1.0, rate: float = 0.05) -> None:
        self.k, self.mix, self.temperature, self.rate = num_classes, mix, temperature, rate
        self.margins = np.zeros((num_classes, num_classes))
        self._drawn: tuple[np.ndarray, np.ndarray] | None = None

    def draw(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One wrong label per image [B]; remembered until :meth:`learn` gets their margins."""
        b = len(y)
        uniform = wrong_labels(y, self.k, rng)
        logits = self.margins[y] / self.temperature
        logits[np.arange(b), y] = -np.inf
        p = np.exp(logits - logits.max(1, keepdims=True))
        cum = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
        confused = np.minimum((cum < rng.random((b, 1))).sum(1), self.k - 1)
        confused = np.where(confused == y, uniform, confused)  # rounding at the top of the cumulative sum
        neg = np.where(rng.random(b) < self.mix, confused, uniform)
        self._drawn = (np.asarray(y).copy(), neg.copy())
        return neg

    def learn(self, margin: np.ndarray) -> None:
        """Move the pairs last drawn towards their measured margins [B] (goodness of the negative minus the positive)."""
        if self._drawn is None:
            return
        y, neg = self._drawn
        sums, counts = np.zeros_like(self.margins), np.zeros_like(self.margins)
        np.add.at(sums, (y, neg), margin)
        np.add.at(counts, (y, neg), 1)
        seen = counts > 0
        self.margins[seen] += self.rate * (sums[seen] / counts[seen] - self.margins[seen])
        self._drawn = None
