"""Run a bundle with onnxruntime: classification by goodness over label hypotheses (device side).

No torch here: numpy, onnxruntime and ffedge's own label encodings only.
The modes are those of :mod:`ffedge.runtime.modes`; each is a ``predict_<mode>`` method:

- ``all``: every image with every label; the label whose hypothesis has the
  highest goodness (summed over the bundle's prediction layers) wins. All B*K
  hypotheses go through the graph in one call (chunked only above ``max_hypotheses``).
- ``head``: one pass with the neutral label; the softmax head decides (one call of ``net_head.onnx`` where the bundle
  has it: layer 0's image part, the neutral pass up to the last head layer, the head).
- ``topk``: the head proposes ``k`` labels, goodness decides among them (one call of ``net_topk.onnx`` where the
  bundle has it: the neutral pass, the head and the ``k`` candidates in one graph).

A bundle with a shared graph (``net_shared.onnx``, manifest ``shared``) runs every mode
on it: it takes each image once with the label rows to try, and computes layer 0's
image part once per image. Other bundles (and ``shared=False``) encode every
hypothesis and run ``net.onnx``.
"""

from __future__ import annotations

import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple, Sequence, Union

import numpy as np
import onnxruntime as ort

from ffedge.bundle import Bundle, check_files, load_master, load_replay, open_bundle, read_manifest
from ffedge.bundle.names import (
    CANDIDATES,
    FEATURE,
    FUSED_FEATURE_PATTERN,
    GOODNESS,
    INPUT,
    LABELS,
    MASTER_HEAD_BIAS,
    MASTER_HEAD_WEIGHT,
    NEXT,
    PROBS,
    TOPK_K,
    fused_feature,
    head_input,
    master_key,
    master_keys,
)
from ffedge.errors import FFEdgeError, quoted
from ffedge.options import check_int, check_threads
from ffedge.runtime.engines import DEFAULT_ENGINE, OpenVINOGraph, check_engine, check_providers
from ffedge.runtime.modes import DEFAULT_MODE, mode_spec
from ffedge.runtime.preprocess import check_pixels, normalize

# What onnxruntime raises (its own exception types, none a subclass of a builtin one but Exception).
ORT_ERRORS = tuple(
    v
    for v in vars(__import__("onnxruntime.capi.onnxruntime_pybind11_state", fromlist=["_"])).values()
    if isinstance(v, type) and issubclass(v, Exception)
)


class Prediction(NamedTuple):
    """``labels`` [B] class indices; ``scores`` [B, K]: goodness per label (``all``; ``topk``: -inf
    for labels not tried) or the head's softmax probabilities (``head``)."""

    labels: np.ndarray
    scores: np.ndarray


# onnxruntime moves MaxPool ahead of DequantizeLinear onto uint8 tensors, where its
# kernel is about 8x slower than the float one (measured with ORT 1.32 on x86).
DISABLED_OPTIMIZERS = ["QDQPropagationTransformer"]


def session_options(
    threads: int | None, spin: bool = True, arena: bool = True, mem_pattern: bool = True, optimize: bool = True
) -> ort.SessionOptions:
    """EXTENDED optimization: the level at which onnxruntime fuses QDQ convs into QLinearConv.

    ``spin=False`` stops idle pool threads from busy-waiting: with one pool per layer
    session, spinning pools of finished layers steal the cores of the running one. ``mem_pattern=False``: no
    block planned (and held) for all intermediate tensors of a run (streaming mode). ``optimize=False``: no graph
    optimization at all, for a session that is only opened to check a file (``ffedge info``): onnxruntime still
    parses and validates the model and finds a kernel for every node.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not arena:  # lower peak memory, a little slower: buffers are freed instead of pooled
        so.enable_cpu_mem_arena = False
    if not mem_pattern:
        so.enable_mem_pattern = False
    return so


def make_session(
    path: str | Path,
    threads: int | None = None,
    spin: bool = True,
    providers: Sequence[str] | None = None,
    optimized_path: str | Path | None = None,
    arena: bool = True,
    mem_pattern: bool = True,
    optimize: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session as ffedge runs it; a file onnxruntime rejects is a one-line error."""
    so = session_options(threads, spin, arena, mem_pattern, optimize)
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(
            str(path),
            so,
            providers=list(providers or ["CPUExecutionProvider"]),
            disabled_optimizers=DISABLED_OPTIMIZERS,
        )
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FFEdgeError(f"{path}: onnxruntime cannot load it: {msg}") from None


Dims = Sequence["int | None"]
# A graph of a bundle as the runtime runs it: onnxruntime's (below) or OpenVINO's (ffedge.runtime.engines).
AnyGraph = Union["Graph", OpenVINOGraph]


class Graph:
    """An onnxruntime session of one bundle file, its inputs and outputs checked against the manifest.

    ``run`` is the session's; an error onnxruntime raises while running is a one-line error.
    """

    def __init__(self, session: ort.InferenceSession, name: str) -> None:
        self.session = session
        self.name = name

    def run(self, outputs: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self.session.run(outputs, feeds)
        except ORT_ERRORS as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise FFEdgeError(f"{quoted(self.name)}: onnxruntime failed to run it: {msg}") from None

    def get_inputs(self) -> list:  # type: ignore[type-arg]
        return self.session.get_inputs()

    def get_outputs(self) -> list:  # type: ignore[type-arg]
        return self.session.get_outputs()


def _signature(
    args: Sequence,  # type: ignore[type-arg]
    want: dict[str, Dims],
    what: str,
    where: str,
    ordered: bool = True,
    ints: Sequence[str] = (),
) -> None:
    """Graph inputs or outputs ``args`` have exactly the names of ``want`` (in its order), float32 (int64 for the
    names in ``ints``) and the shapes given.

    A dim of ``want`` that is None is free (the batch); a symbolic dim of the graph fits any size.
    """
    got = [a.name for a in args]
    if (got if ordered else sorted(got)) != (list(want) if ordered else sorted(want)):
        raise FFEdgeError(f"{where} does not fit the manifest: its {what} are {quoted(got)}, expected {list(want)}")
    for a in args:
        dims = want[a.name]
        kind = "int64" if a.name in ints else "float"
        shape = list(a.shape) if a.shape is not None else None
        bad = (
            a.type != f"tensor({kind})"
            or shape is None
            or len(shape) != len(dims)
            or any(d is not None and isinstance(s, int) and s != d for s, d in zip(shape, dims))
        )
        if bad:
            expected = ["N" if d is None else d for d in dims]
            raise FFEdgeError(
                f"{where} does not fit the manifest: {what[:-1]} {quoted(a.name)} is {a.type} "
                f"{quoted(shape)}, expected {kind} {expected}"
            )


def check_graph(graph: AnyGraph, kind: str, bundle: Bundle, index: int = 0) -> None:
    """The inputs and outputs of a ``layer`` (number ``index``), ``fused``, ``shared``, ``topk``, ``head_net`` or
    ``head`` graph, against the manifest."""
    m = bundle.manifest
    cells = m.head.cells if m.head else 1  # a layer's feature: C values per cell of the head's grid
    ins, outs = graph.get_inputs(), graph.get_outputs()
    where = f"{bundle.path}: {quoted(graph.name)} ({kind if kind != 'layer' else f'layer {index}'})"
    if kind == "layer":
        layer = m.layers[index]
        _signature(ins, {INPUT: [None, *layer.in_shape]}, "inputs", where)
        c, h, w = layer.out_shape
        _signature(outs, {NEXT: [None, c, h, w], GOODNESS: [None], FEATURE: [None, c * cells]}, "outputs", where)
    elif kind == "shared":  # goodness only: the features of the neutral pass come from net.onnx
        _signature(ins, {INPUT: [None, *m.input.shape], LABELS: [None, None]}, "inputs", where, ints=[LABELS])
        _signature(outs, {GOODNESS: [None, None]}, "outputs", where)
    elif kind == "head_net":
        _signature(ins, {INPUT: [None, *m.input.shape]}, "inputs", where)
        _signature(outs, {PROBS: [None, len(m.classes)]}, "outputs", where)
    elif kind == "topk":
        _signature(ins, {INPUT: [None, *m.input.shape], TOPK_K: [1]}, "inputs", where, ints=[TOPK_K])
        want: dict[str, Dims] = {GOODNESS: [None, None], CANDIDATES: [None, None], PROBS: [None, len(m.classes)]}
        _signature(outs, want, "outputs", where, ints=[CANDIDATES])
    elif kind == "fused":
        _signature(ins, {INPUT: [None, *m.layers[0].in_shape]}, "inputs", where)
        want = {GOODNESS: [None]}
        head_layers = m.head.layers if m.head else []
        # Features of other layers may be there too (unused); anything else (a layer's 'y') is another graph.
        found = [re.fullmatch(FUSED_FEATURE_PATTERN, a.name) for a in outs]
        extra = {int(f.group(1)) for f in found if f and int(f.group(1)) < len(m.layers)}
        for i in sorted({*head_layers, *extra}):
            want[fused_feature(i)] = [None, m.layers[i].out_shape[0] * cells]
        _signature(outs, want, "outputs", where, ordered=False)
    elif kind == "head":
        assert m.head is not None
        _signature(
            ins,
            {head_input(i): [None, m.layers[i].out_shape[0] * cells] for i in m.head.layers},
            "inputs",
            where,
            ordered=False,
        )
        _signature(outs, {PROBS: [None, len(m.classes)]}, "outputs", where)
    else:
        raise ValueError(f"unknown graph kind {kind!r}")


def as_pixels(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Check a batch of images against the bundle's (C, H, W) and return uint8 NHWC.

    Accepts [B, H, W, C], or [B, H, W] when C is 1; uint8, or floats holding pixel
    values 0..255. Never resizes: a wrong size is an error.
    """
    c, h, w = shape
    x = np.asarray(images)
    if x.ndim == 3 and c == 1:
        x = x[..., None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
        raise FFEdgeError(
            f"images of shape {list(x.shape[1:]) if x.ndim >= 3 else list(x.shape)} do not fit this bundle, "
            f"which takes {h}x{w} pixels with {c} channel(s) (resize with --resize or ffedge.datasets.load_images)"
        )
    return check_pixels(x, "images")


class Runtime:
    """A loaded bundle: the fused whole-net session (or one session per FF layer), plus the head.

    The per-layer sessions are opened on first use (per-layer timing, parity
    checks, bundles without a fused graph).
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        verify: bool = True,
        max_hypotheses: int = 4096,
        arena: bool = True,
        replaced: dict[str, Path] | None = None,
        stream: bool = False,
        shared: bool = True,
        engine: str = DEFAULT_ENGINE,
        optimize: bool = True,
    ) -> None:
        """``arena=False`` trades a little speed for lower peak memory. ``stream=True`` (low-memory mode,
        :mod:`ffedge.runtime.streaming`) opens no session here: each pass opens the layer files one at a
        time (arena off) and drops each after its layer, the head only when a mode uses it, with at most
        :data:`~ffedge.runtime.streaming.STREAM_HYPOTHESES` hypotheses per pass; same predictions, slower. ``replaced`` maps file
        names of the bundle to other files to run instead (candidate files of an update,
        evaluated before they are committed; they are not checksum-verified). ``shared=False``
        runs ``net.onnx`` on encoded hypotheses even where the bundle has a shared graph.
        ``providers``: onnxruntime execution providers in priority order (checked: :func:`check_providers`).
        ``engine="openvino"`` runs every graph with OpenVINO instead (:mod:`ffedge.runtime.engines`; ``net.onnx``,
        not the shared graph; no providers, no streaming). ``optimize=False`` opens the graphs without onnxruntime's
        graph optimization: to load and check them (``ffedge info``), not to run them fast.

        Every graph opened is checked against the manifest (:func:`check_graph`).
        """
        self.threads = check_threads(threads)
        self.engine = check_engine(engine)
        if engine != "onnxruntime" and (providers or stream):
            raise FFEdgeError(f"{'--providers' if providers else '--low-memory'} needs --engine onnxruntime")
        self.bundle: Bundle = open_bundle(bundle_dir, verify=verify)
        self.stream = stream
        self.arena = arena and not stream
        self.optimize = optimize
        self.replaced = dict(replaced or {})
        self.encoding = self.bundle.encoding
        self.providers = check_providers(providers)
        self.max_hypotheses = max(1, int(max_hypotheses))
        if stream:
            from ffedge.runtime.streaming import STREAM_HYPOTHESES

            self.max_hypotheses = min(self.max_hypotheses, STREAM_HYPOTHESES)
        self.n_layers = len(self.bundle.layers)
        m = self.bundle.manifest
        self.head_layers = list(m.head.layers) if m.head else []
        self.head_session = self.open_graph(m.head.file, "head", spin=False) if m.head and not stream else None
        use_shared = m.shared is not None and shared and not stream and engine == "onnxruntime"
        # The shared graph's hypotheses are split across ``threads`` concurrent single-threaded runs: at batch 1,
        # onnxruntime's intra-op threads gain little on these small convolutions (see export/README.md).
        self.workers = self.threads if (use_shared and self.threads) else 1
        self._pool: ThreadPoolExecutor | None = None
        self.shared_session = (
            self.open_graph(m.shared.file, "shared", spin=True, threads=1 if self.workers > 1 else self.threads)
            if use_shared
            else None
        )
        self._fused: AnyGraph | None = None
        self._topk: AnyGraph | None = None
        self.use_topk = m.topk is not None and use_shared
        self._head_net: AnyGraph | None = None
        self.use_head_net = m.head_net is not None and use_shared
        self._layer_sessions: list[AnyGraph] | None = None
        self.layer_seconds = [0.0] * self.n_layers

    def open_graph(self, name: str, kind: str, spin: bool, index: int = 0, threads: int | None = None) -> AnyGraph:
        """A session of the bundle file ``name`` (or its replacement), checked as a ``kind`` graph; in streaming
        mode without arena or memory pattern; with OpenVINO for ``engine="openvino"``."""
        path = self.replaced.get(Path(name).name, self.bundle.file(name))
        n = self.threads if threads is None else threads
        graph: AnyGraph
        if self.engine == "openvino":
            graph = OpenVINOGraph(path, name, n)
        else:
            session = make_session(
                path, n, spin, self.providers, arena=self.arena, mem_pattern=not self.stream, optimize=self.optimize
            )
            graph = Graph(session, name)
        check_graph(graph, kind, self.bundle, index)
        return graph

    @property
    def fused_session(self) -> AnyGraph | None:
        """The session of ``net.onnx`` (encoded hypotheses in), opened on first use; None without one."""
        m = self.bundle.manifest
        if self._fused is None and m.fused is not None and not self.stream:
            self._fused = self.open_graph(m.fused.file, "fused", spin=True)
        return self._fused

    @property
    def topk_session(self) -> AnyGraph | None:
        """The session of ``net_topk.onnx`` (mode ``topk`` in one call), opened on first use; None without one (or
        with ``shared=False``, or streaming)."""
        m = self.bundle.manifest
        if self._topk is None and self.use_topk and m.topk is not None:
            self._topk = self.open_graph(m.topk.file, "topk", spin=True)
        return self._topk

    @property
    def head_net_session(self) -> AnyGraph | None:
        """The session of ``net_head.onnx`` (mode ``head`` in one call), opened on first use; None without one (or
        with ``shared=False``, or streaming)."""
        m = self.bundle.manifest
        if self._head_net is None and self.use_head_net and m.head_net is not None:
            self._head_net = self.open_graph(m.head_net.file, "head_net", spin=True)
        return self._head_net

    @property
    def layer_sessions(self) -> list[AnyGraph]:
        """One session per FF layer (input ``x``; outputs ``y``, ``goodness``, ``feature``)."""
        if self._layer_sessions is None:
            self._layer_sessions = [
                self.open_graph(layer.file, "layer", False, i) for i, layer in enumerate(self.bundle.layers)
            ]
        return self._layer_sessions

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def num_classes(self) -> int:
        return len(self.bundle.classes)

    def reset_timings(self) -> None:
        self.layer_seconds = [0.0] * self.n_layers

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Pixels -> normalized float32 NCHW, exactly as in training."""
        inp = self.bundle.manifest.input
        return normalize(as_pixels(images, self.bundle.input_shape), inp.mean, inp.std)

    def forward(self, x_encoded: np.ndarray, feature_layers: Sequence[int] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
        """Encoded inputs [N, C', H, W] -> goodness summed over the prediction layers [N], and the requested features."""
        if self.stream:
            from ffedge.runtime.streaming import stream_forward

            return stream_forward(self, x_encoded, feature_layers)
        if self.fused_session is None:
            g, feats = self.run_layers(x_encoded, feature_layers)
            return g[self.bundle.predict_layers].sum(0), feats
        names = [GOODNESS] + [fused_feature(i) for i in feature_layers]
        outs = self.fused_session.run(names, {INPUT: x_encoded})
        return outs[0], outs[1:]

    def run_layers(
        self, x_encoded: np.ndarray, feature_layers: Sequence[int] = ()
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The layer files one by one: goodness of every layer [L, N] and the requested features.

        Accumulates ``layer_seconds``.
        """
        gs, feats = [], []
        cur = x_encoded
        for i, sess in enumerate(self.layer_sessions):
            t = time.perf_counter()
            cur, g, f = sess.run(None, {INPUT: cur})
            self.layer_seconds[i] += time.perf_counter() - t
            gs.append(g)
            if i in feature_layers:
                feats.append(f)
        return np.stack(gs), feats

    def run_shared(self, x_norm: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The shared graph on images [B, C, H, W] with label-table rows [B, K'] (class indices, or the manifest's
        ``shared.neutral``): goodness [B, K']; chunked by ``max_hypotheses`` and split across ``workers``."""
        sess = self.shared_session
        assert sess is not None
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        b, k = rows.shape
        if b == 0 or k == 0:
            return np.zeros((b, k), np.float32)
        per = max(1, self.max_hypotheses // k)
        if self.workers > 1:
            per = min(per, math.ceil(b / self.workers))
        chunks = [(s, min(s + per, b)) for s in range(0, b, per)]
        # Fewer image chunks than workers: also split each chunk's labels.
        parts_k = 1 if len(chunks) >= self.workers else min(k, self.workers // len(chunks))
        cuts = [round(j * k / parts_k) for j in range(parts_k + 1)]
        jobs = [(s, e, lo, hi) for s, e in chunks for lo, hi in zip(cuts, cuts[1:])]

        def run(job: tuple[int, int, int, int]) -> np.ndarray:
            s, e, lo, hi = job
            return sess.run([GOODNESS], {INPUT: x_norm[s:e], LABELS: rows[s:e, lo:hi]})[0]

        if len(jobs) > 1 and self.workers > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ffedge-shared")
            outs = list(self._pool.map(run, jobs))
        else:
            outs = [run(j) for j in jobs]
        return np.concatenate(
            [np.concatenate(outs[c * parts_k : (c + 1) * parts_k], axis=1) for c in range(len(chunks))]
        )

    def goodness(self, x_norm: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Goodness (summed over the prediction layers) of every label hypothesis: [B, K'] (K' = len(classes) or K)."""
        k = self.num_classes if classes is None else len(classes)
        if self.shared_session is not None:
            cls = np.arange(self.num_classes) if classes is None else np.asarray(classes, dtype=np.int64)
            return self.run_shared(x_norm, np.tile(cls, (len(x_norm), 1)))
        per = max(1, self.max_hypotheses // max(k, 1))
        out = [
            self.forward(self.encoding.encode_all(x_norm[s : s + per], classes))[0].reshape(-1, k)
            for s in range(0, len(x_norm), per)
        ]
        return np.concatenate(out) if out else np.zeros((0, k), np.float32)

    def neutral_features(self, x_norm: np.ndarray) -> list[np.ndarray]:
        """The head layers' features of one neutral-label pass per image, in ``head_layers`` order (``net.onnx``:
        the shared graph returns goodness only)."""
        parts = [
            self.forward(self.encoding.neutral(x_norm[s : s + self.max_hypotheses]), self.head_layers)[1]
            for s in range(0, len(x_norm), self.max_hypotheses)
        ]
        if not parts:
            return self.forward(self.encoding.neutral(x_norm[:0]), self.head_layers)[1]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(self.head_layers))]

    def head_probs(self, x_norm: np.ndarray) -> np.ndarray:
        """Softmax head on one neutral-label pass: [B, K] (``net_head.onnx`` where the bundle has it, else the neutral
        pass on ``net.onnx``, then ``head.onnx``)."""
        m = self.bundle.manifest
        if m.head is None:
            raise FFEdgeError(f"{self.bundle.path} has no softmax head: use --mode all")
        if not len(x_norm):
            return np.zeros((0, self.num_classes), np.float32)
        if self.head_net_session is not None:
            sess = self.head_net_session
            return np.concatenate(
                [
                    sess.run([PROBS], {INPUT: x_norm[s : s + self.max_hypotheses]})[0]
                    for s in range(0, len(x_norm), self.max_hypotheses)
                ]
            )
        feats = self.neutral_features(x_norm)
        # Streaming: the head file is opened only now, after the layers, and dropped after this call.
        head = self.open_graph(m.head.file, "head", spin=False) if self.stream else self.head_session
        assert head is not None
        return head.run(None, {head_input(i): f for i, f in zip(self.head_layers, feats)})[0]

    def check_mode(self, mode: str, k: int = 3) -> None:
        """A mode this bundle can run (``head`` and ``topk`` need its head) and, for ``topk``, a ``k`` in 1..K."""
        spec = mode_spec(mode)
        if spec.needs_head and self.bundle.manifest.head is None:
            raise FFEdgeError(f"{self.bundle.path} has no softmax head: use --mode all")
        if spec.uses_k:
            check_int(k, "--k", 1, self.num_classes)

    def predict(self, images: np.ndarray, mode: str = DEFAULT_MODE, k: int = 3) -> Prediction:
        """Classify a batch of images (pixels, NHWC or NHW)."""
        self.check_mode(mode, k)
        x = self.normalize(images)
        return self.predict_normalized(x, mode, k)

    def predict_normalized(self, x: np.ndarray, mode: str = DEFAULT_MODE, k: int = 3) -> Prediction:
        """Like :meth:`predict` for inputs already normalized (float32 NCHW): the mode's ``predict_<mode>``."""
        self.check_mode(mode, k)
        predict: Callable[[np.ndarray, int], Prediction] = getattr(self, mode_spec(mode).method)
        return predict(x, k)

    def predict_all(self, x: np.ndarray, k: int = 0) -> Prediction:
        """Mode ``all``: the label with the highest goodness of all K hypotheses (``k`` unused)."""
        g = self.goodness(x)
        return Prediction(g.argmax(1), g)

    def predict_head(self, x: np.ndarray, k: int = 0) -> Prediction:
        """Mode ``head``: the softmax head's probabilities of one neutral-label pass (``k`` unused)."""
        probs = self.head_probs(x)
        return Prediction(probs.argmax(1), probs)

    def predict_topk(self, x: np.ndarray, k: int = 3) -> Prediction:
        """Mode ``topk``: the head proposes ``k`` labels, the highest goodness among them wins (-inf for the others)."""
        if self.topk_session is not None:
            return self._predict_topk_graph(x, k)
        probs = self.head_probs(x)
        cand = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # [B, k]
        scores = np.full(probs.shape, -np.inf, dtype=np.float32)
        if len(x) and self.shared_session is not None:
            np.put_along_axis(scores, cand, self.run_shared(x, cand), axis=1)
        elif len(x):
            reps = np.repeat(x, k, axis=0)
            g = np.concatenate(
                [
                    self.forward(
                        self.encoding.encode(
                            reps[s : s + self.max_hypotheses], cand.reshape(-1)[s : s + self.max_hypotheses]
                        )
                    )[0]
                    for s in range(0, len(reps), self.max_hypotheses)
                ]
            ).reshape(len(x), k)
            np.put_along_axis(scores, cand, g, axis=1)
        return Prediction(scores.argmax(1), scores)

    def _predict_topk_graph(self, x: np.ndarray, k: int) -> Prediction:
        """Mode ``topk`` on ``net_topk.onnx``, chunked so that a call holds at most ``max_hypotheses`` passes."""
        sess = self.topk_session
        assert sess is not None
        scores = np.full((len(x), self.num_classes), -np.inf, dtype=np.float32)
        per = max(1, self.max_hypotheses // (k + 1))
        kk = np.array([k], np.int64)
        for s in range(0, len(x), per):
            g, cand = sess.run([GOODNESS, CANDIDATES], {INPUT: x[s : s + per], TOPK_K: kk})
            np.put_along_axis(scores[s : s + per], cand, g, axis=1)
        return Prediction(scores.argmax(1), scores)


def load_and_check(bundle_dir: str | Path, verified: bool = False) -> dict[str, str]:
    """Verify a bundle and load everything in it as the code that uses it does; returns file -> what was checked.

    Every listed file is sha256-verified; every ONNX graph is opened with
    onnxruntime and its inputs and outputs checked against the manifest; every
    .npy/.npz is read in full (never unpickled) and checked as its user checks it.
    A file nothing loads (e.g. notes) is only sha256-verified. ``verified``: the
    caller has just run :func:`~ffedge.bundle.check_files`.
    """
    if not verified:
        check_files(bundle_dir, read_manifest(bundle_dir))
    rt = Runtime(bundle_dir, threads=1, verify=False, arena=False, optimize=False)  # opened to check, not to run
    b, m = rt.bundle, rt.bundle.manifest
    checked = {name: "sha256" for name in m.files}
    graph = "sha256, opened with onnxruntime, inputs/outputs match the manifest"
    rt.layer_sessions  # noqa: B018  (opens and checks every layer file)
    rt.fused_session  # noqa: B018  (opened on first use)
    rt.topk_session  # noqa: B018  (opened on first use)
    rt.head_net_session  # noqa: B018  (opened on first use)
    graphs = (m.fused, m.shared, m.topk, m.head_net, m.head)
    for name in [layer.file for layer in m.layers] + [e.file for e in graphs if e is not None]:
        checked[name] = graph
    for ref in (m.label_arrays or {}).values():
        checked[ref] = "sha256, loaded (no pickles), matches the label encoding"
    if m.master is not None:
        master = load_master(b)
        need = [master_key(i, k) for i, layer in enumerate(m.layers) for k in master_keys(layer.norm_kind)]
        lack = [k for k in need + [MASTER_HEAD_WEIGHT, MASTER_HEAD_BIAS] if k not in master]
        if lack:
            raise FFEdgeError(f"{b.path}: the master weights {quoted(m.master.file)} lack {', '.join(lack[:5])}")
        checked[m.master.file] = f"sha256, loaded (no pickles), {len(master)} arrays"
    if m.replay is not None:
        x, _ = load_replay(b)
        if m.replay.examples is not None and m.replay.examples != len(x):
            raise FFEdgeError(
                f"{b.path}: {quoted(m.replay.file)} holds {len(x)} examples, the manifest says {m.replay.examples}"
            )
        checked[m.replay.file] = f"sha256, loaded (no pickles), {len(x)} examples fit the input and classes"
    return checked
