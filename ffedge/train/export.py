"""Export a training run to a bundle: one ONNX file per FF layer, the head, label arrays, manifest.

int8 layers go through Brevitas' QCDQ exporter on its legacy (TorchScript) path,
which stores weights as int8 initializers (about 4x smaller than fp32) and lets
onnxruntime fuse DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv at
EXTENDED optimization. ``fp32`` exports the float copy of the same network.

Every layer file takes ``x`` [N, C, H, W] and returns ``y`` (the next layer's
input), ``goodness`` [N] (mean of squares before pooling) and ``feature`` [N, C]
(spatial mean before pooling, what the head reads). The bundle is built in a
temporary folder beside ``out`` and renamed into place only after the parity
check passed, so a failed export never leaves a half-written bundle.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import ffedge
from ffedge.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST, PRECISIONS
from ffedge.bundle_update import VERSIONS
from ffedge.errors import FFEdgeError
from ffedge.fsutil import check_out_folder, is_temp_of, ownership_problem, replace_folder, sha256_file
from ffedge.options import check_float, check_int
from ffedge.labels import encoding_from_config
from ffedge.manifest import write_manifest
from ffedge.progress import QuietReporter, Reporter
from ffedge.runtime import make_session
from ffedge.train.model import FFConvLayer, FFNet, float_copy
from ffedge.train.run_files import load_run

OPSET = 13
FUSED_FILE = "net.onnx"
MASTER_FILE = "master.npz"
REPLAY_FILE = "replay.npz"
DEFAULT_REPLAY = 500
# Export fails below this top-1 agreement between the torch model and the bundle
# (see export/README.md: one-step rounding differences flip well under 0.5% of
# predictions; a broken export (saturating kernels, wrong scales) flips several %).
DEFAULT_MIN_AGREEMENT = 0.99
FUSED_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger")


class LayerGraph(nn.Module):
    """One FF layer as exported: next input, goodness and head feature."""

    def __init__(self, layer: FFConvLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, y = self.layer(x)
        return y, h.pow(2).mean(dim=(1, 2, 3)), h.mean(dim=(2, 3))


class HeadGraph(nn.Module):
    """The softmax head on per-layer features: normalize each, concatenate, linear, softmax."""

    def __init__(self, head: nn.Linear, n_inputs: int) -> None:
        super().__init__()
        self.head = head
        self.n_inputs = n_inputs

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        fs = [f / (f.norm(dim=1, keepdim=True) + 1e-6) for f in feats]
        return torch.softmax(self.head(torch.cat(fs, dim=1)), dim=1)


def _strip_initializer_inputs(model: onnx.ModelProto) -> None:
    """Initializers listed as graph inputs block constant folding: make them constants only."""
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)


# Initializers with stable names, so on-device fine-tuning can find and replace them
# (in a fused graph they carry an ``l{i}_`` prefix).
TENSOR_NAMES = ("conv_w_q", "conv_w_scale", "conv_b_q", "conv_b_scale", "conv_w", "conv_b", "in_scale", "out_scale", "head_w", "head_b")


def _semantic_names(model: onnx.ModelProto) -> dict[str, str]:
    """Names for the conv's weight and bias (int8 + scale, or float) and the in/out activation scales."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    names: dict[str, str] = {}

    def source(t: str) -> tuple[str | None, str | None]:
        """(quantized tensor, scale) behind a DequantizeLinear (through a Clip), or (float tensor, None)."""
        if t in inits:
            return t, None
        node = producer.get(t)
        if node is None or node.op_type != "DequantizeLinear":
            return None, None
        q = node.input[0]
        clip = producer.get(q)
        if clip is not None and clip.op_type == "Clip":
            q = clip.input[0]
        return (q, node.input[1]) if q in inits else (None, None)

    for node in g.node:
        if node.op_type == "Conv":
            for role, t in (("w", node.input[1]), ("b", node.input[2] if len(node.input) > 2 else "")):
                q, scale = source(t)
                if q is not None:
                    names[q] = f"conv_{role}_q" if scale else f"conv_{role}"
                if scale in inits:
                    names[scale] = f"conv_{role}_scale"
        if node.op_type == "Gemm":
            names.update({t: f"head_{r}" for r, t in zip("wb", node.input[1:]) if t in inits})
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


def _finish_onnx(path: Path) -> None:
    model = onnx.load(str(path))
    _strip_initializer_inputs(model)
    _short_names(model, _semantic_names(model))
    model.producer_name = "ffedge"
    model.producer_version = ffedge.__version__
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _quiet_export(fn: Any, *args: Any, **kwargs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(*args, **kwargs)


def export_layer(layer: FFConvLayer, in_shape: tuple[int, int, int], path: Path, int8: bool) -> None:
    """Write one FF layer as ONNX with a dynamic batch axis."""
    graph = LayerGraph(layer).eval()
    x = torch.zeros(2, *in_shape)
    names = {"input_names": ["x"], "output_names": ["y", "goodness", "feature"]}
    dyn = {n: {0: "n"} for n in ("x", "y", "goodness", "feature")}
    if int8:
        from brevitas.export import export_onnx_qcdq

        _quiet_export(export_onnx_qcdq, graph, args=x, export_path=str(path), dynamo=False, opset_version=OPSET, dynamic_axes=dyn, **names)
    else:
        _quiet_export(torch.onnx.export, graph, (x,), str(path), dynamo=False, opset_version=OPSET, dynamic_axes=dyn, **names)
    _finish_onnx(path)


def export_head(net: FFNet, path: Path) -> None:
    """Write the float softmax head; inputs ``f{i}`` for each head layer i."""
    graph = HeadGraph(net.head, len(net.head_layers)).eval()
    feats = tuple(torch.zeros(2, net.out_shapes[i][0]) for i in net.head_layers)
    names = [f"f{i}" for i in net.head_layers]
    dyn = {n: {0: "n"} for n in names + ["probs"]}
    _quiet_export(
        torch.onnx.export, graph, feats, str(path), dynamo=False, opset_version=OPSET,
        input_names=names, output_names=["probs"], dynamic_axes=dyn,
    )
    _finish_onnx(path)


def _rename(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    g = model.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        v.name = mapping.get(v.name, v.name)
    for node in g.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


def fuse_layers(paths: list[Path], predict_layers: list[int], head_layers: list[int], out: Path) -> None:
    """Chain the layer files into one graph: ``x`` -> ``goodness`` (summed over the prediction
    layers) and ``feature{i}`` for the head layers.

    One onnxruntime session with one thread pool instead of one per layer, and no
    goodness computed for layers that do not vote: at batch 1 the per-session pools,
    calls and reductions cost more than the int8 convolutions themselves. The layer
    files stay the source of truth; this file is derived from them.
    """
    from onnx import compose, helper

    models = [compose.add_prefix(onnx.load(str(p)), f"l{i}_") for i, p in enumerate(paths)]
    fused = models[0]
    for i in range(1, len(models)):
        fused = compose.merge_models(fused, models[i], io_map=[(f"l{i - 1}_y", f"l{i}_x")])
    n = len(paths)
    _rename(fused, {"l0_x": "x", **{f"l{i}_feature": f"feature{i}" for i in range(n)}})
    votes = [f"l{i}_goodness" for i in predict_layers]
    fused.graph.node.append(helper.make_node("Sum" if len(votes) > 1 else "Identity", votes, ["goodness"], name="vote"))
    fused.graph.output.append(helper.make_tensor_value_info("goodness", onnx.TensorProto.FLOAT, ["n"]))
    fused = onnx.utils.Extractor(fused).extract_model(["x"], ["goodness"] + [f"feature{i}" for i in head_layers])
    _short_names(fused)
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
def _quant_facts(layer: FFConvLayer) -> dict[str, Any]:
    """Scales and bit widths of one Brevitas layer (per tensor)."""
    return {
        "input_scale": float(layer.in_quant.act_quant.scale()),
        "weight_scale": float(layer.conv.quant_weight().scale),
        "output_scale": float(layer.act.act_quant.scale()),
        "weight_bits": int(layer.conv.quant_weight().bit_width),
        "act_bits": int(layer.act.act_quant.bit_width()),
    }


def _known_bundle_entry(listed: set[str]) -> Any:
    """Says which paths in a bundle folder ffedge writes: the manifest, listed files, ``versions/``, temp files."""
    root_names = listed | {MANIFEST}

    def known(rel: PurePosixPath, is_dir: bool) -> bool:
        parts = rel.parts
        if len(parts) == 1:
            return parts[0] == VERSIONS if is_dir else parts[0] in root_names or is_temp_of(parts[0], root_names)
        if parts[0] != VERSIONS:
            return False
        if len(parts) == 2:
            if is_dir:
                return re.fullmatch(r"v\d+", parts[1]) is not None
            return parts[1] == ".lock" or re.fullmatch(r"\.?manifest\.v\d+\.json(\..*\.tmp)?", parts[1]) is not None
        return len(parts) == 3 and not is_dir and re.fullmatch(r"v\d+", parts[1]) is not None

    return known


def _listed_names(manifest: dict[str, Any]) -> set[str]:
    files = manifest.get("files")
    return {PurePosixPath(n).parts[0] for n in files if isinstance(n, str) and n} if isinstance(files, dict) else set()


def bundle_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a bundle ffedge wrote (so ``--force`` may not replace it), or None.

    A bundle is recognized by its manifest; every other entry must be a file some
    manifest (current or saved under ``versions/``) lists, or ffedge's own bookkeeping.
    """
    def read(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            return None

    if not (folder / MANIFEST).is_file():
        return f"it has no {MANIFEST}"
    m = read(folder / MANIFEST)
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT or not isinstance(m.get("files"), dict):
        return f"its {MANIFEST} is not an ffedge bundle's"
    listed = _listed_names(m)
    if (folder / VERSIONS).is_dir() and not (folder / VERSIONS).is_symlink():
        for saved in sorted((folder / VERSIONS).glob("manifest.v*.json")):
            old = read(saved)
            listed |= _listed_names(old) if isinstance(old, dict) else set()
    return ownership_problem(folder, _known_bundle_entry(listed - {VERSIONS}))


def _check_out(out: Path, force: bool) -> None:
    """``out`` can take the bundle: new, empty, or (with ``force``) a bundle ffedge wrote; its parent is writable."""
    if out.is_symlink():
        raise FFEdgeError(f"--out {out} is a symbolic link: name the folder itself")
    check_out_folder(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FFEdgeError(f"{out} already exists: pass --force to replace it")
        why = bundle_problem(out)
        if why is not None:
            raise FFEdgeError(f"--force replaces only a bundle ffedge wrote, and {out} is not one ({why}): nothing was deleted")
    out.absolute().parent.mkdir(parents=True, exist_ok=True)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished bundle into place; an old one is removed only after that (if it still is a bundle)."""
    replace_folder(tmp, out, bundle_problem)


def write_master(net: FFNet, path: Path) -> None:
    """Float master weights (conv weight/bias per layer, with its BatchNorm statistics or its rms norm's
    eps; head), as a plain npz."""
    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(net.layers):
        arrays[f"layer{i}.weight"] = layer.conv.weight.detach().numpy()
        arrays[f"layer{i}.bias"] = layer.conv.bias.detach().numpy()
        if layer.norm_kind == "rms":
            arrays[f"layer{i}.rms_eps"] = np.array(layer.norm.eps, dtype=np.float32)
        else:
            arrays[f"layer{i}.bn_mean"] = layer.norm.running_mean.numpy()
            arrays[f"layer{i}.bn_var"] = layer.norm.running_var.numpy()
            arrays[f"layer{i}.bn_eps"] = np.array(layer.norm.eps, dtype=np.float32)
    arrays["head.weight"] = net.head.weight.detach().numpy()
    arrays["head.bias"] = net.head.bias.detach().numpy()
    with open(path, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})


def write_replay(cfg: dict[str, Any], n: int, path: Path) -> int:
    """A class-balanced sample of ``n`` training examples (uint8 pixels and labels), for rehearsal during fine-tuning."""
    from ffedge.datasets import load_dataset

    tr = cfg["train"]
    ds = load_dataset(tr["dataset"], data_dir=tr.get("data_dir"), download=False)
    rng = np.random.default_rng(0)
    k = ds.num_classes
    per = [rng.permutation(np.flatnonzero(ds.y_train == c)) for c in range(k)]
    pick = np.sort(np.concatenate([p[: max(1, n // k)] for p in per]))[:n]
    with open(path, "wb") as f:
        np.savez(f, x=ds.x_train[pick], y=ds.y_train[pick].astype(np.int64))
    return int(len(pick))


def build_manifest(cfg: dict[str, Any], net: FFNet, precision: str, run_dir: Path, files: dict[str, str],
                   layers: list[dict[str, Any]], label_arrays: dict[str, str], fused: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a bundle (see export/README.md)."""
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    quant = {
        "precision": precision,
        "format": "QCDQ (QuantizeLinear / DequantizeLinear around float ops), opset 13" if precision == "int8" else "float32",
    }
    if precision == "int8":
        quant.update(
            weights=f"int8 storage, {layers[0]['quant']['weight_bits']}-bit symmetric, per tensor",
            activations="layer input int8 symmetric, ReLU output uint8 (zero point 0), per tensor",
            bias="int32",
        )
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "precision": precision,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ffedge_version": ffedge.__version__,
        "source": {
            "run": str(run_dir),
            "dataset": cfg["train"].get("dataset"),
            "epochs": metrics.get("epochs"),
            "run_test_accuracy": metrics.get("test_accuracy"),
        },
        "classes": list(cfg["classes"]),
        "input": {**cfg["input"], "pixels": "uint8 NHWC 0..255; normalized (x/255 - mean)/std per channel"},
        "encoding": cfg["encoding"],
        "label_arrays": label_arrays,
        "layers": layers,
        "predict_layers": list(cfg["model"]["predict_layers"]),
        "objective": {k: cfg["train"].get(k) for k in ("loss", "alpha", "threshold", "negatives")},
        "head": {"file": "head.onnx", "layers": list(net.head_layers)},
        "fused": fused,
        "quantization": quant,
        "files": files,
        "history": [],
    }


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    precision: str = "int8",
    force: bool = False,
    verify_samples: int = 1000,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    reporter: Reporter | None = None,
    master: bool = False,
    replay: int = DEFAULT_REPLAY,
) -> dict[str, Any]:
    """Export ``run_dir`` to the bundle folder ``out``; returns the manifest (with the parity report).

    ``master`` adds ``master.npz``: the float master weights that on-device
    fine-tuning (``ffedge finetune``) trains and re-quantizes, and ``replay.npz``:
    ``replay`` class-balanced training examples it rehearses so that the bundle
    does not forget its training data (0: none).
    """
    from ffedge.train.parity import parity_report

    rep = reporter or QuietReporter()
    if precision not in PRECISIONS:
        raise FFEdgeError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    run_dir, out = Path(run_dir), Path(out)
    cfg, net = load_run(run_dir)
    if precision == "int8" and not cfg["model"]["quant"]:
        raise FFEdgeError(f"{run_dir} was trained without quantization (--no-quant): export it with --fp32")
    check_float(min_agreement, "--min-agreement", 0.0, 1.0)
    check_int(verify_samples, "--verify-samples", 0)
    check_int(replay, "--replay", 0)
    _check_out(out, force)
    int8 = precision == "int8"
    model = net if int8 else float_copy(net)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.absolute().parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700
    try:
        files: dict[str, str] = {}
        layers: list[dict[str, Any]] = []
        in_shape = (cfg["model"]["in_channels"], *cfg["input"]["shape"][1:])
        with rep.task(f"exporting {len(model.layers)} layers ({precision})", len(model.layers) + 1) as advance:
            for i, layer in enumerate(model.layers):
                name = f"layer{i}.onnx"
                export_layer(layer, in_shape, tmp / name, int8)
                spec = model.layer_specs[i]
                entry: dict[str, Any] = {
                    "file": name, "in_shape": list(in_shape), "out_shape": list(model.out_shapes[i]),
                    "channels": spec.channels, "kernel": spec.kernel, "pool": spec.pool, "norm": layer.norm_kind,
                    "ort_ops": fused_ops(tmp / name),
                }
                if int8:
                    entry["quant"] = _quant_facts(layer)
                layers.append(entry)
                in_shape = model.out_shapes[i]
                advance(1)
            export_head(model, tmp / "head.onnx")
            fuse_layers([tmp / layer["file"] for layer in layers], list(cfg["model"]["predict_layers"]), list(model.head_layers), tmp / FUSED_FILE)
            advance(1)
        label_arrays = {}
        for key, arr in encoding_from_config(cfg["encoding"]).arrays().items():
            label_arrays[key] = f"labels_{key}.npy"
            np.save(tmp / label_arrays[key], np.ascontiguousarray(arr), allow_pickle=False)
        n_replay = 0
        if master:
            write_master(model, tmp / MASTER_FILE)
            if replay > 0:
                n_replay = write_replay(cfg, replay, tmp / REPLAY_FILE)
        for f in sorted(tmp.iterdir()):
            files[f.name] = sha256_file(f)
        fused = {"file": FUSED_FILE, "ort_ops": fused_ops(tmp / FUSED_FILE)}
        manifest = build_manifest(cfg, model, precision, run_dir, files, layers, label_arrays, fused)
        if master:
            manifest["master"] = {"file": MASTER_FILE}
        if n_replay:
            manifest["replay"] = {"file": REPLAY_FILE, "examples": n_replay}
        manifest = write_manifest(tmp / MANIFEST, manifest).to_dict()  # checked as every reader checks it
        if verify_samples:
            report = parity_report(tmp, run_dir, samples=verify_samples, reporter=rep, cfg_net=(cfg, net))
            manifest["parity"] = report
            manifest = write_manifest(tmp / MANIFEST, manifest).to_dict()
            if report["agreement"] < min_agreement:
                raise FFEdgeError(
                    f"parity check failed: the bundle agrees with the torch model on {report['agreement']:.2%} of "
                    f"{report['samples']} held-out images (needs {min_agreement:.2%}); nothing was written to {out}"
                )
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
