"""Data-parallel training: the sharding arithmetic, and real 2-process torchrun runs (gloo on the CPU)
of the Trainer against the same fit in one process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pipeline.distributed import SINGLE, Group
from tests.conftest import REPO

CASE = REPO / "tests" / "unit" / "ddp_case.py"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [0, 1, 7, 64, 101])
def test_shards_and_batch_shares_cover_every_row_once(world, n):
    groups = [Group(rank, world) for rank in range(world)]
    shards = [list(range(n))[g.shard(n)] for g in groups]
    assert sum(shards, []) == list(range(n))  # contiguous, in order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    batch = torch.randperm(n)
    shares = [g.batch_share(batch) for g in groups]
    assert sorted(torch.cat(shares).tolist()) == sorted(batch.tolist())


def test_one_process_is_the_identity():
    x = torch.arange(6.0)
    assert SINGLE.sum(x) is x and SINGLE.gather_rows(x, 6) is x and SINGLE.batch_share(x) is x
    assert SINGLE.any(True) and not SINGLE.any(False) and SINGLE.is_main and not SINGLE.distributed


def torchrun(case: str, out, processes: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run(
        [*cmd, str(CASE), case, str(out)], capture_output=True, text=True, timeout=300, cwd=REPO
    )


def test_two_processes_train_the_same_model_as_one_with_the_same_global_batch(tmp_path):
    """No augmentation and no BatchNorm: the gradient of the global batch's mean loss is the average of
    the two shares' gradients, so DDP must land on the single process's weights up to float rounding.
    The teacher's logits are cached once, computed in shards and gathered."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, str(CASE), "kd", str(one)], check=True, capture_output=True, timeout=300)
    result = torchrun("kd", two)
    assert result.returncode == 0, result.stdout + result.stderr
    a, b = torch.load(one), torch.load(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4, msg=key)
    h1, h2 = (json.loads(p.with_suffix(".json").read_text()) for p in (one, two))
    assert h2["teacher_passes"] == h1["teacher_passes"] == 1
    for r1, r2 in zip(h1["history"], h2["history"], strict=True):
        assert r2["val_accuracy"] == r1["val_accuracy"]
        assert r2["train_accuracy"] == r1["train_accuracy"]  # correct predictions summed over both ranks
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
    # rank 1's report is not printed: one line per epoch
    assert result.stdout.count("epoch 1/2") == 1, result.stdout


def test_a_non_finite_loss_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    out = tmp_path / "nan"
    result = torchrun("nan", out)
    assert result.returncode == 0, result.stdout + result.stderr
    outcomes = [json.loads((tmp_path / f"nan.{rank}").read_text()) for rank in (0, 1)]
    assert outcomes == [{"outcome": "TrainingDiverged", "steps": 3}] * 2


def test_step_readings_ride_in_the_gradient_all_reduce_without_changing_the_gradients(tmp_path):
    """The Trainer sums each step's readings inside DDP's gradient all-reduce (one collective a step):
    the vector arrives summed over the ranks, in one of several buckets, and the gradients are
    bit-identical to DDP's default all-reduce."""
    out = tmp_path / "piggyback.json"
    result = torchrun("piggyback", out)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(out.read_text())
    assert found["sums"] == [[3.0, 0.0], [3.0, 20.0]]
    assert found["same_gradients"] and found["buckets"] > 1
