"""The layer pipeline (``ffedge train --parallel layers``): consecutive FF layers split into stages, one per rank.

Every rank of the process group :func:`ffedge.train.distributed.process_group` opened (gloo on CPU, NCCL on
CUDA) holds the whole net but trains only its stage's layers (:func:`stage_layers`: consecutive, balanced by multiply-accumulates).
Stage 0 (rank 0) makes the batches (the same augmentation and negatives as single-process training) and
writes the run; stage r receives the detached output of stage r-1's last layer for every step by
point-to-point ``send``/``recv``, trains its layers on it and sends its own output on. The unit that flows is
one training batch: every step is a complete layer-local update, so no gradient accumulation over
micro-batches is needed, and splitting a batch would change the batch-norm statistics.

**Schedule.** In single-process training (:meth:`LocalTrainer.step`) layer r trains at step t on layer r-1's
output computed in the same step, before any layer's optimizer steps: with the weights after t-1 updates.
Stage r-1 therefore sends the output of its step-t forward pass, the very tensor its own loss is computed
on, before its optimizer steps; stage r trains step t on it while stage r-1 already computes step t+1.
With ``--local layer`` the pipeline is exact: every layer sees the inputs, and ends with the weights, of
single-process training (``tests/train/test_layer_pipeline.py`` holds them equal).

**Pair mode.** The gradient of stage r's first layer's loss at its input goes back to stage r-1, which pushes
it into its last layer before that layer's optimizer steps, exactly as single-process training does. So
nothing differs from single-process training either, but stage r-1 waits, every step, for stage r's first
layer's forward and backward pass: the stages overlap less than with ``--local layer``.

**Per-epoch evaluation, checkpoints, the end.** At the end of every epoch each stage sends its layers'
state (weights, batch-norm and quantizer statistics) and optimizer state to rank 0, which then holds the
net single-process training would hold, scores it (goodness needs every layer; the held-out subset is
small, so gathering, needed for the checkpoint anyway, beats a pipelined forward) and writes the ordinary
checkpoint and run folder (``ffedge export`` takes it unchanged; ``--resume`` continues it in one process
or in a pipeline). The head is fitted on rank 0 after the last epoch. Each stage owns its layers'
quantizers: their statistics are collected on the rank that trains the layer, and gathered with it.
As in a checkpoint, a quantizer still collecting its statistics when an epoch ends (an epoch of fewer than
30 steps) hands on its statistics so far, which rank 0's copy then takes as its scale.

A rank that stops ends the others with one line (:func:`ffedge.train.distributed.collectives`); rank 0
failing before the run starts tells the others so at once. Not available in the pipeline: ``--negatives hard``
(it scores every layer for every batch) and probes.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from ffedge.errors import FFEdgeError
from ffedge.finetuning.numerics import cosine_lr
from ffedge.progress import QuietReporter, Reporter
from ffedge.train.distributed import DistContext, collectives
from ffedge.train.epoch import EpochEngine, Probe, Training, batch_inputs, black_pixel, steps_per_epoch
from ffedge.train.model import FFNet
from ffedge.train.qat import start_qat_if_due
from ffedge.train.run_files import first_line
from ffedge.train.run_folder import RunFolder
from ffedge.train.trainer import LocalTrainer, PreparedData, TrainConfig, build_model

SENDS_IN_FLIGHT = 2  # steps a stage may run ahead of the next one (bounds the memory of pending sends)


def layer_macs(net: FFNet) -> list[int]:
    """Multiply-accumulates per image of each conv layer: what a stage's share of the work is measured in."""
    macs, c_in = [], net.in_channels
    for spec, (c_out, h, w) in zip(net.layer_specs, net.act_shapes):
        macs.append(c_out * h * w * c_in * spec.kernel * spec.kernel)
        c_in = c_out
    return macs


def stage_layers(net: FFNet, n_stages: int) -> list[range]:
    """Split the layers into ``n_stages`` consecutive, non-empty stages with the smallest largest stage (in MACs)."""
    cost = layer_macs(net)
    n = len(cost)
    if not 1 <= n_stages <= n:
        raise FFEdgeError(f"a pipeline of {n_stages} stages needs at least {n_stages} layers; the net has {n}")
    prefix = np.concatenate([[0], np.cumsum(cost)])
    # best[k][i]: the smallest largest stage splitting layers [0, i) into k stages; cut[k][i]: where its last one starts.
    best = np.full((n_stages + 1, n + 1), np.inf)
    cut = np.zeros((n_stages + 1, n + 1), int)
    best[0][0] = 0
    for k in range(1, n_stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                worst = max(best[k - 1][j], prefix[i] - prefix[j])
                if worst < best[k][i]:
                    best[k][i], cut[k][i] = worst, j
    bounds, i = [], n
    for k in range(n_stages, 0, -1):
        bounds.append(range(int(cut[k][i]), i))
        i = int(cut[k][i])
    return bounds[::-1]


def check_pipeline(cfg: TrainConfig, n_stages: int) -> None:
    """The options a pipeline of ``n_stages`` can train; else one clear error."""
    if cfg.negatives == "hard":
        raise FFEdgeError("--negatives hard scores every layer for every batch: the layer pipeline cannot train it")
    if cfg.negatives == "confused":
        raise FFEdgeError(
            "--negatives confused learns from the prediction layers' goodness of every step: train it in one process"
        )
    from ffedge.train.model import parse_layers

    n = len(parse_layers(cfg.layers))
    if n_stages > n:
        raise FFEdgeError(
            f"--parallel layers with {n_stages} processes needs at least {n_stages} layers; --layers has {n}"
        )


# ---------------------------------------------------------------- transport


def _wire(t: torch.Tensor) -> torch.Tensor:
    """The tensor as torch.distributed sends it: bf16 as its bytes (gloo has no bf16), sharing storage."""
    return t.view(torch.uint8) if t.dtype == torch.bfloat16 else t


def _pack(obj: Any, device: str) -> torch.Tensor:
    """``obj`` (tensors, numbers, strings, lists, dicts) serialized by torch.save into a byte tensor."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).to(device)


def _unpack(t: torch.Tensor) -> Any:
    """The object :func:`_pack` serialized; loaded with ``weights_only`` (plain data, never arbitrary objects)."""
    return torch.load(io.BytesIO(t.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)


@dataclass
class Stage:
    """This rank's place in the pipeline and its point-to-point traffic with the stages next to it."""

    rank: int
    layers: list[range]  # every stage's layers
    device: str
    pending: list[tuple[Any, torch.Tensor]] = field(default_factory=list)  # sends in flight, with their tensors

    @property
    def own(self) -> range:
        return self.layers[self.rank]

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == len(self.layers) - 1

    def send(self, t: torch.Tensor, dst: int) -> None:
        """Send ``t`` without waiting for it, at most :data:`SENDS_IN_FLIGHT` at a time."""
        if len(self.pending) >= SENDS_IN_FLIGHT:
            self.pending.pop(0)[0].wait()
        t = t.contiguous()
        self.pending.append((dist.isend(_wire(t), dst), t))

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, src: int) -> torch.Tensor:
        buf = torch.empty(shape, dtype=dtype, device=self.device)
        dist.recv(_wire(buf), src)
        return buf

    def flush(self) -> None:
        """Wait until every send has been taken."""
        while self.pending:
            self.pending.pop(0)[0].wait()

    def send_bytes(self, t: torch.Tensor, dst: int) -> None:
        dist.send(torch.tensor([t.numel()], dtype=torch.int64, device=self.device), dst)
        dist.send(t, dst)

    def recv_bytes(self, src: int) -> torch.Tensor:
        n = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.recv(n, src)
        return self.recv((int(n.item()),), torch.uint8, src)

    def broadcast_bytes(self, t: torch.Tensor | None, status: int = 0) -> tuple[int, torch.Tensor | None]:
        """Rank 0 sends (``status``, ``t``) to every rank; a ``status`` other than 0 carries no bytes."""
        head = torch.tensor([status, 0 if t is None else t.numel()], dtype=torch.int64, device=self.device)
        dist.broadcast(head, 0)
        if int(head[0]) != 0:
            return int(head[0]), None
        if t is None:
            t = torch.empty(int(head[1]), dtype=torch.uint8, device=self.device)
        dist.broadcast(t, 0)
        return 0, t


# ---------------------------------------------------------------- one epoch of one stage


def stage_epoch(
    stage: Stage,
    run: Training,
    cfg: TrainConfig,
    epoch: int,
    n_train: int,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None,
    advance: Any = None,
) -> np.ndarray:
    """Train this stage's layers for epoch ``epoch``; their summed (loss, g+, g-) over the steps, [layers, 3].

    Stage 0 takes its (positive, negative) inputs from ``batches``; the others receive them from the stage before.
    """
    net, trainer, own = run.net, run.trainer, stage.own
    pair = cfg.local == "pair"
    steps = steps_per_epoch(cfg, n_train)
    total_steps = steps * cfg.epochs
    dtype = torch.bfloat16 if trainer.bf16 else torch.float32
    sums = np.zeros((len(own), 3))
    for i in range(steps):
        trainer.set_lr(cosine_lr(cfg.lr, epoch * steps + i, total_steps))
        b = min(cfg.batch_size, n_train - i * cfg.batch_size)
        if stage.first:
            assert batches is not None
            x_pos, x_neg = next(batches)
            inp = torch.cat([x_pos, x_neg], 0)
        else:
            inp = stage.recv((b * (1 + cfg.wrong_labels), *net.out_shapes[own[0] - 1]), dtype, stage.rank - 1)
        stats, last_out = trainer.layer_pass(
            inp,
            b,
            own,
            on_output=None if stage.last else lambda out: stage.send(out, stage.rank + 1),
            # A copy: the next layer's backward pass accumulates into this gradient while the send may be pending.
            on_input_grad=lambda grad: stage.send(grad.clone(), stage.rank - 1),
        )
        if pair and not stage.last:
            assert last_out is not None
            grad = stage.recv(tuple(last_out.shape), last_out.dtype, stage.rank + 1)
            torch.autograd.backward(last_out, grad_tensors=grad)
            del last_out, grad
        trainer.apply(stats, own)
        sums += np.array(stats)
        if advance is not None:
            advance(1, loss=f"{stats[-1][0]:.3f}")
    stage.flush()
    return sums


def _stage_state(run: Training, own: range, sums: np.ndarray | None = None) -> dict[str, Any]:
    """What a stage hands to rank 0: its layers' state, their optimizers' state (and its epoch's sums)."""
    state: dict[str, Any] = {
        "layers": [run.net.layers[i].state_dict() for i in own],
        "optimizers": [run.trainer.optimizers[i].state_dict() for i in own],
    }
    if sums is not None:
        state["sums"] = torch.from_numpy(sums)
    return state


def _load_stage_state(run: Training, own: range, state: dict[str, Any]) -> None:
    """Load what :func:`_stage_state` handed on into this rank's layers ``own`` and their optimizers."""
    for i, sd, osd in zip(own, state["layers"], state["optimizers"]):
        try:
            missing = run.trainer.load_layer(i, sd, osd)
        except (RuntimeError, ValueError) as e:
            missing = [first_line(e)]
        # Only a quantizer that has not collected statistics yet has no scale in its state (Brevitas leaves it out).
        if any(not k.endswith(".scaling_impl.value") for k in missing):
            raise FFEdgeError(
                f"layer pipeline: layer {i}'s state from another stage does not fit this net ({missing[0]})"
            )


# ---------------------------------------------------------------- rank 0: stage 0 and the run


class PipelineEngine(EpochEngine):
    """Rank 0's epochs: stage 0 of the pipeline, then the other stages' layers gathered into its net."""

    def __init__(self, ctx: DistContext) -> None:
        self.ctx, self.world_size = ctx, ctx.world_size
        self.stage: Stage | None = None
        self.started = False

    def begin(self, run: Training, data: PreparedData) -> None:
        """Hand every rank the run: its options, the net's shape, the data's size, where it starts, its state."""
        cfg, ds = run.trainer.cfg, data.dataset
        check_pipeline(cfg, self.world_size)  # a resumed run's options too
        layers = stage_layers(run.net, self.world_size)
        self.stage = Stage(0, layers, cfg.device)
        hello = {
            # The precision resolved here, so every rank computes in the same arithmetic.
            "cfg": {**asdict(cfg), "precision": cfg.float_precision()},
            "in_channels": run.net.in_channels,
            "image_hw": list(run.net.image_hw),
            "num_classes": ds.num_classes,
            "n_train": int(len(ds.y_train)),
            "start_epoch": run.start_epoch,
            "quantized": run.net.quant.enabled,
        }
        self.stage.broadcast_bytes(_pack(json.dumps(hello), cfg.device))
        self.stage.broadcast_bytes(_pack(_stage_state(run, range(len(run.net.layers))), cfg.device))
        self.started = True
        reporter_line = ", ".join(f"{r.start}-{r.stop - 1}" if len(r) > 1 else str(r.start) for r in layers)
        self.plan = f"layer pipeline on {self.world_size} ranks ({self.ctx.backend}): layers {reporter_line}"

    def abort(self) -> None:
        """Rank 0 failed before the run started: tell the other ranks that nothing will come."""
        if not self.started and self.world_size > 1:
            with contextlib.suppress(Exception):  # the others may be gone already
                Stage(0, [], self.ctx.device).broadcast_bytes(None, status=1)

    def train_epoch(
        self,
        run: Training,
        cfg: TrainConfig,
        data: PreparedData,
        epoch: int,
        folder: RunFolder,
        reporter: Reporter,
        probe: Probe | None,
    ) -> np.ndarray:
        assert self.stage is not None
        if probe is not None:
            raise FFEdgeError("the layer pipeline does not call probes")
        folder.phase = f"in epoch {epoch + 1}/{cfg.epochs} (layer pipeline, {self.world_size} stages)"
        if epoch == run.start_epoch:
            reporter.log(self.plan)
        n_train = len(data.dataset.y_train)
        steps = steps_per_epoch(cfg, n_train)
        run.t0 = time.perf_counter()
        means = np.zeros((len(run.net.layers), 3))
        with reporter.task(f"epoch {epoch + 1}/{cfg.epochs}", steps) as advance:
            sums = stage_epoch(self.stage, run, cfg, epoch, n_train, _batches(run, cfg, data, epoch), advance)
        means[self.stage.own] = sums / steps
        for r in range(1, self.world_size):
            state = _unpack(self.stage.recv_bytes(r))
            _load_stage_state(run, self.stage.layers[r], state)
            means[self.stage.layers[r]] = state["sums"].numpy() / steps
        return means


def _batches(
    run: Training, cfg: TrainConfig, data: PreparedData, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch ``epoch``'s (positive, negative) inputs, drawn as :func:`ffedge.train.epoch.train_epoch` draws them."""
    n_train, bs = len(data.dataset.y_train), cfg.batch_size
    rng = np.random.default_rng([cfg.seed, epoch])
    perm = rng.permutation(n_train)
    fill = black_pixel(data)
    pred_layers = cfg.prediction_layers(len(run.net.layers))
    for i in range(steps_per_epoch(cfg, n_train)):
        yield batch_inputs(run.net, cfg, data, perm[i * bs : (i + 1) * bs], slice(None), fill, rng, pred_layers)


# ---------------------------------------------------------------- the other ranks


def run_stage(ctx: DistContext) -> bool:
    """A rank other than 0: take the run from rank 0 and train this stage's layers epoch by epoch, handing them
    to rank 0 after each. False if rank 0 stopped before the run started (it says why)."""
    with collectives(ctx, "in the layer pipeline"):
        status, blob = Stage(ctx.rank, [], ctx.device).broadcast_bytes(None)
        if status != 0 or blob is None:
            return False
        hello = json.loads(_unpack(blob))
        cfg = TrainConfig.from_dict({**hello["cfg"], "device": ctx.device}, source="rank 0")
        torch.set_num_threads(cfg.threads or ctx.cpu_threads())
        net = build_model(cfg, hello["in_channels"], tuple(hello["image_hw"]), hello["num_classes"], hello["quantized"])
        net = net.to(ctx.device)
        run = Training(net, LocalTrainer(net, cfg), start_epoch=int(hello["start_epoch"]))
        stage = Stage(ctx.rank, stage_layers(net, ctx.world_size), ctx.device)
        _, blob = stage.broadcast_bytes(None)
        assert blob is not None
        _load_stage_state(run, range(len(net.layers)), _unpack(blob))
        for epoch in range(run.start_epoch, cfg.epochs):
            start_qat_if_due(run, cfg, epoch, QuietReporter())
            sums = stage_epoch(stage, run, cfg, epoch, int(hello["n_train"]), None)
            stage.send_bytes(_pack(_stage_state(run, stage.own, sums), ctx.device), 0)
    return True


# ---------------------------------------------------------------- entry points


def train_pipelined(
    cfg: TrainConfig,
    out: str | Path,
    ctx: DistContext,
    force: bool = False,
    reporter: Reporter | None = None,
    download: bool = True,
) -> dict[str, Any] | None:
    """Train a new run as a layer pipeline, one stage per rank of ``ctx``'s process group
    (:func:`ffedge.train.distributed.process_group`).

    Rank 0 writes the run in ``out`` and returns its metrics, as :func:`ffedge.train.train_run`; the other
    ranks return None (they need no dataset and write nothing).
    """
    from ffedge.train.pipeline import train_run

    if not ctx.is_main:
        run_stage(ctx)
        return None
    engine = PipelineEngine(ctx)
    try:
        check_pipeline(cfg, ctx.world_size)
        return train_run(cfg, out, force=force, reporter=reporter, download=download, ctx=ctx, engine=engine)
    except BaseException:
        engine.abort()
        raise


def resume_pipelined(
    out: str | Path,
    ctx: DistContext,
    epochs: int | None = None,
    reporter: Reporter | None = None,
    download: bool = True,
) -> dict[str, Any] | None:
    """Continue the run in ``out`` (made by a pipeline, by data parallel or by one process) as a layer pipeline;
    rank 0 alone reads and writes it, as :func:`ffedge.train.resume_run`."""
    from ffedge.train.pipeline import resume_run

    if not ctx.is_main:
        run_stage(ctx)
        return None
    engine = PipelineEngine(ctx)
    try:
        return resume_run(out, epochs, reporter, download=download, ctx=ctx, engine=engine)
    except BaseException:
        engine.abort()
        raise
