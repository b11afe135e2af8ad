"""Mixed precision, torch.compile and the teacher-logit cache on a realistic workload: the Trainer against
a hand-written loop, each configuration in its own process (so each peak memory is its own).

    python benchmarks/engines.py [--images 2048] [--epochs 1] [--out benchmarks/ENGINES.md]

Workload: a CIFAR-style resnet18 teacher (11M parameters, random weights: speed only) distilled into a
resnet8 student (78k) on random 32x32 RGB uint8 images, global batch 256, KD (T=4) + CE, AdamW +
one-cycle, on CUDA when there is one, else the CPU. Configurations:

- fp32, bf16 autocast, and fp32 with ``torch.compile`` (student and teacher forward), each for the
  Trainer and for the bare loop, with the teacher run on every step (as with online augmentation);
- the Trainer with the teacher's logits cached once (no augmentation), fp32: the ratio of cached to
  per-step KD.

Reported: images per second over the timed epochs (compile time excluded: one untimed warm-up epoch
first for every configuration), peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak
resident set), and ratios against the bare fp32 loop of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import Split, to_float  # noqa: E402
from pipeline.evaluation import autocast  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.params import LossSpec, PluginSpec, TrainParams  # noqa: E402
from pipeline.selection import create  # noqa: E402
from pipeline.training import AMP_DTYPES, Runtime, Trainer  # noqa: E402

BATCH = 256
CONFIGS = [  # (loop, precision, compile, teacher cached)
    ("bare", "fp32", False, False),
    ("trainer", "fp32", False, False),
    ("bare", "bf16", False, False),
    ("trainer", "bf16", False, False),
    ("bare", "fp32", True, False),
    ("trainer", "fp32", True, False),
    ("trainer", "fp32", False, True),
]


def build(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create("models", PluginSpec(name), num_classes=10, in_channels=3)[0]


def data(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(
        rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)
    )


def bare(student, teacher, train: Split, epochs: int, device, precision: str, compiled: bool) -> None:
    """The hand-written loop: batch, scale, forward under autocast, KD + CE, backward, step."""
    amp = AMP_DTYPES[precision]
    x_all = torch.as_tensor(train.x).to(device)
    y_all = torch.as_tensor(train.y).to(device)
    student.to(device, memory_format=torch.channels_last)
    teacher.to(device, memory_format=torch.channels_last).eval()
    s_fwd, t_fwd = (torch.compile(student), torch.compile(teacher)) if compiled else (student, teacher)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=5e-4)
    steps = math.ceil(len(y_all) / BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * steps)
    for epoch in range(epochs):
        perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(epoch)).to(device)
        for step in range(steps):
            idx = perm[step * BATCH : (step + 1) * BATCH]
            x = to_float(x_all[idx]).contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                with torch.no_grad():
                    t = t_fwd(x)
                s = s_fwd(x)
            s, t = s.float(), t.float()
            kd = F.kl_div(
                F.log_softmax(s / 4, 1), F.log_softmax(t / 4, 1), reduction="batchmean", log_target=True
            )
            loss = 0.5 * 16 * kd + 0.5 * F.cross_entropy(s, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss.item()


def trainer(student, teacher, train: Split, val: Split, epochs: int, runtime: Runtime, cached: bool) -> None:
    cfg = TrainParams(epochs, BATCH, "adamw", 3e-3, 5e-4, "onecycle", False)
    losses = LossSet.from_specs([LossSpec("kd", {"temperature": 4.0}, 0.5), LossSpec("ce", {}, 0.5)], "bench")
    t = Trainer("bench", student, losses, cfg, runtime, teacher=teacher)
    if not cached:
        t.cache_teacher = False  # the teacher on every step, as with online augmentation
    with contextlib.redirect_stdout(io.StringIO()):
        t.fit(train, val)


def one(args: argparse.Namespace) -> dict:
    loop, precision, compiled, cached = json.loads(args.one)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, val = data(args.images, 0), data(256, 1)
    runtime = Runtime(
        device, 0, 10, channels_last=True, progress=False, precision=precision, compile=compiled
    )

    def run(epochs: int) -> None:
        student, teacher = build("resnet8", 0), build("resnet18", 1)
        if loop == "bare":
            bare(student, teacher, train, epochs, device, precision, compiled)
        else:
            trainer(student, teacher, train, val, epochs, runtime, cached)

    run(1)  # warm-up (and compilation): not timed
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(args.epochs)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - t0
    return {"images_per_s": args.images * args.epochs / seconds, "peak_mib": peak, "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/ENGINES.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as cache:  # every compile starts cold, as a user's first run does
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for config in CONFIGS:
            cmd = [sys.executable, __file__, "--images", str(args.images), "--epochs", str(args.epochs)]
            out = subprocess.run([*cmd, "--one", json.dumps(config)], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                rows.append((config, {"error": out.stderr.strip().splitlines()[-1]}))
            else:
                rows.append((config, json.loads(out.stdout.strip().splitlines()[-1])))
            print(config, rows[-1][1], flush=True)
    base = rows[0][1].get("images_per_s")
    device = next((r["device"] for _, r in rows if "device" in r), "?")
    cpu = platform.processor() or platform.machine()
    lines = [
        "## Mixed precision, compile and cached teacher logits: the Trainer against a bare loop",
        "",
        f"Measured with `python benchmarks/engines.py --images {args.images} --epochs {args.epochs}` on "
        f"{datetime.date.today()}: device {device} ({cpu}, {os.cpu_count()} cores), torch {torch.__version__}; "
        f"resnet18 teacher -> resnet8 student, random 32x32 RGB uint8 images, batch {BATCH}, KD T=4 + CE, "
        f"AdamW + one-cycle, channels_last; one untimed warm-up epoch per configuration (compilation "
        f"included there), then {args.epochs} timed epoch(s). Ratio: images/s against the bare fp32 loop.",
        "",
        "| loop | precision | compile | teacher | images/s | vs bare fp32 | peak memory MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for (loop, precision, compiled, cached), r in rows:
        teacher = "cached logits" if cached else "every step"
        if "error" in r:
            lines.append(f"| {loop} | {precision} | {compiled} | {teacher} | failed: {r['error']} | | |")
            continue
        lines.append(
            f"| {loop} | {precision} | {'yes' if compiled else 'no'} | {teacher} | {r['images_per_s']:,.0f} | "
            f"{r['images_per_s'] / base:.2f}x | {r['peak_mib']:,.0f} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
