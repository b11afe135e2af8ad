"""One Trainer fit on toy data, run by the tests in test_distributed.py, either in-process (one process)
or as ``torchrun --nproc-per-node 2 tests/unit/ddp_case.py CASE OUT`` (DistributedDataParallel on gloo).

Cases:
- ``kd``: a student distilled from a fixed teacher whose logits are cached (computed in shards and
  gathered), no augmentation: rank 0 saves the weights, history and teacher passes to OUT.
- ``nan``: the loss becomes NaN on rank 1 only, at its third step: every rank must stop at that step
  with TrainingDiverged; each writes the exception and its step count to OUT.<rank>.
- ``piggyback``: a vector summed inside the gradient all-reduce of a model split into several buckets,
  against DDP's default all-reduce of the same step: rank 0 writes the sum and whether the gradients
  are identical to OUT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline import distributed  # noqa: E402
from pipeline.data import Split  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.params import LossSpec, PluginSpec, TrainParams  # noqa: E402
from pipeline.registry import PluginInfo  # noqa: E402
from pipeline.selection import Plugin, create  # noqa: E402
from pipeline.training import Runtime, Trainer  # noqa: E402

CFG = TrainParams(
    epochs=2, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=5e-4, schedule="onecycle", augment=False
)


def toy_split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 1, 28, 28)) * 80 + y[:, None, None, None] * 17).astype(np.uint8)
    return Split(x, y.astype(np.int64))


def model(seed: int, hidden: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net, _ = create("models", PluginSpec("lenet5", {"hidden": [hidden]}), num_classes=10, in_channels=1)
    return net


def runtime() -> Runtime:
    group = distributed.from_environment("cpu")
    return Runtime(torch.device("cpu"), 0, 10, progress=False, group=group)


def kd(out: Path) -> None:
    rt = runtime()
    losses = LossSet.from_specs(
        [LossSpec("kd", {"temperature": 4.0}, 0.7), LossSpec("ce", {}, 0.3)], "distill"
    )
    net = model(0, 32)
    trainer = Trainer("distill", net, losses, CFG, rt, teacher=model(1, 64).eval())
    result = trainer.fit(toy_split(600, 0), toy_split(200, 1))  # 600 = 9 full batches and one of 24
    if rt.group.is_main:
        torch.save({k: v.clone() for k, v in net.state_dict().items()}, out)
        out.with_suffix(".json").write_text(
            json.dumps({"history": result.history, "teacher_passes": trainer.teacher_passes})
        )


def nan(out: Path) -> None:
    rt = runtime()
    steps = {"n": 0}

    def nan_on_rank_1(inputs):
        steps["n"] += 1
        loss = torch.nn.functional.cross_entropy(inputs.student_logits, inputs.labels)
        return loss * float("nan") if rt.group.rank == 1 and steps["n"] == 3 else loss

    nan_on_rank_1.requires_teacher = False
    info = PluginInfo("losses", "nan_on_rank_1", "tests:nan", "tests", "0")
    losses = LossSet([(Plugin(nan_on_rank_1, info, "teacher"), 1.0)], "teacher")
    trainer = Trainer("teacher", model(0, 32), losses, CFG, rt)
    try:
        trainer.fit(toy_split(600, 0), toy_split(200, 1))
        outcome = "finished"
    except Exception as exc:
        outcome = type(exc).__name__
    Path(f"{out}.{rt.group.rank}").write_text(json.dumps({"outcome": outcome, "steps": steps["n"]}))


def piggyback(out: Path) -> None:
    group = distributed.from_environment("cpu")
    grads, sums, buckets = [], [], 0
    for carry in (False, True):
        net = model(0, 32)
        ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=0.01)
        carrier = distributed.Piggyback()
        if carry:
            carrier.attach(ddp)
        for step in range(2):  # DDP buckets by its size cap from the second step on
            carrier.pending = torch.tensor([group.rank + 1.0, 10.0 * step]) if carry else None
            net.zero_grad()
            x = torch.from_numpy(toy_split(8, group.rank + step).x).float() / 255
            ddp(x).square().mean().backward()
            grads.append([p.grad.clone() for p in net.parameters()])
            if carry:
                sums.append(carrier.take().tolist())
        buckets = len(ddp.reducer._get_zeros_like_grad_buckets())
    same = all(torch.equal(a, b) for a, b in zip(grads[0] + grads[1], grads[2] + grads[3], strict=True))
    if group.is_main:
        out.write_text(json.dumps({"sums": sums, "same_gradients": same, "buckets": buckets}))


if __name__ == "__main__":
    {"kd": kd, "nan": nan, "piggyback": piggyback}[sys.argv[1]](Path(sys.argv[2]))
