"""The Trainer on a CUDA device: host synchronisations per training step, and speed against the
hand-written loop of benchmarks/overhead.py on the same GPU.

    python benchmarks/cuda_path.py [--out cuda_path.md]

Synchronisations are counted with ``torch.cuda.set_sync_debug_mode("warn")``, which warns at every
operation that makes the host wait for the device (``.item()``, ``.tolist()``, ``.cpu()``, a boolean
mask, ...); each warning is attributed to the project's function that caused it. The images are random
uint8 pixels (the content does not change the work), so the check needs no dataset on the machine.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import statistics
import sys
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from overhead import bare_loop, timed  # noqa: E402

from pipeline.data import Split  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.params import TrainParams  # noqa: E402
from pipeline.registry import PluginInfo  # noqa: E402
from pipeline.selection import Plugin  # noqa: E402
from pipeline.training import Runtime, Trainer  # noqa: E402
from plugins.augmenters import Flip, PadCrop  # noqa: E402

CFG = TrainParams(
    epochs=1,
    batch_size=128,
    optimizer="adamw",
    lr=3e-3,
    weight_decay=5e-4,
    schedule="onecycle",
    augment=False,
)


def model(name: str, seed: int) -> torch.nn.Module:
    """The built-in models by class (no installed entry points needed on the GPU machine)."""
    from plugins.models import LeNet5, ResNet8

    torch.manual_seed(seed)
    return {"lenet5": LeNet5, "resnet8": ResNet8}[name](10, 1)


def split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(
        rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)
    )


def augmenters() -> list[Plugin]:
    return [
        Plugin(
            Flip(), PluginInfo("augmenters", "flip", "plugins.augmenters:Flip", "distillops", "dev"), "bench"
        ),
        Plugin(
            PadCrop(),
            PluginInfo("augmenters", "crop", "plugins.augmenters:PadCrop", "distillops", "dev"),
            "bench",
        ),
    ]


def losses(kd: bool) -> LossSet:
    from plugins.losses import CrossEntropy, KnowledgeDistillation

    def info(name: str) -> PluginInfo:
        return PluginInfo("losses", name, f"plugins.losses:{name}", "distillops", "dev")

    if not kd:
        return LossSet([(Plugin(CrossEntropy(), info("ce"), "bench"), 1.0)], "bench")
    return LossSet(
        [
            (Plugin(KnowledgeDistillation(temperature=4.0), info("kd"), "bench"), 0.5),
            (Plugin(CrossEntropy(), info("ce"), "bench"), 0.5),
        ],
        "bench",
    )


def trainer(kd: bool, augment: bool, runtime: Runtime, steps_seed: int = 0) -> Trainer:
    teacher = model("resnet8", 1) if kd else None
    return Trainer(
        "bench",
        model("lenet5", steps_seed),
        losses(kd),
        CFG,
        runtime,
        augmenters=augmenters() if augment else [],
        teacher=teacher,
    )


def syncs_per_step(
    kd: bool, augment: bool, runtime: Runtime, steps: int = 20
) -> tuple[float, dict[str, int]]:
    """Host syncs in the training steps of one epoch of ``steps`` batches, per step, and where from."""
    t = trainer(kd, augment, runtime)
    train, val = split(steps * CFG.batch_size, 0), split(256, 1)
    where: collections.Counter[str] = collections.Counter()
    in_steps = 0

    def record(message, category, filename, lineno, file=None, line=None):
        nonlocal in_steps
        stack = traceback.extract_stack()
        frames = [f for f in stack if "/pipeline/" in f.filename or "/plugins/" in f.filename]
        origin = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else f"{filename}:{lineno}"
        where[origin] += 1
        if any(f.name == "_step" for f in stack):
            in_steps += 1

    old = warnings.showwarning
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            with contextlib.redirect_stdout(io.StringIO()):
                t.fit(train, val)
            torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = old
    return in_steps / steps, dict(where)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="cuda_path.md")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA device"
    torch.manual_seed(0)
    runtime = Runtime(torch.device("cuda"), 0, 10, channels_last=True, progress=False, eval_batch_size=256)
    lines = [
        f"# CUDA path: {torch.cuda.get_device_name()}, torch {torch.__version__}",
        "",
        "| scenario | host syncs per training step | where every sync of the fit came from |",
        "|---|---|---|",
    ]
    cases = {
        "student alone": (False, False),
        "KD, flip+crop online, teacher every step": (True, True),
        "KD, cached teacher": (True, False),
    }
    for name, (kd, augment) in cases.items():
        per_step, where = syncs_per_step(kd, augment, runtime)
        lines.append(
            f"| {name} | {per_step:.2f} | {', '.join(f'{k}: {v}' for k, v in sorted(where.items()))} |"
        )
        print(lines[-1], flush=True)
    train, val = split(args.images, 0), split(5000, 1)
    lines += ["", "| scenario | Trainer s (median) | bare s (median) | bare / Trainer |", "|---|---|---|---|"]
    for name, (kd, augment) in cases.items():
        pairs = []
        for run in range(args.runs):
            t = trainer(kd, augment, runtime, run)
            teacher_b = model("resnet8", 1).cuda() if kd else None
            student_b = model("lenet5", run).cuda()
            augs = augmenters() if augment else []
            with contextlib.redirect_stdout(io.StringIO()):
                a = timed(lambda t=t: (t.fit(train, val), torch.cuda.synchronize()))
            b = timed(
                lambda s=student_b, te=teacher_b, au=augs, k=kd: (
                    bare_loop_cuda(s, te, train, val, au, k),
                    torch.cuda.synchronize(),
                )
            )
            pairs.append((a, b))
        ta, tb = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        lines.append(
            f"| {name} | {ta:.2f} | {tb:.2f} | {statistics.median(p[1] / p[0] for p in pairs):.2f}x |"
        )
        print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


def bare_loop_cuda(student, teacher, train: Split, val: Split, augs, kd: bool) -> None:
    """overhead.bare_loop with the data on the GPU, as the Trainer keeps it there."""
    device = torch.device("cuda")
    on_gpu = Split(torch.from_numpy(train.x).to(device), torch.from_numpy(train.y).to(device))
    val_gpu = Split(torch.from_numpy(val.x).to(device), torch.from_numpy(val.y).to(device))
    bare_loop(student, teacher, on_gpu, val_gpu, replace(CFG), augs, kd, torch.channels_last, 256)


if __name__ == "__main__":
    main()
