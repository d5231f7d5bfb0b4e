"""The process group of a multi-process run: torchrun's environment, the ranks, start-up, teardown, failures.

One concern only: which process this is and how it talks to the others, on PyTorch's own
``torch.distributed`` (no transport of ffedge's own). What the processes do together is
elsewhere: data parallel in :mod:`ffedge.train.data_parallel`.

- A process started by ``torchrun`` (or ``torch.distributed.run``, or ``ffedge train --nproc N``,
  which calls it) finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``
  and ``MASTER_PORT`` in its environment: :func:`torchrun_env` reads them, :func:`process_group`
  opens the default process group from them (gloo on CPU, NCCL on CUDA; ``--device cuda`` becomes
  ``cuda:LOCAL_RANK``) and closes it again, and yields the :class:`DistContext` the trainer reads.
  Without that environment (or with a world of one) it yields :data:`SINGLE`-like context and opens
  nothing, so the same code runs single-process.
- Every collective waits at most ``timeout_s``: a rank that died or hangs ends the job on every other
  rank with :class:`RankLost`, one line, instead of a hang (:func:`collectives`).

Typical use::

    with process_group(cfg.device, timeout_s) as ctx:      # DistContext
        with collectives(ctx, "training"):
            ...  # dist.all_reduce(...) etc.; ctx.rank, ctx.world_size, ctx.is_main, ctx.device
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from ffedge.errors import FFEdgeError

DEFAULT_TIMEOUT_S = 300.0  # longest wait for another rank at a collective before the job stops
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size, local rank on its node, its device, the backend.

    ``backend`` is None when no process group is open (a single process). Only the main rank (0) writes
    files and prints progress.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: str = "cpu"
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """A process group with more than one rank is open."""
        return self.backend is not None and self.world_size > 1

    def cpu_threads(self) -> int:
        """Default torch CPU threads for this rank: the node's cores shared among its ranks."""
        return max(1, (os.cpu_count() or 1) // self.local_world_size)

    def label(self) -> str:
        """``rank R/W`` for messages ('' for a single process)."""
        return f"rank {self.rank}/{self.world_size}" if self.is_distributed else ""


SINGLE = DistContext()


class RankLost(FFEdgeError):
    """Another rank died or did not answer within the timeout; this rank stops too."""


def under_torchrun() -> bool:
    """This process was started by torchrun / torch.distributed.run (its environment says so)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def torchrun_env() -> dict[str, int | str] | None:
    """torchrun's variables of this process (ranks as ints), None outside torchrun; bad values are one error."""
    if not under_torchrun():
        return None
    env: dict[str, int | str] = {}
    for key in ENV_KEYS:
        value = os.environ.get(key)
        if value is None:
            if key in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):  # set by torchrun; a hand-made environment may lack them
                value = os.environ["RANK"] if key == "LOCAL_RANK" else os.environ["WORLD_SIZE"]
            else:
                raise FFEdgeError(f"RANK and WORLD_SIZE are set but {key} is not: start the job with torchrun")
        if key in ("MASTER_ADDR",):
            env[key] = value
            continue
        try:
            env[key] = int(value)
        except ValueError:
            raise FFEdgeError(f"environment variable {key}={value!r} is not an integer (set by torchrun?)") from None
    if not (
        0 <= int(env["RANK"]) < int(env["WORLD_SIZE"]) and 0 <= int(env["LOCAL_RANK"]) < int(env["LOCAL_WORLD_SIZE"])
    ):
        raise FFEdgeError(
            f"bad torchrun environment: RANK {env['RANK']} of WORLD_SIZE {env['WORLD_SIZE']}, "
            f"LOCAL_RANK {env['LOCAL_RANK']} of LOCAL_WORLD_SIZE {env['LOCAL_WORLD_SIZE']}"
        )
    return env


def rank_device(device: str, local_rank: int) -> str:
    """The device of the rank with ``local_rank``: ``cuda``/``cuda:N`` become ``cuda:LOCAL_RANK`` (one GPU per
    rank on a node); any other device is kept."""
    if torch.device(device).type != "cuda":
        return device
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise FFEdgeError(f"--device {device}: local rank {local_rank} needs GPU {local_rank}, but this node has {n}")
    return f"cuda:{local_rank}"


@contextlib.contextmanager
def process_group(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[DistContext]:
    """Open the default process group from torchrun's environment, yield this rank's context, close it again.

    Outside torchrun, or with a world of one, nothing is opened and the context is a single process on
    ``device``. The backend is NCCL when the device is CUDA, else gloo. ``timeout_s`` bounds every wait
    for another rank (start-up included).
    """
    if timeout_s <= 0:
        raise FFEdgeError(f"--dist-timeout must be > 0 seconds, got {timeout_s:g}")
    env = torchrun_env()
    if env is None or int(env["WORLD_SIZE"]) == 1:
        yield DistContext(device=device, timeout_s=timeout_s)
        return
    local_rank = int(env["LOCAL_RANK"])
    dev = rank_device(device, local_rank)
    backend = "nccl" if torch.device(dev).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(dev)
    ctx = DistContext(
        rank=int(env["RANK"]),
        world_size=int(env["WORLD_SIZE"]),
        local_rank=local_rank,
        local_world_size=int(env["LOCAL_WORLD_SIZE"]),
        device=dev,
        backend=backend,
        timeout_s=timeout_s,
    )
    with collectives(ctx, "starting the process group"):
        dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size, timeout=timedelta(seconds=timeout_s))
    try:
        yield ctx
    finally:
        with contextlib.suppress(
            Exception
        ):  # after a lost rank the group may be broken; teardown must not hang or mask
            dist.destroy_process_group()


def is_comm_error(e: BaseException) -> bool:
    """``e`` is torch.distributed's way of saying another rank is gone or late (a closed connection, a timeout)."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(
        s in text
        for s in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe")
    )


@contextlib.contextmanager
def collectives(ctx: DistContext, what: str) -> Iterator[None]:
    """Turn torch.distributed's failure inside the block (a dead rank, a timeout) into one :class:`RankLost` line
    that says which rank stopped and why."""
    try:
        yield
    except RankLost:
        raise
    except Exception as e:
        if not is_comm_error(e):
            raise
        raise lost(ctx, what) from None


def lost(ctx: DistContext, what: str) -> RankLost:
    """The :class:`RankLost` error of this rank, stopped ``what``."""
    return RankLost(
        f"{ctx.label() or 'this process'}: lost contact with another rank {what} "
        f"(it stopped, or did not answer within --dist-timeout {ctx.timeout_s:g} s); the job stops"
    )


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run ``python -m ffedge.cli ARGV`` as ``nproc`` ranks on this machine through torch's own launcher
    (``torch.distributed.run --standalone``: a free localhost port, one rank per process); returns the exit code.

    Each rank gets ``OMP_NUM_THREADS`` = cores / nproc unless it is set. When a rank fails the launcher stops
    the others; this prints one line naming the rank(s) and their exit codes.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise FFEdgeError(f"--nproc must be >= 1, got {nproc}")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # its reports are tracebacks; the ranks say what happened
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "ffedge.cli"])
    args.training_script_args = list(argv)  # not parsed by torchrun: its options' prefixes match ours (--local)
    try:
        run(args)
    except ChildFailedError as e:
        failed = ", ".join(f"rank {r} (exit {f.exitcode})" for r, f in sorted(e.failures.items()))
        print(f"error: the {nproc}-process job stopped: {failed} failed; see its error above", file=sys.stderr)
        return 1
    except SignalException as e:  # Ctrl-C or SIGTERM: the ranks got it too and said what they kept
        print(f"error: the {nproc}-process job was stopped by {e.sigval.name}", file=sys.stderr)
        return 143 if e.sigval == signal.SIGTERM else 130
    return 0
