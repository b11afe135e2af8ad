"""Data-parallel training under ``torchrun``: the process group, and the few collective operations the
trainer needs.

``runtime.processes: N`` (N > 1) makes a training stage relaunch itself under torchrun
(:mod:`pipeline.launch`); a stage started by ``torchrun`` directly (several machines, say) finds its rank
and world size in the environment torchrun sets. Each process then trains a :class:`torch.nn.parallel.DistributedDataParallel` copy of the model on its share of every
global batch (gloo on the CPU, nccl on CUDA).

With one process, :data:`SINGLE` stands for the group and every operation here is the identity, so the
single-process path runs exactly the code it ran before this module existed.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes outputs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (sizes differ by at most one row)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def batch_share(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's rows of one global batch: every ``world``-th row from its rank on, so the global
        batch, and the order of the epoch, are the same for every number of processes."""
        return idx[self.rank :: self.world] if self.distributed else idx

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the ranks (in float64 on the CPU for gloo; returned on the input's
        device and dtype)."""
        if not self.distributed:
            return values
        buf = values.detach().to(_collective_device(), torch.float64)
        dist.all_reduce(buf)
        return buf.to(values.device, values.dtype)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any."""
        if not self.distributed:
            return flag
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def gather_rows(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """The ``n`` rows of which each rank holds its :meth:`shard`, in order, on every rank."""
        if not self.distributed:
            return part
        sizes = [self._shard_size(n, r) for r in range(self.world)]
        width = max(sizes)
        padded = torch.zeros((width, *part.shape[1:]), dtype=part.dtype, device=_collective_device())
        padded[: len(part)] = part.to(padded.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(part.device)

    def _shard_size(self, n: int, rank: int) -> int:
        base, extra = divmod(n, self.world)
        return base + (1 if rank < extra else 0)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), so evaluation on any rank, and
        the model rank 0 saves, agree."""
        if not self.distributed:
            return
        for buf in module.buffers():
            dist.broadcast(buf.data, 0)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` (those outside a DDP model) over the processes."""
        for p in params:
            if p.grad is not None:
                p.grad.copy_(self.sum(p.grad) / self.world)

    def local_readings(
        self,
        total: torch.Tensor,
        terms: Sequence[torch.Tensor],
        correct: torch.Tensor,
        labelled: torch.Tensor | None,
        rows: int,
        pending: bool,
    ) -> torch.Tensor:
        """This process's share of one training step's readings, as one vector to sum over the processes
        (:meth:`step_readings`): the loss and its terms weighted by the rows, the correct predictions,
        the labelled rows, the rows, and whether a signal is pending here."""
        device = total.device
        return torch.stack(
            [
                *(t.detach().float() * rows for t in (total, *terms)),
                correct.float(),
                (labelled if labelled is not None else torch.tensor(rows)).float().to(device),
                torch.tensor(float(rows), device=device),
                torch.tensor(float(pending), device=device),
            ]
        )

    @staticmethod
    def step_readings(
        summed: torch.Tensor, all_labelled: bool
    ) -> tuple[list[float], float, float | None, bool]:
        """One training step's readings over every process's share of the global batch, from the sum of
        their :meth:`local_readings`; on the host and the same on every process (so the non-finite guard
        and a signal stop all at the same step): ``[total loss, term 1, ...]`` (means over the global
        batch), the correct predictions, the labelled rows (None: all), and whether any process has a
        signal pending."""
        *weighted, correct_n, labelled_n, seen, stop = summed.tolist()
        return [v / seen for v in weighted], correct_n, None if all_labelled else labelled_n, stop > 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


class Piggyback:
    """Sums a small vector over the processes inside DistributedDataParallel's gradient all-reduce: the
    vector rides at the end of the last gradient bucket, so a training step needs one collective (the
    gradients, with the step's readings) instead of two. :meth:`attach` it to each DDP wrapper, set
    :attr:`pending` before the backward pass and :meth:`take` the sum after it (None when no bucket
    carried it: then sum it yourself). The gradients are averaged exactly as DDP's default does."""

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self._summed: torch.Tensor | None = None

    def attach(self, ddp: torch.nn.parallel.DistributedDataParallel) -> None:
        ddp.register_comm_hook(self, _piggyback_hook)

    def take(self) -> torch.Tensor | None:
        summed, self._summed, self.pending = self._summed, None, None
        return summed


def _piggyback_hook(state, bucket):  # noqa: ANN001, ANN202 - DDP checks the annotations, which must not be strings
    grads = bucket.buffer().div_(dist.get_world_size())
    extra = state.pending if bucket.is_last() else None
    if extra is None:
        return dist.all_reduce(grads, async_op=True).get_future().then(lambda fut: fut.value()[0])
    state.pending = None
    n = grads.numel()
    joined = torch.cat([grads, extra.to(grads.device, grads.dtype)])

    def split(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        out = fut.value()[0]
        state._summed = out[n:]
        return out[:n]

    return dist.all_reduce(joined, async_op=True).get_future().then(split)


SINGLE = Group()
_current: dict[str, Group] = {"group": SINGLE}


def current() -> Group:
    return _current["group"]


def _collective_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_environment(device_kind: str) -> Group:
    """The group torchrun's environment describes (initialised once per process), or :data:`SINGLE`.

    ``device_kind`` is where the models train: ``cuda`` uses nccl and one GPU per local rank, anything
    else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if _current["group"].distributed:
        return _current["group"]
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    group = Group(rank, world, local_rank)
    _current["group"] = group
    if rank != 0:  # one copy of the stage's report: rank 0's (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return group
