"""Running a bundle on the device: numpy and onnxruntime, no torch.

- :mod:`ffedge.runtime.session`: :class:`Runtime` (classification by goodness, head or top-k), the onnxruntime sessions;
- :mod:`ffedge.runtime.streaming`: low-memory mode (``Runtime(stream=True)``): one layer session at a time;
- :mod:`ffedge.runtime.modes`: the registry of prediction modes (``--mode``), light enough for the CLI's help;
- :mod:`ffedge.runtime.preprocess`: pixels -> network inputs, shared with the trainer;
- :mod:`ffedge.runtime.inputs`: image and .npy files -> pixels a bundle takes;
- :mod:`ffedge.runtime.evaluate`: accuracy and confusion matrix on a dataset that fits the bundle;
- :mod:`ffedge.runtime.timing`: latency per image; :mod:`ffedge.runtime.memory`: peak resident memory;
- :mod:`ffedge.runtime.bench`: bundles benchmarked against each other, a torch baseline and the machine's GEMM rate
  (:mod:`~ffedge.runtime.bench_worker`: each variant in a fresh process; :mod:`~ffedge.runtime.gemm_rate`,
  :mod:`~ffedge.runtime.macs`, :mod:`~ffedge.runtime.machine`).

``from ffedge.runtime import Runtime`` (and the other names of :mod:`ffedge.runtime.session`) works; the
session module, and with it onnxruntime, is imported on first use of such a name, so the numpy-only
modules (``preprocess``, ``memory``, ...) stay as light as they are. ``MODES`` and ``check_mode`` come
from :mod:`ffedge.runtime.modes` (no onnxruntime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ffedge.lazy import lazy_names

from ffedge.runtime.modes import MODES, check_mode

if TYPE_CHECKING:
    from ffedge.runtime.session import (
        DISABLED_OPTIMIZERS,
        ORT_ERRORS,
        Graph,
        Prediction,
        Runtime,
        as_pixels,
        check_graph,
        load_and_check,
        make_session,
        session_options,
    )

# The names of ffedge.runtime.session that ``from ffedge.runtime import ...`` gives.
_SESSION_NAMES = [
    "DISABLED_OPTIMIZERS",
    "ORT_ERRORS",
    "Graph",
    "Prediction",
    "Runtime",
    "as_pixels",
    "check_graph",
    "load_and_check",
    "make_session",
    "session_options",
]
__all__ = ["MODES", "check_mode", *_SESSION_NAMES]


__getattr__, __dir__ = lazy_names(globals(), "ffedge.runtime.session", _SESSION_NAMES)
