"""Static reshape targets: ``Reshape`` shapes that the exporter computes at run time from ``Shape`` ops, written as
constants.

torch's exporter writes ``h.reshape(b, c, hh * ww)`` as ``Shape -> Gather -> Unsqueeze -> Concat`` per dimension,
even where every dimension but the batch is fixed. At batch 1 onnxruntime pays a few microseconds per node, and these
chains made up a third of the nodes of a graph with head features. Where every dimension of the target is a
known constant, or is the batch dimension of the reshaped tensor itself (written ``0``: ONNX's "copy this
dimension"), the target becomes one initializer and the chain is dropped. Other targets are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

Dim = int | str | None


def _dims(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Every tensor's inferred dimensions: an int where fixed, the symbol (``"n"``) where named, else None."""
    g = onnx.shape_inference.infer_shapes(model).graph
    out: dict[str, list[Dim]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return out


def graph_constants(g: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The value of every initializer and ``Constant`` node output (the float exporter writes some constants, a
    Clip's bounds, as ``Constant`` nodes)."""
    values = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def fold_reshape_targets(model: onnx.ModelProto) -> int:
    """Replace computed ``Reshape`` targets by constants where they are static (see the module doc), in place; drop
    the nodes nothing reads any more. Returns the number of targets replaced.

    Repeats until nothing changes: a folded target lets shape inference see the batch symbol through to the
    next reshape."""
    total = 0
    while n := _fold_once(model):
        total += n
    return total


def _fold_once(model: onnx.ModelProto) -> int:
    g = model.graph
    dims = _dims(model)
    consts = graph_constants(g)
    producer = {o: n for n in g.node for o in n.output}

    def resolve(t: str, data: str) -> list[int] | None:
        if t in consts:
            return [int(v) for v in np.asarray(consts[t]).reshape(-1)]
        node = producer.get(t)
        if node is None:
            return None
        if node.op_type == "Concat":
            parts = [resolve(i, data) for i in node.input]
            return None if any(p is None for p in parts) else [v for p in parts for v in p]  # type: ignore[union-attr]
        if node.op_type == "Unsqueeze":  # a scalar made a 1-element vector
            return resolve(node.input[0], data)
        if node.op_type == "Mul":  # a product of fixed dimensions (``hh * ww``)
            a, b = (resolve(i, data) for i in node.input)
            if a and b and len(a) == len(b) == 1 and a[0] > 0 and b[0] > 0:
                return [a[0] * b[0]]
            return None
        if node.op_type == "Gather" and node.input[1] in consts:
            src = producer.get(node.input[0])
            idx = np.asarray(consts[node.input[1]])
            if src is None or src.op_type != "Shape" or idx.size != 1 or len(src.attribute):
                return None
            shape = dims.get(src.input[0])
            i = int(idx.reshape(-1)[0])
            if shape is None or not -len(shape) <= i < len(shape):
                return None
            d = shape[i]
            if isinstance(d, int) and d > 0:
                return [d]
            mine = dims.get(data)
            if i == 0 and isinstance(d, str) and mine and mine[0] == d:
                return [0]
        return None

    replaced = 0
    for node in g.node:
        if node.op_type != "Reshape" or node.input[1] in consts:
            continue
        target = resolve(node.input[1], node.input[0])
        if target is None or target.count(-1) > 1:
            continue
        name = f"{node.output[0]}_shape"
        g.initializer.append(numpy_helper.from_array(np.array(target, np.int64), name))
        consts[name] = np.array(target, np.int64)
        node.input[1] = name
        replaced += 1
    if replaced:
        _drop_dead(g)
    return replaced


def _drop_dead(g: onnx.GraphProto) -> None:
    """Remove nodes and initializers no graph output depends on."""
    needed = {o.name for o in g.output}
    keep: list[onnx.NodeProto] = []
    for n in reversed(g.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
