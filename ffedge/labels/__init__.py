"""Label encodings: how a class hypothesis is written into a network input.

One module per encoding (``fourier``, ``morph``, ``onehot``: see each module's
docstring), each registering its :class:`LabelEncoding` subclass by name
(:mod:`ffedge.labels.registry`); :mod:`ffedge.labels.base` holds what they
share and :mod:`ffedge.labels.draw` pictures them (``ffedge labels``).
Importing this package registers every encoding module in it, so adding an
encoding is adding one module here. numpy only (drawing needs pillow).
"""

from __future__ import annotations

import importlib
import pkgutil

from ffedge.labels.base import ARRAY_ATOL, CONFIG_VERSION, MAX_PARAM, LabelEncoding, LabelPicture
from ffedge.labels.fourier import (
    FAN_FREQUENCY,
    FAN_MAX_CLASSES,
    LATTICE_MIN_LENGTH,
    FourierEncoding,
    fan_waves,
    grating,
    lattice_waves,
)
from ffedge.labels.morph import (
    MORPH_DEFAULT_OPS,
    MORPH_OPS,
    MORPH_SHRINK_MAX_RADIUS,
    MORPH_SHRINKING,
    MorphEncoding,
    line_directions,
    line_offsets,
    morph_apply,
    morph_transforms,
)
from ffedge.labels.onehot import ONEHOT_DEFAULT_AMPLITUDE, OneHotEncoding
from ffedge.labels.registry import encoding_class, encoding_from_config, encoding_names, make_encoding, register

# Every other module of this package is an encoding: importing it registers it.
_NOT_ENCODINGS = {"base", "registry", "draw"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_ENCODINGS:
        importlib.import_module(f"{__name__}.{_module.name}")
del _module

ENCODING_NAMES = encoding_names()

__all__ = [
    "ARRAY_ATOL",
    "CONFIG_VERSION",
    "ENCODING_NAMES",
    "FAN_FREQUENCY",
    "FAN_MAX_CLASSES",
    "LATTICE_MIN_LENGTH",
    "MAX_PARAM",
    "MORPH_DEFAULT_OPS",
    "MORPH_OPS",
    "MORPH_SHRINKING",
    "MORPH_SHRINK_MAX_RADIUS",
    "ONEHOT_DEFAULT_AMPLITUDE",
    "FourierEncoding",
    "LabelEncoding",
    "LabelPicture",
    "MorphEncoding",
    "OneHotEncoding",
    "encoding_class",
    "encoding_from_config",
    "encoding_names",
    "fan_waves",
    "grating",
    "lattice_waves",
    "line_directions",
    "line_offsets",
    "make_encoding",
    "morph_apply",
    "morph_transforms",
    "register",
]
