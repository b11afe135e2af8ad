"""Which rows each training step sees, and how they reach the device.

Every epoch has one permutation of the training view, drawn from the seed and the epoch number alone,
cut into global batches of ``batch_size`` rows; with several processes each trains on its share of every
global batch (:meth:`~pipeline.distributed.Group.batch_share`), so the order of the epoch does not depend
on the number of processes.

Where the uint8 training views live is chosen once per fit (:func:`placement`):

- ``host``: training on the CPU; batches are gathered from the arrays in memory.
- ``device``: the views fit comfortably in the accelerator's free memory; they are copied there once
  and batches are gathered on the device.
- ``streamed``: they do not fit; a background thread gathers each batch from host memory into pinned
  buffers, a few batches ahead, and the copy to the device is issued without blocking, so the device
  does not wait for the host.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch

from pipeline.distributed import Group

# the share of the device's free memory the training views may take and still be copied there
DEVICE_SHARE = 0.5
PREFETCH = 3  # batches gathered ahead of the one training


class Placement(StrEnum):
    HOST = "host"
    DEVICE = "device"
    STREAMED = "streamed"


def placement(nbytes: int, device: torch.device, free_bytes: int | None = None) -> Placement:
    """Where ``nbytes`` of training views go on ``device`` (``free_bytes``: its free memory; read from
    the device when None)."""
    if device.type == "cpu":
        return Placement.HOST
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    return Placement.DEVICE if nbytes <= DEVICE_SHARE * free_bytes else Placement.STREAMED


def describe(where: Placement, nbytes: int, device: torch.device) -> str:
    size = f"{nbytes / 2**20:.0f} MiB"
    if where is Placement.HOST:
        return f"training data: {size} in host memory, batches gathered there"
    if where is Placement.DEVICE:
        return (
            f"training data: {size} copied to {device} once (fits in {DEVICE_SHARE:.0%} of its free memory)"
        )
    return (
        f"training data: {size} streamed to {device}: more than {DEVICE_SHARE:.0%} of its free memory, so "
        f"batches are gathered {PREFETCH} ahead into pinned host memory and copied without blocking"
    )


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


@dataclass(frozen=True)
class Batch:
    step: int  # its number in the epoch
    rows: int  # rows of the global batch (all processes)
    idx: torch.Tensor  # this process's rows of the view, on the device
    x: torch.Tensor  # their uint8 images, on the device
    t: torch.Tensor  # their target rows, on the device


def epoch_batches(
    x: torch.Tensor,
    t: torch.Tensor,
    perm: torch.Tensor,
    batch_size: int,
    first_step: int,
    group: Group,
    device: torch.device,
    where: Placement,
) -> Iterator[Batch]:
    """The epoch's batches from ``first_step`` on. A last global batch with fewer rows than processes is
    skipped by every process (one process skips none)."""
    steps = [
        (step, chunk)
        for step in range(first_step, -(-len(perm) // batch_size))
        if len(chunk := perm[step * batch_size : (step + 1) * batch_size]) >= group.world
    ]
    if where is not Placement.STREAMED:
        perm_device = perm.to(device)  # host: the same tensor; device: the views are there already
        for step, chunk in steps:
            idx = group.batch_share(perm_device[step * batch_size : step * batch_size + len(chunk)])
            yield Batch(step, len(chunk), idx, x[idx], t[idx])
        return
    shares = [group.batch_share(chunk) for _, chunk in steps]
    for (step, chunk), (idx, xb, tb) in zip(steps, Prefetcher(x, t, shares, device), strict=True):
        yield Batch(step, len(chunk), idx, xb, tb)


class Prefetcher:
    """Yields ``(idx, x[idx], t[idx])`` on ``device`` for each index tensor of ``batches`` (on the host):
    a background thread gathers up to :data:`PREFETCH` batches ahead into pinned memory (on CUDA), and
    each is copied to the device without blocking the host."""

    def __init__(
        self, x: torch.Tensor, t: torch.Tensor, batches: Sequence[torch.Tensor], device: torch.device
    ) -> None:
        self.x, self.t, self.batches, self.device = x, t, batches, device
        self.pin = device.type == "cuda"

    def _gather(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for idx in self.batches:
                xb, tb = self.x[idx], self.t[idx]
                if self.pin:
                    xb, tb = xb.pin_memory(), tb.pin_memory()
                while not stop.is_set():
                    try:
                        out.put((idx, xb, tb), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            out.put(exc)
            return
        out.put(None)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        out: queue.Queue = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()
        worker = threading.Thread(target=self._gather, args=(out, stop), daemon=True, name="prefetch")
        worker.start()
        try:
            while (item := out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                idx, xb, tb = item
                yield (
                    idx.to(self.device, non_blocking=True),
                    xb.to(self.device, non_blocking=True),
                    tb.to(self.device, non_blocking=True),
                )
        finally:
            stop.set()
            worker.join()
