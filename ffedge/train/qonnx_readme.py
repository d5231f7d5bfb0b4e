"""The README.md inside a QONNX file set: which files, the input layout, the label step before layer 0, goodness.

Written from the file set's manifest, so a FINN or qonnx user can feed the layers without ffedge.
"""

from __future__ import annotations

from typing import Any

from ffedge.bundle import MANIFEST
from ffedge.bundle.names import GOODNESS, INPUT, NEXT, QONNX_LABEL_CHANNELS


def _batch1(shape: list[int]) -> str:
    return str([1, *shape])


def _label_step(m: dict[str, Any]) -> str:
    k = len(m["classes"])
    c = m["input"]["shape"][0]
    enc = m["encoding"]
    if m.get("label_channels"):
        c_in = m["layers"][0]["in_shape"][0]
        return (
            f"The label goes into input channels of its own: layer 0 takes the {c} image channel(s) followed by "
            f"the {c_in - c} label channel(s) of the hypothesis, `{QONNX_LABEL_CHANNELS}` row k "
            f"(float32 [{k + 1}, {c_in - c}, H, W]; rows 0..{k - 1} are the classes, row {k} the neutral "
            "label). In numpy:\n\n"
            f"    table = np.load('{QONNX_LABEL_CHANNELS}')\n"
            f"    x = np.concatenate([image, table[k][None]], axis=1)   # [1, {c_in}, H, W]\n"
        )
    return (
        f"The label is mixed into the image itself (encoding `{enc['name']}`), so layer 0 takes "
        f"{m['layers'][0]['in_shape'][0]} channel(s). Build the input with ffedge's numpy label code (no torch "
        "needed), from the manifest's `encoding`:\n\n"
        "    from ffedge.labels import encoding_from_config\n"
        f"    enc = encoding_from_config(json.load(open('{MANIFEST}'))['encoding'])\n"
        "    x = enc.encode(image, np.array([k]))\n"
    )


def readme_text(m: dict[str, Any]) -> str:
    """README.md of the QONNX file set described by manifest ``m``."""
    k = len(m["classes"])
    c, h, w = m["input"]["shape"]
    rows = "\n".join(
        f"| `{e['file']}` | {_batch1(e['in_shape'])} | {_batch1(e['out_shape'])} | {e['channels']} x {e['kernel']}x{e['kernel']}"
        f"{', max-pool 2x2' if e['pool'] else ''}, norm {e['norm']} | {e['quant']['weight_bits']} / "
        f"{e['quant']['act_bits']} |"
        for e in m["layers"]
    )
    arrays = ", ".join(f"`{f}`" for f in m["label_arrays"].values()) or "none"
    votes = ", ".join(str(i) for i in m["predict_layers"])
    return f"""# QONNX file set of `{m["source"]["run"]}`

Written by ffedge {m["ffedge_version"]} (`ffedge export RUN --format qonnx`) with Brevitas {m["exporter"]["brevitas"]}'s
`export_qonnx` and qonnx {m["exporter"]["qonnx"]}'s `cleanup_model`, for FINN's front end and qonnx. The same
Forward-Forward layers as the run's int8 ONNX bundle (`ffedge export RUN --format onnx`), one model per layer.
Not tested with FINN's compiler; checked with qonnx's executor against that int8 bundle under onnxruntime
(`{MANIFEST}`, key `check`).

## Files

| file | input `{INPUT}` | output `{NEXT}` | layer | bits (weights / activations) |
|---|---|---|---|---|
{rows}

- Each `layer{{i}}.onnx`: opset {m["opset"]}, `Quant` nodes in the domain
  `qonnx.custom_op.general` (weights stay float tensors, each behind its `Quant`), NCHW float32, batch 1.
  Outputs: `{NEXT}` (the next layer's input, after the optional max-pool), `{GOODNESS}` [1] and `feature`
  [1, C*g*g] (the activity averaged over a g x g grid, what ffedge's softmax head reads; the head itself is
  not exported here).
- `{MANIFEST}`: all of this machine-readable, the sha256 of every file, the quantization facts of each layer,
  and the executor check.
- Label arrays of the encoding, as the int8 bundle has them: {arrays}.

## Input of layer 0

1. Pixels: uint8 [{h}, {w}, {c}] (HWC), 0..255.
2. Normalize per channel: `(p / 255 - mean) / std` with mean {m["input"]["mean"]} and std {m["input"]["std"]},
   as NCHW float32 [1, {c}, {h}, {w}].
3. Add one label hypothesis k (0..{k - 1}), as below.

{_label_step(m)}
Layer i+1 takes layer i's `{NEXT}`.

## Goodness and prediction

`{GOODNESS}` is the mean over C, H, W of the squared ReLU output before pooling. To classify an image, run the
chain once per class k = 0..{k - 1} (their names: the manifest's `classes`), with the image and label k, sum the goodness of
layers {votes}, and take the k with the largest sum.

## Running it with qonnx

    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    out = execute_onnx(ModelWrapper('layer0.onnx'), {{'{INPUT}': x}})   # x float32 {_batch1(m["layers"][0]["in_shape"])}
    y, g = out['{NEXT}'], out['{GOODNESS}']

For many hypotheses at once: `model.transform(ChangeBatchSize(n))` (qonnx.transformation.change_batchsize; set
the batch of the `{GOODNESS}` and `feature` outputs too) and `InferShapes()`.

## FINN

FINN's front end takes QONNX as written here: load a layer with qonnx's `ModelWrapper`, then FINN's
`ConvertQONNXtoFINN` turns the `Quant` nodes into FINN's own quantized representation. The dataflow an
accelerator would build is `{INPUT}` -> `{NEXT}`; `{GOODNESS}` and `feature` are reductions (Pow, ReduceMean,
MatMul) that FINN may leave to the host. Not tested with FINN's compiler (FINN is not installed where ffedge is
tested): what is checked is qonnx's executor against the int8 bundle.
"""
