"""Every name of a bundle, in one place: its files, the tensors of its ONNX graphs, the arrays of its archives.

The exporter (``ffedge.train.export``) writes these names; the runtime, fine-tuning,
updates and the manifest checks read them. A name changed here changes the bundle
format (``export/README.md`` documents it): old bundles would no longer load.
"""

from __future__ import annotations

# ---------------------------------------------------------------- files of a bundle folder

MANIFEST = "manifest.json"
HEAD_FILE = "head.onnx"  # the softmax head
FUSED_FILE = "net.onnx"  # every layer in one graph
SHARED_FILE = "net_shared.onnx"  # every layer in one graph, layer 0's image part once per image
TOPK_FILE = "net_topk.onnx"  # mode topk in one graph: neutral pass, head, top k labels, their goodness
HEAD_NET_FILE = "net_head.onnx"  # mode head in one graph: layer 0's image part, the neutral pass to the head, the head
MASTER_FILE = "master.npz"  # float master weights (fine-tuning)
REPLAY_FILE = "replay.npz"  # rehearsal examples (fine-tuning)
QONNX_README = "README.md"  # in a QONNX file set (export --format qonnx): what its files are and how to feed them
QONNX_LABEL_CHANNELS = "label_channels.npy"  # in a QONNX file set: the channels layer 0's input appends per label


def layer_file(i: int) -> str:
    """The ONNX file of FF layer ``i``: ``layer{i}.onnx``."""
    return f"layer{i}.onnx"


def label_array_file(key: str) -> str:
    """The .npy file of the label encoding's array ``key``: ``labels_{key}.npy``."""
    return f"labels_{key}.npy"


# ---------------------------------------------------------------- in-place updates (versions/)

VERSIONS = "versions"  # the folder of updated files and saved manifests
LOCK = ".lock"  # in versions/: serializes updates
VERSION_DIR_PATTERN = r"v\d+"  # versions/v3/ holds the files version 3 wrote
SAVED_MANIFEST_PATTERN = r"manifest\.v(\d+)\.json"  # versions/manifest.v2.json: version 2's manifest, saved
SAVED_MANIFEST_GLOB = "manifest.v*.json"


def version_dir(version: int) -> str:
    """The folder (under ``versions/``) of the files ``version`` wrote: ``v{version}``."""
    return f"v{version}"


def version_path(version: int, name: str) -> str:
    """Relative path (as the manifest spells it) of file ``name`` written by ``version``."""
    return f"{VERSIONS}/{version_dir(version)}/{name}"


def saved_manifest_name(version: int) -> str:
    """The saved manifest of ``version`` in ``versions/``: ``manifest.v{version}.json``."""
    return f"manifest.v{version}.json"


# ---------------------------------------------------------------- ONNX graph inputs and outputs

INPUT = "x"  # a layer's and the fused graph's input: encoded images [N, C, H, W]
NEXT = "y"  # a layer's output: the next layer's input
GOODNESS = "goodness"  # [N]: a layer's goodness; the fused graph's, summed over the prediction layers
FEATURE = "feature"  # [N, C*g*g]: the activity before pooling averaged over the head's g x g grid; what the head reads
LAYER_OUTPUTS = (NEXT, GOODNESS, FEATURE)
PROBS = "probs"  # the head's output [N, K]
LABELS = "labels"  # the shared graph's second input: [N, K'] int64 rows of its label table (class index, K: neutral)
TOPK_K = "k"  # the top-k graph's second input: [1] int64, how many labels the head proposes
CANDIDATES = "candidates"  # the top-k graph's output [N, k] int64: the labels proposed, most probable first
SHARED_LABEL_TABLE = "l0_label_table"  # the shared graph's label channels [K + 1, L, H, W] (initializer)
FUSED_FEATURE_PATTERN = r"feature([0-9]{1,6})"


def fused_feature(i: int) -> str:
    """The fused graph's output of layer ``i``'s feature: ``feature{i}``."""
    return f"{FEATURE}{i}"


def head_input(i: int) -> str:
    """The head's input of layer ``i``'s feature: ``f{i}``."""
    return f"f{i}"


def fused_prefix(i: int) -> str:
    """What the fused graph puts before the names of layer ``i``'s tensors: ``l{i}_``."""
    return f"l{i}_"


def fused_name(i: int, name: str) -> str:
    """Tensor ``name`` (an input, output or initializer) of layer ``i``'s file in the fused graph: ``l{i}_{name}``."""
    return f"{fused_prefix(i)}{name}"


# ---------------------------------------------------------------- ONNX initializers (what fine-tuning replaces)

CONV_W_Q = "conv_w_q"  # int8 conv weight
CONV_W_SCALE = "conv_w_scale"
CONV_B_Q = "conv_b_q"  # int32 conv bias
CONV_B_SCALE = "conv_b_scale"
CONV_W = "conv_w"  # float conv weight (fp32 bundles)
CONV_B = "conv_b"
IN_SCALE = "in_scale"  # input activation scale
OUT_SCALE = "out_scale"  # output activation scale
HEAD_W = "head_w"  # the head's float weight and bias
HEAD_B = "head_b"
INITIALIZERS = (CONV_W_Q, CONV_W_SCALE, CONV_B_Q, CONV_B_SCALE, CONV_W, CONV_B, IN_SCALE, OUT_SCALE, HEAD_W, HEAD_B)
# By role of the tensor ("w": weight, "b": bias).
CONV_Q = {"w": CONV_W_Q, "b": CONV_B_Q}
CONV_SCALE = {"w": CONV_W_SCALE, "b": CONV_B_SCALE}
CONV_FLOAT = {"w": CONV_W, "b": CONV_B}
HEAD = {"w": HEAD_W, "b": HEAD_B}


# ---------------------------------------------------------------- arrays of master.npz and replay.npz

MASTER_WEIGHT = "weight"  # per layer, after the layer{i}. prefix
MASTER_BIAS = "bias"
MASTER_BN_MEAN = "bn_mean"
MASTER_BN_VAR = "bn_var"
MASTER_BN_EPS = "bn_eps"
MASTER_RMS_EPS = "rms_eps"
MASTER_HEAD_WEIGHT = "head.weight"
MASTER_HEAD_BIAS = "head.bias"
REPLAY_IMAGES = "x"  # uint8 [N, H, W, C]
REPLAY_LABELS = "y"  # [N]


def master_prefix(i: int) -> str:
    """What the ``master.npz`` arrays of layer ``i`` start with: ``layer{i}.``."""
    return f"layer{i}."


def master_key(i: int, name: str) -> str:
    """The ``master.npz`` array ``name`` of layer ``i``: ``layer{i}.{name}``."""
    return f"{master_prefix(i)}{name}"


def master_keys(norm: str) -> tuple[str, ...]:
    """The ``master.npz`` arrays of one layer (each prefixed ``layer{i}.``) for its normalization."""
    if norm == "rms":
        return (MASTER_WEIGHT, MASTER_BIAS, MASTER_RMS_EPS)
    return (MASTER_WEIGHT, MASTER_BIAS, MASTER_BN_MEAN, MASTER_BN_VAR, MASTER_BN_EPS)
