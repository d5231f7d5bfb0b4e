"""A QONNX file set under qonnx's executor, against the int8 ONNX bundle of the same run under onnxruntime.

Both sides get the same held-out images of the run (:func:`~ffedge.train.parity.random_held_out_of_run`) with
every label: the QONNX side encoded as the file set's README says (the image, then ``label_channels.npy``'s row
of the label, or the manifest's encoding where the label is mixed into the image), the bundle's side by its own
encoding. The QONNX layer files are chained under ``qonnx.core.onnx_exec.execute_onnx``; the bundle's layer
files are chained under onnxruntime for the per-layer goodness, and its device path (:meth:`Runtime.goodness`)
gives the goodness over all labels that predicts. Reported: the largest goodness difference per layer and end
to end, top-1 agreement of goodness-over-all-labels predictions, and both accuracies.

The layer files have a batch of 1 (what FINN takes); they are run on many hypotheses at once after qonnx's own
``ChangeBatchSize`` (which also rewrites the batch of the ``Reshape`` constants) and ``InferShapes``.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ffedge.bundle import MANIFEST, QONNX_FORMAT, confined
from ffedge.bundle.names import GOODNESS, INPUT, NEXT
from ffedge.errors import FFEdgeError, one_line
from ffedge.fsutil import sha256_file
from ffedge.labels import encoding_from_config
from ffedge.progress import QuietReporter, Reporter
from ffedge.runtime import Runtime

CHUNK_HYPOTHESES = 250  # hypotheses per executor call: qonnx keeps every intermediate tensor of a call


def require_qonnx() -> None:
    """Fail with one line, before any work, when the qonnx package is missing."""
    if importlib.util.find_spec("qonnx") is None:
        raise FFEdgeError(
            "QONNX export and checks need the qonnx package (in the [train] extra on Python >= 3.11): pip install qonnx"
        )


def qonnx_version() -> str:
    from importlib.metadata import version

    return version("qonnx")


def batched(path: Path, batch: int) -> Any:
    """The QONNX model in ``path`` (batch 1) as a qonnx ``ModelWrapper`` for ``batch`` inputs at once.

    ``ChangeBatchSize`` sets the first input's and output's batch and the ``Reshape`` constants; the other
    outputs (``goodness``, ``feature``) are set here, then shapes are inferred again.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(str(path)).transform(ChangeBatchSize(batch))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = batch
    return model.transform(InferShapes())


class QonnxChain:
    """The layer files of a QONNX file set chained under qonnx's executor."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self._models: dict[tuple[int, int], Any] = {}

    def goodness(self, x_encoded: np.ndarray) -> np.ndarray:
        """Encoded hypotheses [N, C', H, W] -> goodness of every layer [L, N]."""
        from qonnx.core.onnx_exec import execute_onnx

        n = len(x_encoded)
        cur, out = x_encoded, []
        for i, path in enumerate(self.paths):
            if (i, n) not in self._models:
                self._models[(i, n)] = batched(path, n)
            res = execute_onnx(self._models[(i, n)], {INPUT: cur})
            cur = res[NEXT]
            out.append(res[GOODNESS])
        return np.stack(out)


def read_qonnx_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the QONNX file set ``folder``, after checking every listed file against its sha256."""
    try:
        m = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise FFEdgeError(f"{folder}: cannot read {MANIFEST} of a QONNX file set ({one_line(str(e))})") from None
    if not isinstance(m, dict) or m.get("format") != QONNX_FORMAT or not isinstance(m.get("files"), dict):
        raise FFEdgeError(f"{folder} is not a QONNX file set (ffedge export --format qonnx)")
    refs = [e.get("file") for e in m.get("layers", []) if isinstance(e, dict)] + [m.get("label_channels")]
    unlisted = [r for r in refs if r is not None and r not in m["files"]]
    if unlisted or not m.get("layers"):
        raise FFEdgeError(f"{folder}: {MANIFEST} names no layers, or files it does not list: {unlisted}")
    for name, digest in m["files"].items():
        f = confined(folder, name)
        if not f.is_file() or sha256_file(f) != digest:
            raise FFEdgeError(
                f"{folder}: {name!r} is missing, corrupt or changed: its sha256 does not match {MANIFEST}"
            )
    return m


def is_qonnx_folder(folder: Path) -> bool:
    """Whether ``folder``'s manifest says it is a QONNX file set (nothing else is checked)."""
    try:
        return json.loads((folder / MANIFEST).read_text()).get("format") == QONNX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def qonnx_inputs(folder: Path, manifest: dict[str, Any], x_norm: np.ndarray) -> np.ndarray:
    """Every label hypothesis of normalized images [N, C, H, W] as the file set's layer 0 takes them, image-major
    ([N*K, C', H, W]): the image then row k of ``label_channels`` (the file), or the manifest's encoding."""
    k = len(manifest["classes"])
    if manifest.get("label_channels"):
        table = np.load(folder / manifest["label_channels"], allow_pickle=False)[:k]
        n = len(x_norm)
        images = np.repeat(x_norm, k, axis=0)
        labels = np.tile(table, (n, 1, 1, 1))
        return np.ascontiguousarray(np.concatenate([images, labels], axis=1), dtype=np.float32)
    return encoding_from_config(manifest["encoding"]).encode_all(x_norm)


def qonnx_report(
    folder: str | Path,
    run_dir: str | Path,
    samples: int = 1000,
    reporter: Reporter | None = None,
    cfg_net: tuple[dict[str, Any], Any] | None = None,
    bundle: str | Path | None = None,
) -> dict[str, Any]:
    """Compare the QONNX file set in ``folder`` with the int8 bundle of ``run_dir`` on ``samples`` held-out images.

    ``bundle``: that int8 bundle (None: exported now into a temporary folder, without its parity check).
    ``cfg_net``: the run, already loaded. See the module docstring for what is compared.
    """
    import onnxruntime

    from ffedge.train.export import export_bundle
    from ffedge.train.parity import random_held_out_of_run
    from ffedge.train.run_files import load_run

    require_qonnx()
    rep = reporter or QuietReporter()
    folder = Path(folder)
    manifest = read_qonnx_manifest(folder)
    cfg, _ = cfg_net if cfg_net is not None else load_run(run_dir)
    with tempfile.TemporaryDirectory(prefix="ffedge-qonnx-check-") as tmp:
        if bundle is None:
            bundle = Path(tmp) / "int8"
            export_bundle(run_dir, bundle, precision="int8", verify_samples=0)
        rt = Runtime(str(bundle))
        if rt.bundle.manifest.precision != "int8":
            raise FFEdgeError(f"{bundle} is not an int8 bundle")
        if rt.bundle.classes != manifest["classes"] or [list(e.out_shape) for e in rt.bundle.layers] != [
            e["out_shape"] for e in manifest["layers"]
        ]:
            raise FFEdgeError(f"{bundle} and {folder} were not exported from the same run (classes or layers differ)")
        x, y = random_held_out_of_run(cfg, samples)
        chain = QonnxChain([folder / e["file"] for e in manifest["layers"]])
        k = rt.num_classes
        per = max(1, CHUNK_HYPOTHESES // k)
        g_q, g_o = [], []
        with rep.task(f"qonnx check on {len(y)} held-out images", -(-len(y) // per) + 1) as advance:
            for s in range(0, len(y), per):
                g_q.append(chain.goodness(qonnx_inputs(folder, manifest, x[s : s + per])))
                g_o.append(rt.run_layers(rt.encoding.encode_all(x[s : s + per]))[0])
                advance(1)
            device = rt.goodness(x)
            advance(1)
    n_layers = len(manifest["layers"])
    layer_q = np.concatenate(g_q, axis=1) if g_q else np.zeros((n_layers, 0), np.float32)
    layer_o = np.concatenate(g_o, axis=1) if g_o else np.zeros((n_layers, 0), np.float32)
    votes = layer_q[list(manifest["predict_layers"])].sum(0).reshape(-1, k)
    p_q, p_o = votes.argmax(1), device.argmax(1)

    def largest(a: np.ndarray) -> float:
        return float(np.abs(a).max()) if a.size else 0.0

    return {
        "samples": int(len(y)),
        "hypotheses": int(len(y) * k),
        "executor": f"qonnx {qonnx_version()} execute_onnx",
        "reference": f"int8 bundle under onnxruntime {onnxruntime.__version__}",
        "agreement": float((p_q == p_o).mean()) if len(y) else 1.0,
        "qonnx_accuracy": float((p_q == y).mean()) if len(y) else 0.0,
        "bundle_accuracy": float((p_o == y).mean()) if len(y) else 0.0,
        "max_goodness_diff": largest(votes - device),
        "max_goodness": largest(device),
        "layers": [
            {"max_goodness_diff": largest(layer_q[i] - layer_o[i]), "max_goodness": largest(layer_o[i])}
            for i in range(n_layers)
        ],
    }
