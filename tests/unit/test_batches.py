"""Which rows each step trains on, and how they reach the device: the same batches whether the views
are gathered in host memory, on the device, or streamed by the prefetcher."""

from __future__ import annotations

import pytest
import torch

from pipeline import batches
from pipeline.batches import Placement, Prefetcher, epoch_batches, placement
from pipeline.distributed import SINGLE, Group

CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)


def test_placement_keeps_data_on_the_device_only_when_it_fits_comfortably():
    assert placement(10**12, CPU) is Placement.HOST
    assert placement(400, GPU, free_bytes=1000) is Placement.DEVICE
    assert placement(600, GPU, free_bytes=1000) is Placement.STREAMED
    assert "streamed" in batches.describe(Placement.STREAMED, 2**30, GPU)


def views(n: int = 103):
    x = torch.arange(n * 4, dtype=torch.uint8).reshape(n, 1, 2, 2)
    t = torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float()
    return x, t


@pytest.mark.parametrize("group", [SINGLE, Group(0, 2), Group(1, 2)])
def test_streamed_batches_are_the_host_batches(group):
    x, t = views()
    perm = batches.epoch_permutation(len(x), seed=3, epoch=1)
    host = list(epoch_batches(x, t, perm, 16, 2, group, CPU, Placement.HOST))
    streamed = list(epoch_batches(x, t, perm, 16, 2, group, CPU, Placement.STREAMED))
    assert [b.step for b in host] == [b.step for b in streamed] == list(range(2, 7))
    for a, b in zip(host, streamed, strict=True):
        assert torch.equal(a.idx, b.idx) and torch.equal(a.x, b.x) and torch.equal(a.t, b.t)
        assert a.rows == b.rows and torch.equal(a.x, x[a.idx])


def test_a_last_batch_smaller_than_the_process_count_is_skipped_by_every_process():
    x, t = views(33)  # 2 batches of 16, then 1 row
    perm = torch.arange(33)
    assert [b.rows for b in epoch_batches(x, t, perm, 16, 0, SINGLE, CPU, Placement.HOST)] == [16, 16, 1]
    assert [b.rows for b in epoch_batches(x, t, perm, 16, 0, Group(1, 2), CPU, Placement.HOST)] == [16, 16]


def test_the_epoch_order_depends_on_the_seed_and_epoch_only():
    a, b = (batches.epoch_permutation(50, 7, 2) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, batches.epoch_permutation(50, 7, 3))


def test_the_prefetcher_hands_a_gathering_error_to_the_training_loop():
    x, t = views(10)
    bad = [torch.tensor([0, 1]), torch.tensor([99])]  # row 99 does not exist
    got = []
    with pytest.raises(IndexError):
        for idx, _, _ in Prefetcher(x, t, bad, CPU):
            got.append(idx)
    assert len(got) == 1


def test_the_prefetcher_stops_its_thread_when_the_loop_stops_early():
    x, t = views(100)
    shares = [torch.arange(i, i + 5) for i in range(0, 100, 5)]
    for n, _ in enumerate(Prefetcher(x, t, shares, CPU)):
        if n == 2:
            break
    assert not any(th.name == "prefetch" and th.is_alive() for th in __import__("threading").enumerate())
