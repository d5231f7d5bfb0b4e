"""The bundle: the folder the exporter writes and the device reads (numpy only: no torch, no onnx).

- :mod:`ffedge.bundle.names`: the name of every file of a bundle and of every tensor in its ONNX graphs;
- :mod:`ffedge.bundle.manifest`: ``manifest.json`` as one typed, checked structure (its one reader and writer);
- :mod:`ffedge.bundle.io`: opening a bundle: paths confined, files sha256-verified, arrays loaded, label encoding rebuilt;
- :mod:`ffedge.bundle.update`: crash-safe, versioned in-place updates and rollback;
- :mod:`ffedge.bundle.onnx_patch`: reading and replacing ONNX initializers without the onnx package.

The format is documented in ``export/README.md``.
"""

from __future__ import annotations

from ffedge.bundle.io import (
    Bundle,
    check_files,
    check_paths,
    confined,
    load_label_arrays,
    load_master,
    load_npy,
    load_npz,
    load_replay,
    open_bundle,
    read_manifest,
)
from ffedge.bundle.manifest import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    PRECISIONS,
    QONNX_FORMAT,
    REQUIRED_KEYS,
    RESERVED,
    HeadEntry,
    LayerEntry,
    Manifest,
    read_manifest_file,
)
from ffedge.bundle.names import MANIFEST, VERSIONS

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MANIFEST",
    "PRECISIONS",
    "QONNX_FORMAT",
    "REQUIRED_KEYS",
    "RESERVED",
    "VERSIONS",
    "Bundle",
    "HeadEntry",
    "LayerEntry",
    "Manifest",
    "check_files",
    "check_paths",
    "confined",
    "load_label_arrays",
    "load_master",
    "load_npy",
    "load_npz",
    "load_replay",
    "open_bundle",
    "read_manifest",
    "read_manifest_file",
]
