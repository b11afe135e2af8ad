"""The Trainer under torchrun against a hand-written DistributedDataParallel loop, in the same processes.

    python benchmarks/ddp.py [--processes 2] [--runs 5] [--images 55000] [--out benchmarks/DDP.md]

The script starts ``torchrun --standalone --nproc-per-node N`` on itself. Every worker trains, in turn,
the Trainer (as the stages run it: loss set, guard, readings reduced every step, sharded validation
gathered on every process, a checkpoint every epoch from rank 0) and a bare DDP loop (what a user would
write: each process takes its rows of every global batch, forward, loss, backward, step, ``loss.item()``;
each validates its half of the validation split). Same models (built with the same seed), data, global
batch, AdamW + one-cycle, memory format. Runs alternate so a slow spell hits both; the ratio is bare
seconds / Trainer seconds per pair (above 1: the Trainer is faster), median over the pairs, after one
uncounted warm-up pair. Also timed: the Trainer in one process on the same data, for the speed-up the
processes bring on this machine.

Scenarios: the student alone (lenet5, cross-entropy, no augmentation) and KD with online flip + crop
(resnet8 teacher on every step), one epoch each.
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
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.overhead import AUGMENT, KD, NUM_CLASSES, model, onecycle  # noqa: E402
from pipeline import distributed  # noqa: E402
from pipeline.data import Split, load_fashion_mnist  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.params import LossSpec, load_params  # noqa: E402
from pipeline.selection import Plugin, create  # noqa: E402
from pipeline.training import Runtime, Trainer  # noqa: E402


def bare_ddp(student, teacher, train: Split, val: Split, cfg, augmenters, kd: bool, rt: Runtime) -> None:
    group, fmt = rt.group, rt.memory_format
    x_all, y_all = torch.as_tensor(train.x), torch.as_tensor(train.y)
    student.to(memory_format=fmt)
    net = torch.nn.parallel.DistributedDataParallel(student)
    if teacher is not None:
        teacher.to(memory_format=fmt).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = math.ceil(len(y_all) / cfg.batch_size)
    sched = onecycle(opt, cfg.epochs * batches)
    g = torch.Generator().manual_seed(group.rank)
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(epoch))
        for step in range(batches):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size][group.rank :: group.world]
            x = x_all[idx].float().div_(255.0).contiguous(memory_format=fmt)
            y = F.one_hot(y_all[idx], NUM_CLASSES).float()
            for aug in augmenters:
                x, y = aug(x, y, g)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            if kd:
                with torch.no_grad():
                    t_logits = teacher(x)
                soft = F.kl_div(
                    F.log_softmax(logits / 4.0, 1),
                    F.log_softmax(t_logits / 4.0, 1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = 0.5 * soft * 16.0 + 0.5 * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss.item()
        net.eval()
        mine = group.shard(len(val.y))
        with torch.no_grad():
            vx = torch.as_tensor(val.x[mine])
            for i in range(0, len(vx), rt.eval_batch_size):
                student(vx[i : i + rt.eval_batch_size].float().div_(255.0).contiguous(memory_format=fmt))


def trainer_fit(student, teacher, train, val, cfg, augmenters, kd: bool, rt: Runtime) -> None:
    losses = LossSet.from_specs(KD if kd else [LossSpec("ce")], "bench")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            "bench",
            student,
            losses,
            cfg,
            rt,
            augmenters=augmenters,
            teacher=teacher if kd else None,
            checkpoint=Path(tmp) / "bench.pt",  # every process passes it; rank 0 writes it
        )
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(train, val)


def timed(fn) -> float:
    distributed.current().barrier()
    t0 = time.perf_counter()
    fn()
    distributed.current().barrier()
    return time.perf_counter() - t0


def worker(args: argparse.Namespace) -> None:
    params = load_params("params.yaml")
    group = distributed.from_environment("cpu")
    rt = replace(
        Runtime(
            torch.device("cpu"),
            0,
            NUM_CLASSES,
            params.runtime.channels_last,
            False,
            params.runtime.eval_batch_size,
        ),
        group=group,
    )
    train_all, test, _ = load_fashion_mnist(Path(params.data.dataset.kwargs.get("root", "data/raw")), "auto")
    train, val = (
        Split(train_all.x[: args.images], train_all.y[: args.images]),
        Split(test.x[:5000], test.y[:5000]),
    )
    cfg = replace(params.distill, epochs=1, augment=False)
    results = {}
    for name, augment, kd in (
        ("student alone", False, False),
        ("KD, online flip+crop, teacher every step", True, True),
    ):
        augs = [Plugin(*create("augmenters", s), "bench", spec=s) for s in AUGMENT] if augment else []
        pairs = []
        for run in range(-1, args.runs):
            seconds = {}
            order = ("trainer", "bare") if run % 2 == 0 else ("bare", "trainer")
            for which in order:
                fn = trainer_fit if which == "trainer" else bare_ddp
                a = (
                    model("lenet5", run + 2),
                    model("resnet8", 1) if kd else None,
                    train,
                    val,
                    cfg,
                    augs,
                    kd,
                    rt,
                )
                seconds[which] = timed(lambda fn=fn, a=a: fn(*a))
            if run >= 0:
                pairs.append(seconds)
                if group.is_main:
                    print(
                        f"  {name} run {run + 1}: Trainer {seconds['trainer']:.2f} s, bare {seconds['bare']:.2f} s",
                        flush=True,
                    )
        results[name] = pairs
    if group.is_main:
        Path(args.result).write_text(json.dumps({"results": results, "threads": torch.get_num_threads()}))


def single(args: argparse.Namespace) -> dict[str, float]:
    """The Trainer in this one process on the same data (all cores), for the speed-up."""
    params = load_params("params.yaml")
    rt = Runtime.from_params(replace(params.runtime, progress=False), 0, NUM_CLASSES)
    train_all, test, _ = load_fashion_mnist(Path(params.data.dataset.kwargs.get("root", "data/raw")), "auto")
    train, val = (
        Split(train_all.x[: args.images], train_all.y[: args.images]),
        Split(test.x[:5000], test.y[:5000]),
    )
    cfg = replace(params.distill, epochs=1, augment=False)
    out = {}
    for name, augment, kd in (
        ("student alone", False, False),
        ("KD, online flip+crop, teacher every step", True, True),
    ):
        augs = [Plugin(*create("augmenters", s), "bench", spec=s) for s in AUGMENT] if augment else []
        times = [
            timed(
                lambda r=r, augs=augs, kd=kd: trainer_fit(
                    model("lenet5", r), model("resnet8", 1) if kd else None, train, val, cfg, augs, kd, rt
                )
            )
            for r in range(args.runs + 1)
        ][1:]
        out[name] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=55000)
    parser.add_argument("--out", default="benchmarks/DDP.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.processes))}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.processes}",
        ]
        cmd += [
            __file__,
            "--worker",
            "--result",
            str(result),
            "--runs",
            str(args.runs),
            "--images",
            str(args.images),
        ]
        subprocess.run(cmd, check=True, env=env)
        found = json.loads(result.read_text())
    one = single(args)
    lines = [
        f"## The Trainer under torchrun ({args.processes} processes) against a bare DDP loop",
        "",
        f"Measured with `python benchmarks/ddp.py --processes {args.processes} --runs {args.runs} --images "
        f"{args.images}` on {datetime.date.today()}: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_version()}, torch {torch.__version__}, gloo on the CPU, {found['threads']} thread(s) "
        f"per process; lenet5 student, resnet8 teacher (random weights: speed only), global batch 128, AdamW + "
        f"one-cycle, one epoch, validation on 5,000 images. Ratio = bare seconds / Trainer seconds per pair, "
        f"median over {args.runs} pairs (above 1: the Trainer is faster). One process: the Trainer alone with "
        f"all cores, median of {args.runs}.",
        "",
        "| scenario | Trainer s (median) | bare DDP s (median) | ratio (median) | ratios per pair | Trainer, 1 process s | speed-up of the processes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, pairs in found["results"].items():
        trainer = statistics.median(p["trainer"] for p in pairs)
        bare = statistics.median(p["bare"] for p in pairs)
        ratios = [p["bare"] / p["trainer"] for p in pairs]
        lines.append(
            f"| {name} | {trainer:.2f} | {bare:.2f} | {statistics.median(ratios):.2f}x | "
            f"{', '.join(f'{r:.2f}' for r in ratios)} | {one[name]:.2f} | {one[name] / trainer:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
