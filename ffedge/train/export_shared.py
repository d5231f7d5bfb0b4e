"""``net_shared.onnx``: the fused graph with layer 0 split into its image part (once per image) and its label part
(a constant per class).

When the label is an input channel of its own (``--label-mode channel``), layer 0's
input normalization and input quantizer act channel by channel and its convolution
is linear, so for image ``x`` and label ``k``::

    conv(q(norm([x, label_k]))) = conv_image(q(norm(x))) + conv_label(q(norm(label_k))) + bias

The second term does not depend on the image: the graph computes it for every class
(and the neutral label) from the same named weight initializers as ``net.onnx``, with
operators onnxruntime folds into one constant when it opens the session. Fine-tuning
patches those initializers by name, exactly as in ``net.onnx``.

Inputs: ``x`` [B, C, H, W] (the normalized image, no label) and ``labels`` [B, K'] int64
(rows of the label table: class indices, or ``K`` for the neutral label). Output:
``goodness`` [B, K'] only (the head's features of the neutral pass come from ``net.onnx``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

import ffedge
from ffedge.bundle.names import FUSED_FILE, GOODNESS, INPUT, LABELS, SHARED_FILE, SHARED_LABEL_TABLE
from ffedge.labels import encoding_from_config
from ffedge.train.export_graph import fused_ops, one_opset_per_domain
from ffedge.train.graph_shapes import graph_constants

# Operators of layer 0's input chain that act on each channel separately (given constant per-channel parameters).
_CHANNELWISE = ("BatchNormalization", "QuantizeLinear", "DequantizeLinear", "Clip", "Mul", "Add", "Sub", "Div")


class NotSeparable(Exception):
    """Layer 0 of this graph cannot be split into image and label parts (the reason is the message)."""


def _dequantize(name: str, x: str, scale: str, zero: str | None, nodes: list[onnx.NodeProto]) -> str:
    """``DequantizeLinear`` as ``(float(x) - float(zero)) * scale``: operators onnxruntime constant-folds
    (it keeps DequantizeLinear nodes for its QDQ fusions)."""
    nodes.append(helper.make_node("Cast", [x], [f"{name}_f"], to=onnx.TensorProto.FLOAT))
    cur = f"{name}_f"
    if zero:
        nodes.append(helper.make_node("Cast", [zero], [f"{name}_zf"], to=onnx.TensorProto.FLOAT))
        nodes.append(helper.make_node("Sub", [cur, f"{name}_zf"], [f"{name}_c"]))
        cur = f"{name}_c"
    nodes.append(helper.make_node("Mul", [cur, scale], [name]))
    return name


def build_shared(
    fused: onnx.ModelProto, label_table: np.ndarray, image_channels: int, features: Sequence[str] = ()
) -> onnx.ModelProto:
    """The shared graph of a fused graph (``net.onnx``); ``label_table`` [K + 1, L, H, W] is the label
    encoding's :meth:`~ffedge.labels.LabelEncoding.label_channels`. ``features``: outputs of ``net.onnx`` (head
    features, [B * K', F]) the graph also returns (``net_shared.onnx`` returns none). Raises :class:`NotSeparable`."""
    g = fused.graph
    inits = graph_constants(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    c, n_lab = image_channels, int(label_table.shape[1])
    width = c + n_lab

    # Layer 0's input chain: INPUT -> channel-wise nodes -> Conv.
    chain: list[onnx.NodeProto] = []
    cur = INPUT
    while True:
        users = consumers.get(cur, [])
        if len(users) != 1:
            raise NotSeparable(f"layer 0's input {cur!r} feeds {len(users)} nodes")
        node = users[0]
        if node.op_type == "Conv":
            conv = node
            break
        if node.op_type not in _CHANNELWISE or node.input[0] != cur:
            raise NotSeparable(f"layer 0 starts with {node.op_type}, which mixes channels")
        chain.append(node)
        cur = node.output[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if attrs.get("group", 1) != 1:
        raise NotSeparable("layer 0 is a grouped convolution")

    new_inits: list[onnx.TensorProto] = [numpy_helper.from_array(label_table.astype(np.float32), SHARED_LABEL_TABLE)]
    nodes: list[onnx.NodeProto] = []

    def param(name: str, part: slice, tag: str) -> str:
        """A chain node's parameter for the channels ``part``: scalars as they are, per-channel ones sliced."""
        if name == "":
            return name
        if name not in inits:
            raise NotSeparable(f"layer 0's input chain reads {name!r}, which is not a constant")
        a = inits[name]
        if a.size == 1:
            return name
        if a.ndim == 1 and a.shape[0] == width:
            sliced = a[part]
        elif a.ndim == 4 and a.shape[:2] == (1, width) and a.shape[2:] == (1, 1):
            sliced = a[:, part]
        else:
            raise NotSeparable(f"layer 0's input chain has a parameter of shape {list(a.shape)}")
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(sliced), f"{tag}_{name}"))
        return f"{tag}_{name}"

    def clone_chain(src: str, part: slice, tag: str, foldable: bool) -> str:
        """Layer 0's input chain on ``src`` with the parameters of channels ``part``; ``foldable``: no
        DequantizeLinear (the label branch, all constant, is folded by onnxruntime)."""
        x = src
        for k, node in enumerate(chain):
            ins = [x] + [param(i, part, tag) for i in node.input[1:]]
            out = f"{tag}_c{k}"
            if foldable and node.op_type == "DequantizeLinear":
                _dequantize(out, ins[0], ins[1], ins[2] if len(ins) > 2 else None, nodes)
            else:
                nodes.append(helper.make_node(node.op_type, ins, [out], name=f"{tag}_n{k}", domain=node.domain))
                nodes[-1].attribute.extend(node.attribute)
            x = out
        return x

    def foldable(t: str) -> str:
        """The conv's weight or bias ``t`` computed without DequantizeLinear (through Clip / Identity)."""
        if t in inits:
            return t
        node = producer.get(t)
        if node is None:
            raise NotSeparable(f"layer 0's weight {t!r} is not a constant")
        if node.op_type == "DequantizeLinear":
            return _dequantize(
                f"s_{t}", foldable(node.input[0]), node.input[1], node.input[2] if len(node.input) > 2 else None, nodes
            )
        if node.op_type in ("Clip", "Identity"):
            nodes.append(helper.make_node(node.op_type, [foldable(node.input[0]), *node.input[1:]], [f"s_{t}"]))
            nodes[-1].attribute.extend(node.attribute)
            return f"s_{t}"
        raise NotSeparable(f"layer 0's weight is computed by {node.op_type}")

    def const(name: str, values: list[int]) -> str:
        new_inits.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    weight = foldable(conv.input[1])
    bias = foldable(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else ""
    axis1 = const("s_axis1", [1])
    for tag, lo, hi in (("img", 0, c), ("lab", c, width)):
        nodes.append(
            helper.make_node(
                "Slice", [weight, const(f"s_{tag}_lo", [lo]), const(f"s_{tag}_hi", [hi]), axis1], [f"{tag}_w"]
            )
        )
    img = clone_chain(INPUT, slice(0, c), "img", foldable=False)
    nodes.append(helper.make_node("Conv", [img, "img_w"], ["img_acc"], name="img_conv"))
    nodes[-1].attribute.extend(conv.attribute)
    lab = clone_chain(SHARED_LABEL_TABLE, slice(c, width), "lab", foldable=True)
    nodes.append(helper.make_node("Conv", [lab, "lab_w"] + ([bias] if bias else []), ["lab_term"], name="lab_conv"))
    nodes[-1].attribute.extend(conv.attribute)
    out_channels = inits[_root(conv.input[1], producer, inits)].shape[0]
    h, w = label_table.shape[2:]
    nodes += [
        helper.make_node("Gather", ["lab_term", LABELS], ["lab_sel"], axis=0),  # [B, K', O, H, W]
        helper.make_node("Unsqueeze", ["img_acc", axis1], ["img_acc5"]),  # [B, 1, O, H, W]
        helper.make_node("Add", ["img_acc5", "lab_sel"], ["acc5"]),
        helper.make_node("Reshape", ["acc5", const("s_flat", [-1, out_channels, h, w])], [conv.output[0]]),
    ]
    drop = {id(n) for n in chain} | {id(conv)}
    rest = [n for n in g.node if id(n) not in drop]
    for n in rest:
        n.output[:] = ["s_goodness_flat" if o == GOODNESS else o for o in n.output]
    constants = [n for n in rest if n.op_type == "Constant"]
    nodes = constants + nodes + [n for n in rest if n.op_type != "Constant"]
    nodes += [
        helper.make_node("Shape", [LABELS], ["s_labels_shape"]),
        helper.make_node("Reshape", ["s_goodness_flat", "s_labels_shape"], [GOODNESS]),
    ]
    # Pruned first: a head feature of layer 0 that is not asked for must not keep the pool where it is.
    nodes = _pool_first(_needed(nodes, [GOODNESS, *features]), conv.output[0])
    x_in = next(i for i in g.input if i.name == INPUT)
    dims = [d.dim_param or d.dim_value for d in x_in.type.tensor_type.shape.dim]
    inputs = [
        helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [dims[0], c, *dims[2:]]),
        helper.make_tensor_value_info(LABELS, onnx.TensorProto.INT64, [dims[0], "k"]),
    ]
    # Goodness only: onnxruntime runs every node of a graph whatever outputs are asked for, and the head layers'
    # features (for the neutral pass, which net.onnx serves) cost about a fifth of the time of all labels.
    outputs = [helper.make_tensor_value_info(GOODNESS, onnx.TensorProto.FLOAT, [dims[0], "k"])]
    outputs += [o for o in g.output if o.name in features]
    graph = helper.make_graph(nodes, "ffedge_shared", inputs, outputs, list(g.initializer) + new_inits)
    model = helper.make_model(graph, opset_imports=one_opset_per_domain(fused), ir_version=fused.ir_version)
    model = onnx.utils.Extractor(model).extract_model([INPUT, LABELS], [o.name for o in outputs])
    model.producer_name = "ffedge"
    model.producer_version = ffedge.__version__
    onnx.checker.check_model(model, full_check=True)
    return model


# Element-wise and non-decreasing (with positive scales): a max-pool gives the same result before them as after.
_MONOTONE = ("Relu", "Clip", "QuantizeLinear", "DequantizeLinear")


def _pool_first(nodes: list[onnx.NodeProto], start: str) -> list[onnx.NodeProto]:
    """Move the max-pool after layer 0's activation (``start`` -> Relu -> Q -> DQ -> MaxPool) ahead of it, where
    nothing else reads the activation (layer 0 neither votes nor feeds the head): max commutes with non-decreasing
    functions, so the result is the same, and the activation runs on a quarter of the values."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    chain, cur = [], start
    while True:
        users = consumers.get(cur, [])
        if len(users) != 1 or users[0].input[0] != cur:
            return nodes
        node = users[0]
        if node.op_type == "MaxPool":
            break
        if node.op_type not in _MONOTONE:
            return nodes
        chain.append(node)
        cur = node.output[0]
    if not chain:
        return nodes
    pool, pooled = node, node.output[0]
    pool.input[0], pool.output[0] = start, "s_l0_pooled"
    chain[0].input[0] = "s_l0_pooled"
    chain[-1].output[0] = pooled
    moved = {id(n) for n in chain} | {id(pool)}
    at = next(i for i, n in enumerate(nodes) if id(n) == id(chain[0]))
    rest = [n for n in nodes if id(n) not in moved]
    before = [n for n in nodes[:at] if id(n) not in moved]
    return before + [pool, *chain] + rest[len(before) :]


def _needed(nodes: list[onnx.NodeProto], outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes (in their order) that ``outputs`` depend on."""
    want = set(outputs)
    keep = []
    for n in reversed(nodes):
        if want.intersection(n.output):
            keep.append(n)
            want.update(i for i in n.input if i)
    return keep[::-1]


def _root(t: str, producer: dict[str, onnx.NodeProto], inits: dict[str, np.ndarray]) -> str:
    """The initializer a weight tensor is computed from (through DequantizeLinear / Clip / Identity)."""
    while t not in inits:
        t = producer[t].input[0]
    return t


def write_shared(folder: Path, encoding: dict[str, Any], image_channels: int) -> dict[str, Any] | None:
    """Write ``net_shared.onnx`` beside ``net.onnx`` in ``folder``; its manifest entry, or None (and no file) when
    the label is not a channel of its own or layer 0 does not split (``--label-mode add``, ``--norm rms``)."""
    table = encoding_from_config(encoding).label_channels()
    if table is None:
        return None
    try:
        model = build_shared(onnx.load(str(folder / FUSED_FILE)), table, image_channels)
    except NotSeparable:
        return None
    onnx.save(model, str(folder / SHARED_FILE))
    return {"file": SHARED_FILE, "neutral": int(table.shape[0]) - 1, "ort_ops": fused_ops(folder / SHARED_FILE)}
