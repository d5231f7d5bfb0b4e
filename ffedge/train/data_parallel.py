"""Data-parallel Forward-Forward training: every rank trains the same net on its shard of each global batch.

What keeps the ranks one model (each through ``torch.distributed``, on the group :mod:`ffedge.train.distributed`
opened):

- the batch: every rank draws the same global batch (one seeded permutation per epoch, the same
  augmentation and negatives as a single process) and trains on its contiguous shard (:meth:`DataParallel.shard`);
  ``--batch-size`` is the global batch, so the same ``--lr`` at the same batch gives the same training;
- the gradients: each rank's loss is weighted by its share of the batch and every layer's gradients are
  summed over the ranks in one all-reduce before any optimizer steps (pair-local updates included), which
  makes them the gradients of the whole batch's mean loss (:meth:`DataParallel.average_gradients`);
- BatchNorm: its batch statistics are those of the global batch (:class:`SyncedBatchNorm2d`, through
  a differentiable all-reduce, on CPU too); ``--norm rms`` needs none;
- Brevitas' activation scales: the statistics they collect in their first steps are averaged over the
  ranks after every collecting step (the running average is linear, so this equals averaging at the end),
  so each scale starts from the same value (:meth:`DataParallel.reduce_quant_stats`). While they collect,
  each rank's forward uses its own shard's statistics: those steps differ from a single process;
- the check: :meth:`DataParallel.same_model` compares a sha256 of every rank's weights and statistics.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ffedge.errors import FFEdgeError
from ffedge.train.distributed import DistContext


class _SumOverRanks(torch.autograd.Function):
    """``dist.all_reduce`` (sum) that autograd goes back through: the gradient of a sum over the ranks is the
    sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every rank, differentiable."""
    return _SumOverRanks.apply(t)


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch of every rank together.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d``; in eval mode, or without a process
    group of more than one rank, it is ``nn.BatchNorm2d``. torch's own ``nn.SyncBatchNorm`` runs on GPUs only.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        n_local = torch.tensor([float(xf.numel() // xf.shape[1])], device=x.device)
        total = sum_over_ranks(torch.cat([xf.sum(dim=(0, 2, 3)), n_local]))
        count = total[-1]
        mean = total[:-1] / count
        centered = xf - mean.view(1, -1, 1, 1)
        var = sum_over_ranks((centered * centered).sum(dim=(0, 2, 3))) / count  # biased, as BatchNorm normalizes
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp(min=1), alpha=m)
                self.num_batches_tracked.add_(1)
        out = centered / torch.sqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(x.dtype)


def _stats_scalings(net: nn.Module) -> list[nn.Module]:
    """Brevitas' activation scales that start from collected statistics (``ParameterFromRuntimeStatsScaling``)."""
    try:
        from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
    except ImportError:  # pragma: no cover - brevitas is part of the [train] extra
        return []
    return [m for m in net.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]


class DataParallel:
    """The data-parallel side of one rank; :class:`~ffedge.train.trainer.LocalTrainer` calls it when given one."""

    def __init__(self, ctx: DistContext) -> None:
        if not ctx.is_distributed:
            raise FFEdgeError("data parallel needs a process group of more than one rank (start with torchrun)")
        self.ctx = ctx

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (the parts differ in size by at most one)."""
        r, w = self.ctx.rank, self.ctx.world_size
        return slice(n * r // w, n * (r + 1) // w)

    def prepare(self, net: nn.Module) -> None:
        """Make ``net`` one model on every rank: synchronized BatchNorm, and rank 0's weights and buffers."""
        for layer in getattr(net, "layers", []):
            norm = getattr(layer, "norm", None)
            if type(norm) is nn.BatchNorm2d:
                synced = SyncedBatchNorm2d(
                    norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats
                )
                synced.load_state_dict(norm.state_dict())
                layer.norm = synced.to(norm.running_mean.device if norm.running_mean is not None else "cpu")
        with torch.no_grad():
            for t in net.state_dict().values():
                dist.broadcast(t, 0)

    def average_gradients(
        self, params: list[nn.Parameter], stats: list[tuple[float, float, float]], weight: float
    ) -> list[tuple[float, float, float]]:
        """Sum the (share-weighted) gradients of ``params`` over the ranks, in place, in one all-reduce; return
        the whole batch's per-layer (loss, g+, g-) from every rank's ``stats`` weighted by its share ``weight``."""
        grads = [p.grad for p in params if p.grad is not None]  # None on every rank alike: same graph
        device = grads[0].device if grads else torch.device(self.ctx.device)
        flat_stats = torch.tensor(stats, dtype=torch.float32, device=device).reshape(-1) * weight
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [flat_stats])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return [tuple(row) for row in flat[offset:].reshape(-1, 3).tolist()]

    def reduce_quant_stats(self, net: nn.Module) -> None:
        """Average, over the ranks, the statistics of every Brevitas scale still collecting them (or just done)."""
        collecting = [m for m in _stats_scalings(net) if 0 < m.counter <= m.collect_stats_steps]
        if not collecting:
            return
        flat = torch.cat([m.buffer.reshape(-1) for m in collecting])
        dist.all_reduce(flat)
        flat /= self.ctx.world_size
        offset = 0
        for m in collecting:
            m.buffer.copy_(flat[offset : offset + m.buffer.numel()].view_as(m.buffer))
            offset += m.buffer.numel()

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.ctx.backend == "nccl":
            t = t.to(self.ctx.device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def same_model(self, net: nn.Module, when: str) -> str:
        """The sha256 of ``net``'s state (weights, BatchNorm and quantizer statistics); every rank must hold the
        same, else one clear error (a bug, never expected)."""
        digest = model_sha256(net)
        mine = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.int64)
        if self.ctx.backend == "nccl":
            mine = mine.to(self.ctx.device)
        every = [torch.zeros_like(mine) for _ in range(self.ctx.world_size)]
        dist.all_gather(every, mine)
        differ = [r for r, t in enumerate(every) if not torch.equal(t, every[0])]
        if differ:
            raise FFEdgeError(f"{self.ctx.label()}: rank(s) {differ} hold another model than rank 0 {when}")
        return digest


def model_sha256(net: nn.Module) -> str:
    """sha256 over ``net``'s state dict (names and bytes, in order): equal only for bit-identical models."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(t.detach().cpu().reshape(-1).view(torch.uint8).numpy()).tobytes())
    return h.hexdigest()
