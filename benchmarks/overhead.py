"""The Trainer against a hand-written PyTorch loop, side by side in one process.

    python benchmarks/overhead.py [--runs 7] [--images 55000] [--out benchmarks/RESULTS.md]

Both loops train the same models (built with the same seed), on the same Fashion-MNIST images, with the
same optimizer (AdamW, one-cycle schedule per step), batch size and memory format, and both validate
once per epoch at the same batch size. The bare loop is what a user would write: index a batch, scale to
[0, 1], augment, forward, loss, backward, step, and read ``loss.item()`` for its running loss; the
Trainer runs as the stages run it (loss set, guard, per-term metrics, a checkpoint every epoch). Runs
alternate (Trainer, bare, Trainer, ...) so that a slow spell of this shared machine hits both; each
ratio is bare seconds / Trainer seconds per pair, and the table gives the median over the pairs
(above 1: the Trainer is faster).

Scenarios:
- student alone: lenet5, cross-entropy, no augmentation, one epoch;
- KD online: lenet5 from resnet8 (KD T=4 + CE, 0.5 each), flip + crop every batch, so the teacher runs on
  every batch in both loops; one epoch;
- KD cached, one epoch: no augmentation; the Trainer computes the teacher's logits in one inference pass
  (at ``runtime.eval_batch_size``, included in its time) and reuses them, the bare loop runs the teacher on
  every batch;
- KD cached, 20 epochs: the same over 20 epochs (on ``--images-long`` images, so it fits a few minutes),
  where the one caching pass serves all epochs.

Also measured: the teacher's inference throughput per batch size and memory format, which sets the
``runtime.eval_batch_size`` default.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import FASHION_CLASSES, Split, load_fashion_mnist  # noqa: E402
from pipeline.evaluation import predict_logits  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.params import LossSpec, PluginSpec, load_params  # noqa: E402
from pipeline.selection import Plugin, create  # noqa: E402
from pipeline.training import Runtime, Trainer  # noqa: E402

NUM_CLASSES = len(FASHION_CLASSES)  # the benchmarks run on Fashion-MNIST: 10 classes of grey 28x28

KD = [LossSpec("kd", {"temperature": 4.0}, 0.5), LossSpec("ce", {}, 0.5)]
AUGMENT = [PluginSpec("flip", {"p": 0.5}), PluginSpec("crop", {"padding": 2})]


def model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create("models", PluginSpec(name), num_classes=NUM_CLASSES, in_channels=1)[0]


def onecycle(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm, decay = max(1, steps // 4), max(1, steps - max(1, steps // 4))
    return torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * min(s - warm, decay) / decay))
        ),
    )


def bare_loop(
    student, teacher, train: Split, val: Split, cfg, augmenters, kd: bool, memory_format, eval_batch
):
    """The hand-written loop (the reference the Trainer is measured against)."""
    x_all, y_all = torch.as_tensor(train.x), torch.as_tensor(train.y)  # numpy, or tensors on a GPU
    student.to(memory_format=memory_format)
    if teacher is not None:
        teacher.to(memory_format=memory_format).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = math.ceil(len(y_all) / cfg.batch_size)
    sched = onecycle(opt, cfg.epochs * batches)
    g = torch.Generator(device=x_all.device).manual_seed(0)
    for epoch in range(cfg.epochs):
        student.train()
        perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(epoch))
        running = 0.0
        for step in range(batches):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = x_all[idx].float().div_(255.0).contiguous(memory_format=memory_format)
            y = F.one_hot(y_all[idx], NUM_CLASSES).float()
            for aug in augmenters:
                x, y = aug(x, y, g)
            logits = student(x)
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
            running += loss.item()
        student.eval()
        with torch.no_grad():
            for i in range(0, len(val.y), eval_batch):
                student(
                    torch.as_tensor(val.x[i : i + eval_batch])
                    .float()
                    .div_(255.0)
                    .contiguous(memory_format=memory_format)
                )


def trainer_loop(student, teacher, train, val, cfg, augmenters, kd: bool, runtime: Runtime) -> None:
    """The Trainer as the stages run it, checkpointing every epoch."""
    losses = LossSet.from_specs(KD if kd else [LossSpec("ce")], "bench")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            "bench",
            student,
            losses,
            cfg,
            runtime,
            augmenters=augmenters,
            teacher=teacher if kd else None,
            checkpoint=Path(tmp) / "bench.pt",
        )
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.fit(train, val)


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def scenario(name, train, val, cfg, runtime, teacher_state, augment: bool, kd: bool, runs: int) -> dict:
    augs = [Plugin(*create("augmenters", spec), "bench", spec=spec) for spec in AUGMENT] if augment else []
    pairs = []
    for run in range(-1, runs):  # run -1 warms both loops up and is not counted
        teacher_t = model("resnet8", 1)
        teacher_t.load_state_dict(teacher_state)
        teacher_b = model("resnet8", 1)
        teacher_b.load_state_dict(teacher_state)
        args_t = (model("lenet5", run + 1), teacher_t, train, val, cfg, augs, kd)
        args_b = (model("lenet5", run + 1), teacher_b, train, val, cfg, augs, kd)
        first, second = ("trainer", "bare") if run % 2 == 0 else ("bare", "trainer")
        seconds = {}
        for which in (first, second):
            if which == "trainer":
                seconds[which] = timed(lambda a=args_t: trainer_loop(*a, runtime))
            else:
                seconds[which] = timed(
                    lambda a=args_b: bare_loop(*a, runtime.memory_format, runtime.eval_batch_size)
                )
        if run < 0:
            continue
        pairs.append(seconds)
        print(
            f"  {name} run {run + 1}: Trainer {seconds['trainer']:.2f} s, bare {seconds['bare']:.2f} s",
            flush=True,
        )
    ratios = [p["bare"] / p["trainer"] for p in pairs]
    return {
        "name": name,
        "trainer": statistics.median(p["trainer"] for p in pairs),
        "bare": statistics.median(p["bare"] for p in pairs),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


def teacher_throughput(teacher_state, x: torch.Tensor) -> list[tuple[str, int, float]]:
    rows = []
    for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        teacher = model("resnet8", 1)
        teacher.load_state_dict(teacher_state)
        teacher.to(memory_format=fmt).eval()
        for batch in (64, 128, 256, 512, 1024):
            best = min(
                timed(lambda t=teacher, b=batch, f=fmt: predict_logits(t, x, torch.device("cpu"), b, f))
                for _ in range(3)
            )
            rows.append((fmt_name, batch, len(x) / best))
            print(f"  teacher inference {fmt_name} batch {batch}: {len(x) / best:,.0f} img/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--images", type=int, default=55000)
    parser.add_argument("--images-long", type=int, default=4000)
    parser.add_argument(
        "--out", default="benchmarks/RESULTS.md", help="markdown file whose overhead section is (re)written"
    )
    args = parser.parse_args()
    params = load_params("params.yaml")
    train_all, test, _ = load_fashion_mnist(Path(params.data.dataset.kwargs.get("root", "data/raw")), "auto")
    val = Split(test.x[:5000], test.y[:5000])
    runtime = Runtime.from_params(params.runtime, 0, NUM_CLASSES)
    runtime = replace(runtime, progress=False)
    # random weights: the time of a forward pass does not depend on them, and the pipeline's own teacher
    # (models/teacher) is another architecture than the resnet8 these figures are for
    teacher_state, teacher_from = model("resnet8", 1).state_dict(), "randomly initialised"
    cfg = replace(params.distill, epochs=1, augment=False)
    train = Split(train_all.x[: args.images], train_all.y[: args.images])
    long_train = Split(train_all.x[: args.images_long], train_all.y[: args.images_long])
    long_val = Split(val.x[:1000], val.y[:1000])
    print(f"teacher: {teacher_from}; threads {torch.get_num_threads()}")
    throughput = teacher_throughput(teacher_state, torch.from_numpy(train.x[:10000]))
    results = [
        scenario("student alone, 1 epoch", train, val, cfg, runtime, teacher_state, False, False, args.runs),
        scenario(
            "KD, online flip+crop, teacher every step, 1 epoch",
            train,
            val,
            cfg,
            runtime,
            teacher_state,
            True,
            True,
            args.runs,
        ),
        scenario(
            "KD, cached teacher (caching pass included), 1 epoch",
            train,
            val,
            cfg,
            runtime,
            teacher_state,
            False,
            True,
            args.runs,
        ),
        scenario(
            "KD, cached teacher vs teacher every step, 20 epochs",
            long_train,
            long_val,
            replace(cfg, epochs=20),
            runtime,
            teacher_state,
            False,
            True,
            args.runs,
        ),
    ]
    lines = [
        "## Trainer overhead against a bare PyTorch loop",
        "",
        f"Measured with `python benchmarks/overhead.py --runs {args.runs} --images {args.images} "
        f"--images-long {args.images_long}` on {datetime.date.today()}: {platform.machine()}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, torch {torch.__version__}; "
        f"lenet5 student, resnet8 teacher ({teacher_from}), batch {cfg.batch_size}, AdamW + one-cycle, "
        f"memory format {'channels_last' if runtime.channels_last else 'NCHW'} in both loops, the Trainer "
        f"checkpointing every epoch as the stages run it, validation on "
        f"{len(val.y)} images per epoch ({len(long_val.y)} in the 20-epoch case) at batch "
        f"{runtime.eval_batch_size}. Runs alternate Trainer/bare; ratio = bare seconds / Trainer seconds per "
        f"pair, median over {args.runs} pairs after one uncounted warm-up pair (above 1: the Trainer is "
        f"faster). A shared 2-core machine is noisy: the per-pair ratios are listed.",
        "",
        "| scenario | images x epochs | Trainer s (median) | bare s (median) | ratio (median) | ratios per pair |",
        "|---|---|---|---|---|---|",
    ]
    for r, (n, e) in zip(results, [(args.images, 1)] * 3 + [(args.images_long, 20)], strict=True):
        lines.append(
            f"| {r['name']} | {n:,} x {e} | {r['trainer']:.2f} | {r['bare']:.2f} | {r['ratio']:.2f}x | "
            f"{', '.join(f'{x:.2f}' for x in r['ratios'])} |"
        )
    lines += [
        "",
        "Teacher inference throughput (resnet8 in eval mode, `predict_logits` over 10,000 images, best of 3), "
        "which sets `runtime.eval_batch_size`:",
        "",
        "| memory format | " + " | ".join(f"batch {b}" for b in (64, 128, 256, 512, 1024)) + " |",
        "|---|" + "---|" * 5,
    ]
    for fmt in ("NCHW", "channels_last"):
        lines.append(
            f"| {fmt} | " + " | ".join(f"{t:,.0f} img/s" for f, _b, t in throughput if f == fmt) + " |"
        )
    write_section(Path(args.out), "\n".join(lines))
    print("\n".join(lines))


BEGIN, END = "<!-- overhead: written by benchmarks/overhead.py -->", "<!-- /overhead -->"


def write_section(path: Path, text: str) -> None:
    """Replace the overhead section of ``path`` (or append it)."""
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
