"""``net_topk.onnx``: mode ``topk`` in one graph, so that one onnxruntime call does what took three; and
``net_head.onnx``, its neutral pass and head alone: mode ``head`` in one call.

Inputs ``x`` [B, C, H, W] (the normalized image, as for ``net_shared.onnx``) and ``k`` [1] int64.
Inside: layer 0's image part once; a pass with the neutral label through the layers to the head's features; the
head (``probs`` [B, K]); ``TopK`` of its probabilities (``candidates`` [B, k], most probable first); a pass of those
``k`` labels through the layers (``goodness`` [B, k]). The label that wins is the candidate with the highest goodness.

Both passes are copies of the nodes of a shared graph (:func:`~ffedge.train.export_shared.build_shared`) that
depend on the labels (the neutral pass of one that also returns the head's features, the candidates' of one that
returns goodness only); they read the same named initializers as ``net.onnx`` and ``head.onnx``, so fine-tuning
patches this file by name like the others. Nodes that depend on the image only run once; constant-only nodes
(weight dequantization) are copied per pass, so that each convolution keeps a DequantizeLinear of its own
(onnxruntime fuses QDQ units only then).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

import ffedge
from ffedge.bundle.names import (
    CANDIDATES,
    FUSED_FILE,
    GOODNESS,
    HEAD_B,
    HEAD_FILE,
    HEAD_NET_FILE,
    HEAD_W,
    INPUT,
    LABELS,
    PROBS,
    SHARED_FILE,
    TOPK_FILE,
    TOPK_K,
    fused_feature,
    head_input,
)
from ffedge.labels import encoding_from_config
from ffedge.train.export_graph import fused_ops, one_opset_per_domain
from ffedge.train.export_shared import NotSeparable, build_shared

_NEUTRAL, _CANDIDATE, _HEAD = "n/", "c/", "h/"  # name prefixes of the two passes' and the head's tensors


def _depends(g: onnx.GraphProto) -> dict[str, frozenset[str]]:
    """Which of the graph inputs (``x``, ``labels``) each tensor depends on."""
    dep: dict[str, frozenset[str]] = {INPUT: frozenset([INPUT]), LABELS: frozenset([LABELS])}
    for n in g.node:
        d = frozenset().union(*(dep.get(i, frozenset()) for i in n.input))
        for o in n.output:
            dep[o] = d
    return dep


def _copy(node: onnx.NodeProto, rename: Any, prefix: str) -> onnx.NodeProto:
    """``node`` with its tensors renamed and its name prefixed (node names must be unique too)."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    if out.name:
        out.name = prefix + out.name
    out.input[:] = [rename(t) for t in node.input]
    out.output[:] = [rename(t) for t in node.output]
    return out


def build_topk(
    fused: onnx.ModelProto,
    head: onnx.ModelProto,
    votes: onnx.ModelProto,
    label_table: np.ndarray,
    image_channels: int,
    head_layers: Sequence[int],
) -> onnx.ModelProto:
    """The top-k graph of a bundle's ``net.onnx``, ``head.onnx`` and ``net_shared.onnx`` (``votes``, built from
    the same ``net.onnx``); ``label_table`` as for
    :func:`~ffedge.train.export_shared.build_shared` (its last row is the neutral label). Raises
    :class:`~ffedge.train.export_shared.NotSeparable`."""
    features = [fused_feature(i) for i in head_layers]
    # The neutral pass reads the head's features; the candidates' pass only goodness (``votes``: the bundle's
    # ``net_shared.onnx``), so its graph may move layer 0's max-pool ahead of the activation even where the head
    # reads layer 0.
    shared = build_shared(fused, label_table, image_channels, features)
    g = shared.graph
    own = {t.name for t in g.initializer}
    initializers = own | {t.name for t in votes.graph.initializer}

    def in_pass(prefix: str, labels: str, dep: dict[str, frozenset[str]]) -> Any:
        def rename(t: str) -> str:
            if t == "" or t in initializers or t == INPUT or dep.get(t) == {INPUT}:
                return t
            return labels if t == LABELS else prefix + t

        return rename

    def split(
        graph: onnx.GraphProto,
    ) -> tuple[dict[str, frozenset[str]], list[onnx.NodeProto], list[onnx.NodeProto], list[onnx.NodeProto]]:
        """Dependencies, and the nodes on the image only, on nothing (constants) and on the labels."""
        dep = _depends(graph)
        kinds: tuple[list[onnx.NodeProto], list[onnx.NodeProto], list[onnx.NodeProto]] = ([], [], [])
        for n in graph.node:
            d = dep[n.output[0]]
            kinds[0 if d == {INPUT} else 1 if not d else 2].append(n)
        return (dep, *kinds)

    dep, image_only, constant, labelled = split(g)
    v_dep, v_image_only, v_constant, v_labelled = split(votes.graph)
    # Both graphs build the image part alike (same names); unused copies are pruned below.
    have = {o for n in image_only for o in n.output}
    image_only += [n for n in v_image_only if not have.intersection(n.output)]
    nodes: list[onnx.NodeProto] = [*constant, *image_only]

    def const(name: str, value: np.ndarray) -> str:
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        return name

    neutral = n_classes = int(label_table.shape[0]) - 1  # the table's last row is the neutral label
    nodes += [
        helper.make_node("Shape", [INPUT], ["t_shape"]),
        helper.make_node(
            "Slice",
            ["t_shape", const("t_zero", np.array([0], np.int64)), const("t_one", np.array([1], np.int64))],
            ["t_batch"],
        ),
        helper.make_node("Concat", ["t_batch", "t_one"], ["t_neutral_shape"], axis=0),  # [B, 1]
        helper.make_node(
            "Expand", [const("t_neutral", np.array([[neutral]], np.int64)), "t_neutral_shape"], ["t_neutral_rows"]
        ),
    ]
    rename = in_pass(_NEUTRAL, "t_neutral_rows", dep)
    nodes += [_copy(n, rename, _NEUTRAL) for n in constant + labelled]

    # The head's tensors get a prefix of their own, but for its input features, its output and the weights that
    # fine-tuning patches by name.
    head_names = {head_input(i): rename(f) for i, f in zip(head_layers, features)}
    head_names.update({t: t for t in ("", PROBS, HEAD_W, HEAD_B)})
    head_inits = []
    for t in head.graph.initializer:
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = head_names.get(t.name, _HEAD + t.name)
        head_inits.append(c)
    nodes += [_copy(n, lambda t: head_names.get(t, _HEAD + t), _HEAD) for n in head.graph.node]
    nodes.append(helper.make_node("TopK", [PROBS, TOPK_K], ["t_top_probs", CANDIDATES], axis=1, largest=1, sorted=1))

    rename = in_pass(_CANDIDATE, CANDIDATES, v_dep)
    nodes += [_copy(n, rename, _CANDIDATE) for n in v_constant + v_labelled]
    nodes.append(helper.make_node("Identity", [rename(GOODNESS)], [GOODNESS]))

    x_in = next(i for i in g.input if i.name == INPUT)
    batch = x_in.type.tensor_type.shape.dim[0].dim_param or "n"
    inputs = [x_in, helper.make_tensor_value_info(TOPK_K, onnx.TensorProto.INT64, [1])]
    outputs = [
        helper.make_tensor_value_info(GOODNESS, onnx.TensorProto.FLOAT, [batch, "k"]),
        helper.make_tensor_value_info(CANDIDATES, onnx.TensorProto.INT64, [batch, "k"]),
        helper.make_tensor_value_info(PROBS, onnx.TensorProto.FLOAT, [batch, n_classes]),
    ]
    inits = list(g.initializer) + [t for t in votes.graph.initializer if t.name not in own]
    graph = helper.make_graph(nodes, "ffedge_topk", inputs, outputs, inits + head_inits)
    opsets: dict[str, int] = {}
    for o in [*one_opset_per_domain(shared), *one_opset_per_domain(head)]:
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], ir_version=shared.ir_version
    )
    model = onnx.utils.Extractor(model).extract_model([INPUT, TOPK_K], [o.name for o in outputs])
    model.producer_name = "ffedge"
    model.producer_version = ffedge.__version__
    onnx.checker.check_model(model, full_check=True)
    return model


def build_head_net(topk: onnx.ModelProto) -> onnx.ModelProto:
    """The one-pass head graph of a top-k graph: ``x`` -> ``probs`` (layer 0's image part, the neutral pass up to
    the last head layer, the head); the same initializer names, so fine-tuning patches it by name."""
    model = onnx.utils.Extractor(topk).extract_model([INPUT], [PROBS])
    model.graph.name = "ffedge_head"
    model.producer_name = "ffedge"
    model.producer_version = ffedge.__version__
    onnx.checker.check_model(model, full_check=True)
    return model


def write_topk(
    folder: Path, encoding: dict[str, Any], image_channels: int, head_layers: Sequence[int]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Write ``net_topk.onnx`` and ``net_head.onnx`` beside ``net.onnx``, ``head.onnx`` and ``net_shared.onnx`` in
    ``folder``; their manifest entries, or None (and no files) where the label does not split from layer 0. Call it
    only where :func:`~ffedge.train.export_shared.write_shared` wrote the shared graph."""
    table = encoding_from_config(encoding).label_channels()
    if table is None or not head_layers:
        return None, None
    try:
        model = build_topk(
            onnx.load(str(folder / FUSED_FILE)),
            onnx.load(str(folder / HEAD_FILE)),
            onnx.load(str(folder / SHARED_FILE)),
            table,
            image_channels,
            head_layers,
        )
    except NotSeparable:
        return None, None
    onnx.save(model, str(folder / TOPK_FILE))
    onnx.save(build_head_net(model), str(folder / HEAD_NET_FILE))
    return (
        {"file": TOPK_FILE, "ort_ops": fused_ops(folder / TOPK_FILE)},
        {"file": HEAD_NET_FILE, "ort_ops": fused_ops(folder / HEAD_NET_FILE)},
    )
