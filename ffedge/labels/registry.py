"""The registry of label encodings: each encoding class registers itself under its ``name``.

:func:`make_encoding` and :func:`encoding_from_config` build encodings from it, and
``ffedge.labels.ENCODING_NAMES`` lists it once every encoding module is imported
(importing ``ffedge.labels`` does that). A new encoding is one module of this
package with a :class:`~ffedge.labels.base.LabelEncoding` subclass decorated with
:func:`register`.
"""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

import numpy as np

from ffedge.errors import FFEdgeError, quoted
from ffedge.labels.base import ARRAY_ATOL, CONFIG_VERSION, LabelEncoding

E = TypeVar("E", bound=type[LabelEncoding])
_REGISTRY: dict[str, type[LabelEncoding]] = {}


def register(cls: E) -> E:
    """Class decorator: make ``cls`` buildable by its ``name`` (lowercase, unique)."""
    name = cls.name
    if not name or name != name.strip().lower():
        raise ValueError(f"{cls.__name__}: a label encoding needs a lowercase name, got {name!r}")
    if _REGISTRY.get(name, cls) is not cls:
        raise ValueError(f"label encoding {name!r} is registered twice ({_REGISTRY[name].__name__} and {cls.__name__})")
    _REGISTRY[name] = cls
    return cls


def encoding_names() -> tuple[str, ...]:
    """The names of the registered encodings, sorted."""
    return tuple(sorted(_REGISTRY))


def encoding_class(name: str) -> type[LabelEncoding]:
    """The registered class of ``name`` (as :func:`make_encoding` spells it: any case, outer spaces ignored)."""
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise FFEdgeError(f"unknown label encoding {name!r}: choose one of {', '.join(encoding_names())}")
    return _REGISTRY[key]


def _check_unknown(name: str, params: dict[str, Any], allowed: Iterable[str]) -> None:
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise FFEdgeError(
            f"unknown parameter(s) for the {name!r} label encoding: {', '.join(map(quoted, extra))} "
            f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
        )


def make_encoding(name: str, num_classes: int, image_shape: tuple[int, int, int], **params: Any) -> LabelEncoding:
    """Build the named label encoding for K classes and (C, H, W) images."""
    cls = encoding_class(name)
    _check_unknown(cls.name, params, cls.param_names())
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
        raise FFEdgeError(
            f"label encoding config version {version!r} is not supported (this ffedge reads {CONFIG_VERSION})"
        )
    for key in ("num_classes", "image_shape"):
        if key not in params:
            raise FFEdgeError(f"label encoding config lacks {key!r}")
    enc = make_encoding(name, params.pop("num_classes"), params.pop("image_shape"), **params)
    if arrays is not None:
        _check_arrays(enc, arrays)
        enc._adopt_arrays(arrays)
    return enc
