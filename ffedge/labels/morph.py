"""The ``morph`` label encoding: class-specific morphological transforms.

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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ffedge.errors import FFEdgeError
from ffedge.labels.base import LabelEncoding, LabelPicture
from ffedge.labels.registry import register

MORPH_OPS = ("dilate", "erode", "open", "close")
MORPH_DEFAULT_OPS = ("dilate", "erode", "open")
MORPH_SHRINKING = ("erode", "open")  # can erase thin strokes: kept to short lines
MORPH_SHRINK_MAX_RADIUS = 1


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


@register
class MorphEncoding(LabelEncoding):
    """Class-specific morphological transforms with oriented line structuring elements."""

    name = "morph"

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
                raise FFEdgeError(
                    f"morph: transform {k} must be [op, dy, dx] with op in {MORPH_OPS} and (dy, dx) != (0, 0), got {t!r}"
                )
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

    def pictures(self) -> tuple[list[LabelPicture], str]:
        fp = self.footprints().astype(np.float32)
        ident = np.zeros_like(fp[0])
        ident[self.radius, self.radius] = 1.0
        pics = [LabelPicture(ident[None], 0.0, 1.0)]
        pics += [LabelPicture(fp[i][None], 0.0, 1.0, self.describe(i)) for i in range(self.num_classes)]
        return pics, "morphological labels: each class's operation and line structuring element"
