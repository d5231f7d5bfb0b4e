"""ONNX graphs of a trained net: the torch wrappers that are exported, the exporters, and the graph surgery after.

int8 layers go through Brevitas' QCDQ exporter on its legacy (TorchScript) path,
which stores weights as int8 initializers (about 4x smaller than fp32) and lets
onnxruntime fuse DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv at
EXTENDED optimization. ``fp32`` exports the float copy of the same network.

Every layer file takes ``x`` [N, C, H, W] and returns ``y`` (the next layer's
input), ``goodness`` [N] (mean of squares before pooling) and ``feature`` [N, C*g*g]
(the activity before pooling averaged over a g x g grid of cells, g the head's grid;
g = 1: the spatial mean; what the head reads). ``net.onnx`` chains the
layer files into one graph; they stay the source of truth.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import ffedge
from ffedge.bundle.names import (
    HEAD,
    CONV_FLOAT,
    CONV_Q,
    CONV_SCALE,
    FEATURE,
    FUSED_FILE,
    GOODNESS,
    HEAD_FILE,
    INITIALIZERS,
    INPUT,
    LAYER_OUTPUTS,
    NEXT,
    PROBS,
    fused_feature,
    fused_name,
    fused_prefix,
    head_input,
    layer_file,
)
from ffedge.progress import Reporter
from ffedge.runtime import make_session
from ffedge.train.graph_shapes import fold_reshape_targets
from ffedge.train.model import FFConvLayer, FFNet, goodness, head_pool, normalize_features

OPSET = 13
FUSED_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger")


class LayerGraph(nn.Module):
    """One FF layer as exported: next input, goodness and head feature (pooled to a ``grid`` x ``grid`` grid)."""

    def __init__(self, layer: FFConvLayer, grid: int = 1) -> None:
        super().__init__()
        self.layer = layer
        self.grid = grid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, y = self.layer(x)
        return y, goodness(h), head_pool(h, self.grid)


class HeadGraph(nn.Module):
    """The softmax head on per-layer features: normalize each cell, concatenate, linear, softmax."""

    def __init__(self, head: nn.Linear, n_inputs: int, grid: int = 1) -> None:
        super().__init__()
        self.head = head
        self.n_inputs = n_inputs
        self.cells = grid * grid

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        f = torch.cat([normalize_features(f, self.cells) for f in feats], dim=1)
        return torch.softmax(self.head(f), dim=1)


def _strip_initializer_inputs(model: onnx.ModelProto) -> None:
    """Initializers listed as graph inputs block constant folding: make them constants only."""
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)


# Initializers with stable names, so on-device fine-tuning can find and replace them
# (in a fused graph they carry an ``l{i}_`` prefix).
TENSOR_NAMES = INITIALIZERS


def _semantic_names(model: onnx.ModelProto) -> dict[str, str]:
    """Names for the conv's weight and bias (int8 + scale, or float) and the in/out activation scales."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    names: dict[str, str] = {}

    def source(t: str) -> tuple[str | None, str | None]:
        """(quantized tensor, scale) behind a DequantizeLinear, or (float tensor, None)."""
        if t in inits:
            return t, None
        node = producer.get(t)
        if node is None or node.op_type != "DequantizeLinear":
            return None, None
        q = node.input[0]
        return (q, node.input[1]) if q in inits else (None, None)

    for node in g.node:
        if node.op_type == "Conv":
            for role, t in (("w", node.input[1]), ("b", node.input[2] if len(node.input) > 2 else "")):
                q, scale = source(t)
                if q is not None:
                    names[q] = CONV_Q[role] if scale else CONV_FLOAT[role]
                if scale in inits:
                    names[scale] = CONV_SCALE[role]
        if node.op_type == "Gemm":
            names.update({t: HEAD[r] for r, t in zip("wb", node.input[1:]) if t in inits})
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            src = producer.get(node.input[0])
            role = "out_scale" if src is not None and src.op_type == "Relu" else "in_scale"
            names.setdefault(node.input[1], role)
    return names


def _short_names(model: onnx.ModelProto, names: dict[str, str] | None = None) -> None:
    """Replace the exporter's long internal tensor and node names (module paths) by short ones.

    Graph inputs and outputs keep their names, ``names`` gives chosen ones, and
    names ending in one of ``TENSOR_NAMES`` stay. This saves a few KB per file,
    which matters for bundles of small int8 layers.
    """
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {""}
    chosen = dict(names or {})
    short_names: dict[str, str] = {}

    def short(name: str) -> str:
        if name in chosen:
            return chosen[name]
        if name in keep or name.endswith(TENSOR_NAMES):
            return name
        return short_names.setdefault(name, f"t{len(short_names)}")

    for init in g.initializer:
        init.name = short(init.name)
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for vi in g.value_info:
        vi.name = short(vi.name)


# The QDQ pattern runtimes turn into integer kernels: never folded, even on constants (a weight's DequantizeLinear).
_KEEP_OPS = ("QuantizeLinear", "DequantizeLinear")


def fold_constants(model: onnx.ModelProto) -> int:
    """Replace every node whose inputs are all constants (except :data:`_KEEP_OPS`) by its value; returns how many.

    Brevitas leaves a ``Clip`` on each int8 weight constant (a no-op: the values are 7-bit already). onnxruntime
    folds it itself, but OpenVINO's low-precision pass then does not see a quantized weight and runs the
    convolution in f32/bf16; folded here, it runs it in int8. Initializers nothing reads any more are dropped.
    """
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    consts = {t.name: t for t in g.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    keep, folded = [], 0
    for node in g.node:
        ins = [i for i in node.input if i]
        if node.op_type in _KEEP_OPS or node.domain not in ("", "ai.onnx") or not all(i in consts for i in ins):
            keep.append(node)
            continue
        values = ReferenceEvaluator(node, opsets={"": opset}).run(
            None, {i: numpy_helper.to_array(consts[i]) for i in ins}
        )
        for name, value in zip(node.output, values):
            consts[name] = numpy_helper.from_array(np.asarray(value), name)
            g.initializer.append(consts[name])
        folded += 1
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    unused = [t for t in g.initializer if t.name not in used]
    for t in unused:
        g.initializer.remove(t)
    return folded


def _finish_onnx(path: Path) -> None:
    model = onnx.load(str(path))
    _strip_initializer_inputs(model)
    fold_constants(model)
    fold_reshape_targets(model)
    _short_names(model, _semantic_names(model))
    model.producer_name = "ffedge"
    model.producer_version = ffedge.__version__
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def quiet_export(fn: Any, *args: Any, **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(*args, **kwargs)


def export_layer(layer: FFConvLayer, in_shape: tuple[int, int, int], path: Path, int8: bool, grid: int = 1) -> None:
    """Write one FF layer as ONNX with a dynamic batch axis (its ``feature`` pooled to a ``grid`` x ``grid`` grid)."""
    graph = LayerGraph(layer, grid).eval()
    x = torch.zeros(2, *in_shape)
    names = {"input_names": [INPUT], "output_names": list(LAYER_OUTPUTS)}
    dyn = {n: {0: "n"} for n in (INPUT, *LAYER_OUTPUTS)}
    if int8:
        from brevitas.export import export_onnx_qcdq

        quiet_export(
            export_onnx_qcdq,
            graph,
            args=x,
            export_path=str(path),
            dynamo=False,
            opset_version=OPSET,
            dynamic_axes=dyn,
            **names,
        )
    else:
        quiet_export(
            torch.onnx.export, graph, (x,), str(path), dynamo=False, opset_version=OPSET, dynamic_axes=dyn, **names
        )
    _finish_onnx(path)


def export_head(net: FFNet, path: Path) -> None:
    """Write the float softmax head; inputs ``f{i}`` [N, C_i * grid * grid] for each head layer i."""
    cells = net.head_grid * net.head_grid
    graph = HeadGraph(net.head, len(net.head_layers), net.head_grid).eval()
    feats = tuple(torch.zeros(2, net.out_shapes[i][0] * cells) for i in net.head_layers)
    names = [head_input(i) for i in net.head_layers]
    dyn = {n: {0: "n"} for n in names + [PROBS]}
    quiet_export(
        torch.onnx.export,
        graph,
        feats,
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=names,
        output_names=[PROBS],
        dynamic_axes=dyn,
    )
    _finish_onnx(path)


def _rename(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    g = model.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        v.name = mapping.get(v.name, v.name)
    for node in g.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


def one_opset_per_domain(model: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    """The model's opset imports with one entry per domain (the highest version declared).

    ``onnx.compose.merge_models`` keeps every input's entries, so a fused graph would
    declare the default domain once per layer; onnx's version converter then upgrades
    only the first entry and its reference evaluator refuses the graph.
    """
    from onnx import helper

    best: dict[str, int] = {}
    for o in model.opset_import:
        best[o.domain] = max(best.get(o.domain, 0), o.version)
    return [helper.make_opsetid(d, v) for d, v in best.items()]


def fuse_layers(paths: list[Path], predict_layers: list[int], head_layers: list[int], out: Path) -> None:
    """Chain the layer files into one graph: ``x`` -> ``goodness`` (summed over the prediction
    layers) and ``feature{i}`` for the head layers.

    One onnxruntime session with one thread pool instead of one per layer, and no
    goodness computed for layers that do not vote: at batch 1 the per-session pools,
    calls and reductions cost more than the int8 convolutions themselves. The layer
    files stay the source of truth; this file is derived from them.
    """
    from onnx import compose, helper

    models = [compose.add_prefix(onnx.load(str(p)), fused_prefix(i)) for i, p in enumerate(paths)]
    fused = models[0]
    for i in range(1, len(models)):
        fused = compose.merge_models(fused, models[i], io_map=[(fused_name(i - 1, NEXT), fused_name(i, INPUT))])
    n = len(paths)
    _rename(fused, {fused_name(0, INPUT): INPUT, **{fused_name(i, FEATURE): fused_feature(i) for i in range(n)}})
    votes = [fused_name(i, GOODNESS) for i in predict_layers]
    fused.graph.node.append(helper.make_node("Sum" if len(votes) > 1 else "Identity", votes, [GOODNESS], name="vote"))
    fused.graph.output.append(helper.make_tensor_value_info(GOODNESS, onnx.TensorProto.FLOAT, ["n"]))
    fused = onnx.utils.Extractor(fused).extract_model([INPUT], [GOODNESS] + [fused_feature(i) for i in head_layers])
    _short_names(fused)
    opsets = one_opset_per_domain(fused)
    del fused.opset_import[:]
    fused.opset_import.extend(opsets)
    fused.producer_name = "ffedge"
    fused.producer_version = ffedge.__version__
    onnx.checker.check_model(fused, full_check=True)
    onnx.save(fused, str(out))


def fused_ops(path: Path) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (EXTENDED optimization), for integer kernels."""
    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "opt.onnx"
        make_session(path, threads=1, optimized_path=opt)
        model = onnx.load(str(opt))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@torch.no_grad()
def quant_facts(layer: FFConvLayer) -> dict[str, Any]:
    """Scales and bit widths of one Brevitas layer (per tensor)."""
    return {
        "input_scale": float(layer.in_quant.act_quant.scale()),
        "weight_scale": float(layer.conv.quant_weight().scale),
        "output_scale": float(layer.act.act_quant.scale()),
        "weight_bits": int(layer.conv.quant_weight().bit_width),
        "act_bits": int(layer.act.act_quant.bit_width()),
    }


def write_graphs(
    model: FFNet, cfg: dict[str, Any], folder: Path, precision: str, reporter: Reporter
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write ``layer{i}.onnx`` per FF layer, ``head.onnx`` and the fused ``net.onnx`` into ``folder``.

    Returns the manifest's per-layer entries (shapes, spec, the ops onnxruntime runs, int8 scales)
    and its ``fused`` entry.
    """
    layers: list[dict[str, Any]] = []
    in_shape = (cfg["model"]["in_channels"], *cfg["input"]["shape"][1:])
    int8 = precision == "int8"
    with reporter.task(f"exporting {len(model.layers)} layers ({precision})", len(model.layers) + 1) as advance:
        for i, layer in enumerate(model.layers):
            name = layer_file(i)
            export_layer(layer, in_shape, folder / name, int8, model.head_grid)
            spec = model.layer_specs[i]
            entry: dict[str, Any] = {
                "file": name,
                "in_shape": list(in_shape),
                "out_shape": list(model.out_shapes[i]),
                "channels": spec.channels,
                "kernel": spec.kernel,
                "pool": spec.pool,
                "norm": layer.norm_kind,
                "ort_ops": fused_ops(folder / name),
            }
            if int8:
                entry["quant"] = quant_facts(layer)
            layers.append(entry)
            in_shape = model.out_shapes[i]
            advance(1)
        export_head(model, folder / HEAD_FILE)
        fuse_layers(
            [folder / e["file"] for e in layers],
            list(cfg["model"]["predict_layers"]),
            list(model.head_layers),
            folder / FUSED_FILE,
        )
        advance(1)
    return layers, {"file": FUSED_FILE, "ort_ops": fused_ops(folder / FUSED_FILE)}
