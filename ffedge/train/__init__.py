"""The training side of ffedge (needs the ``[train]`` extra: torch, brevitas, onnx).

Importing this package without torch or brevitas raises :class:`MissingExtraError`
with the pip command that fixes it.
"""

from __future__ import annotations

import warnings

from ffedge.errors import MissingExtraError

# Brevitas warns on import of its export graph tools that an optional CUDA kernel
# package is missing; ffedge never uses it, so users should not see the warning.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

try:
    import brevitas  # noqa: F401
    import torch  # noqa: F401
except ImportError as _e:  # pragma: no cover - exercised in a subprocess test
    raise MissingExtraError("train", f"this command ({_e.name} is not installed)") from None

from ffedge.train.export import export_bundle  # noqa: E402
from ffedge.train.export_qonnx import export_qonnx_bundle  # noqa: E402
from ffedge.train.qonnx_check import qonnx_report  # noqa: E402
from ffedge.train.parity import parity_report  # noqa: E402
from ffedge.train.pipeline import resume_run, train_run  # noqa: E402
from ffedge.train.run_files import load_run  # noqa: E402
from ffedge.train.trainer import TrainConfig  # noqa: E402

__all__ = [
    "TrainConfig",
    "train_run",
    "resume_run",
    "load_run",
    "export_bundle",
    "export_qonnx_bundle",
    "parity_report",
    "qonnx_report",
]
