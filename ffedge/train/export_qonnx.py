"""Export a training run to a QONNX file set, the format FINN's front end and qonnx read: one model per FF layer.

:func:`export_qonnx_bundle` writes into a temporary folder beside ``out``:

- ``layer{i}.onnx`` per FF layer: Brevitas' ``export_qonnx`` of the same torch wrapper the int8 bundle exports
  (:class:`~ffedge.train.export_graph.LayerGraph`: outputs ``y``, ``goodness``, ``feature``), opset 13 plus
  qonnx's ``Quant`` (domain ``qonnx.custom_op.general``), batch 1 as FINN takes it, then cleaned up by qonnx's
  ``cleanup_model`` (shapes inferred, constants folded, the weights' ``Quant`` nodes kept), the graph's inputs
  and outputs keeping the bundle's names;
- the label encoding's arrays as the bundle has them, and ``label_channels.npy`` where the encoding appends the
  label as input channels (what layer 0's input gets per label, without ffedge);
- ``README.md`` (:mod:`ffedge.train.qonnx_readme`) and ``manifest.json`` (format ``ffedge-qonnx``).

It then runs the files under qonnx's executor against the int8 bundle of the same run under onnxruntime
(:mod:`ffedge.train.qonnx_check`), records the result in the manifest's ``check``, and renames the folder into
place only when the top-1 agreement reaches ``min_agreement``, as the int8 export does with its parity check.
"""

from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ffedge
from ffedge.bundle import MANIFEST, QONNX_FORMAT
from ffedge.bundle.names import INPUT, LAYER_OUTPUTS, QONNX_LABEL_CHANNELS, QONNX_README, layer_file
from ffedge.errors import CheckFailed
from ffedge.fsutil import atomic_write_json, atomic_write_text, replace_folder
from ffedge.labels import encoding_from_config
from ffedge.progress import QuietReporter, Reporter
from ffedge.train.bundle_folder import bundle_problem
from ffedge.train.export import DEFAULT_MIN_AGREEMENT, load_for_export
from ffedge.train.export_artifacts import hash_files, provenance, write_label_arrays
from ffedge.train.export_graph import OPSET, LayerGraph, quant_facts, quiet_export
from ffedge.train.model import FFConvLayer, FFNet
from ffedge.train.qonnx_check import qonnx_report, require_qonnx
from ffedge.train.qonnx_readme import readme_text
from ffedge.train.run_folder import temp_folder_beside

QONNX_VERSION = 1  # of the file set's manifest
QONNX_DOMAIN = "qonnx.custom_op.general"


def export_qonnx_layer(layer: FFConvLayer, in_shape: tuple[int, ...], path: Path, grid: int) -> dict[str, int]:
    """Write one FF layer as a cleaned-up QONNX model with batch 1; returns its op counts."""
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    quiet_export(
        export_qonnx,
        LayerGraph(layer, grid).eval(),
        args=torch.zeros(1, *in_shape),
        export_path=str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT],
        output_names=list(LAYER_OUTPUTS),
    )
    model = cleanup_model(ModelWrapper(str(path)))
    # cleanup_model names the graph's inputs and outputs global_in, global_out, global_out_1...
    ends = [v.name for v in model.graph.input] + [v.name for v in model.graph.output]
    for old, new in zip(ends, [INPUT, *LAYER_OUTPUTS]):
        model.rename_tensor(old, new)
    model.model.producer_name = "ffedge"
    model.model.producer_version = ffedge.__version__
    model.save(str(path))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def write_qonnx_layers(net: FFNet, cfg: dict[str, Any], folder: Path, reporter: Reporter) -> list[dict[str, Any]]:
    """Write ``layer{i}.onnx`` per FF layer into ``folder``; returns the manifest's per-layer entries."""
    layers: list[dict[str, Any]] = []
    in_shape: tuple[int, ...] = (cfg["model"]["in_channels"], *cfg["input"]["shape"][1:])
    with reporter.task(f"exporting {len(net.layers)} layers (QONNX)", len(net.layers)) as advance:
        for i, layer in enumerate(net.layers):
            spec = net.layer_specs[i]
            layers.append(
                {
                    "file": layer_file(i),
                    "in_shape": list(in_shape),
                    "out_shape": list(net.out_shapes[i]),
                    "feature_size": int(net.out_shapes[i][0]) * net.head_grid**2,
                    "channels": spec.channels,
                    "kernel": spec.kernel,
                    "pool": spec.pool,
                    "norm": layer.norm_kind,
                    "ops": export_qonnx_layer(layer, in_shape, folder / layer_file(i), net.head_grid),
                    "quant": quant_facts(layer),
                }
            )
            in_shape = tuple(net.out_shapes[i])
            advance(1)
    return layers


def write_label_channels(encoding: dict[str, Any], folder: Path) -> str | None:
    """``label_channels.npy`` [K + 1, L, H, W] (row K: the neutral label) where the encoding appends the label as
    channels after the image's; None (nothing written) where it mixes the label into the image."""
    table = encoding_from_config(encoding).label_channels()
    if table is None:
        return None
    np.save(folder / QONNX_LABEL_CHANNELS, np.ascontiguousarray(table, dtype=np.float32), allow_pickle=False)
    return QONNX_LABEL_CHANNELS


def build_qonnx_manifest(
    cfg: dict[str, Any],
    net: FFNet,
    run_dir: Path,
    layers: list[dict[str, Any]],
    label_arrays: dict[str, str],
    label_channels: str | None,
) -> dict[str, Any]:
    """The file set's manifest, without ``files`` and ``check`` (added once the files are written and checked)."""
    bits = layers[0]["quant"]
    return {
        "format": QONNX_FORMAT,
        "version": QONNX_VERSION,
        **provenance(cfg, run_dir),
        "opset": OPSET,
        "batch": 1,
        "exporter": {"brevitas": version("brevitas"), "qonnx": version("qonnx"), "torch": torch.__version__},
        "encoding": cfg["encoding"],
        "label_arrays": label_arrays,
        **({"label_channels": label_channels} if label_channels else {}),
        "layers": layers,
        "predict_layers": list(cfg["model"]["predict_layers"]),
        "goodness": "mean over C, H, W of the squared ReLU output before pooling (output 'goodness'); a label's "
        "score is the sum over predict_layers, the prediction the label of the largest score",
        "quantization": {
            "format": f"QONNX: Quant nodes ({QONNX_DOMAIN}) around float ops, opset {OPSET}, batch 1",
            "weights": f"{bits['weight_bits']}-bit signed, per tensor (float tensor + Quant)",
            "activations": f"layer input {bits['act_bits']}-bit signed, ReLU output {bits['act_bits']}-bit unsigned, "
            "per tensor",
            "bias": "32-bit signed Quant",
        },
    }


def export_qonnx_bundle(
    run_dir: str | Path,
    out: str | Path,
    force: bool = False,
    verify_samples: int = 1000,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Export the quantized run ``run_dir`` to the QONNX file set ``out``; returns its manifest (with ``check``).

    ``verify_samples`` held-out images (0: no check) are run under qonnx's executor and in the int8 bundle
    of the same run; the export fails, and nothing is written, below ``min_agreement`` top-1 agreement.
    """
    rep = reporter or QuietReporter()
    run_dir, out = Path(run_dir), Path(out)
    require_qonnx()
    cfg, net = load_for_export(
        run_dir,
        out,
        "int8",
        force,
        verify_samples,
        min_agreement,
        0,
        unquantized_hint="a QONNX export needs a quantized run (FINN builds integer hardware from its Quant nodes)",
    )
    tmp = temp_folder_beside(out)
    try:
        layers = write_qonnx_layers(net, cfg, tmp, rep)
        label_arrays = write_label_arrays(cfg["encoding"], tmp)
        label_channels = write_label_channels(cfg["encoding"], tmp)
        manifest = build_qonnx_manifest(cfg, net, run_dir, layers, label_arrays, label_channels)
        atomic_write_text(tmp / QONNX_README, readme_text(manifest))
        manifest["files"] = hash_files(tmp)
        atomic_write_json(tmp / MANIFEST, manifest)
        if verify_samples:
            report = qonnx_report(tmp, run_dir, verify_samples, rep, cfg_net=(cfg, net))
            manifest["check"] = report
            atomic_write_json(tmp / MANIFEST, manifest)
            if report["agreement"] < min_agreement:
                raise CheckFailed(
                    f"qonnx check failed: qonnx's executor agrees with the int8 bundle on {report['agreement']:.2%} "
                    f"of {report['samples']} held-out images (needs {min_agreement:.2%}); nothing was written to {out}"
                )
        replace_folder(tmp, out, bundle_problem)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
