"""Every built-in distillation loss on the same student, teacher, data and seeds.

    python benchmarks/distill_methods.py [--seeds 0] [--train-limit 10000] [--epochs 20]
                                         [--methods kd at ...] [--out benchmarks/DISTILL_METHODS.md]

Run after `dvc repro` (it reads models/teacher and data/prepared). Everything but the losses is the
distill stage's configuration (student, optimiser, schedule, batch size); the training split can be
cut (--train-limit) so the feature losses, which run the teacher on every batch, finish in minutes.
The feature losses are added on top of the default KD + CE terms, as their papers do.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from common import pipeline_inputs, train_student

from pipeline.params import LossSpec, load_params
from pipeline.report import mean_std

KD, CE = LossSpec("kd", {"temperature": 4.0}, 0.5), LossSpec("ce", {}, 0.5)
METHODS: dict[str, tuple[LossSpec, ...]] = {
    "alone (ce)": (LossSpec("ce"),),
    "kd": (KD, CE),
    "mse_logits": (LossSpec("mse_logits", {}, 0.5), CE),
    "dkd": (LossSpec("dkd", {}, 1.0), LossSpec("ce")),
    "dist": (LossSpec("dist", {}, 1.0), LossSpec("ce")),
    "kd + fitnets": (KD, CE, LossSpec("fitnets", {}, 1.0)),
    "kd + at": (KD, CE, LossSpec("at", {}, 1.0)),
    "kd + rkd": (KD, CE, LossSpec("rkd", {}, 1.0)),
    "kd + pkt": (KD, CE, LossSpec("pkt", {}, 1.0)),
}


def describe(specs: tuple[LossSpec, ...]) -> str:
    return " + ".join(f"{s.weight:g}*{s.name}" for s in specs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=None, help="default: distill.epochs")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(Path(__file__).with_name("DISTILL_METHODS.md")))
    args = parser.parse_args()
    params = load_params(args.params)
    cfg = params.distill
    if args.epochs:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    splits, teacher = pipeline_inputs(params)
    splits["train"] = splits["train"].head(args.train_limit)
    rows = []
    t_all = time.perf_counter()
    for name in args.methods:
        accs, t0 = [], time.perf_counter()
        for seed in args.seeds:
            accs.append(train_student(params, cfg, METHODS[name], seed, splits, teacher, name).accuracy)
            print(f"{name} seed {seed}: {accs[-1]:.4f}", flush=True)
        rows.append((name, accs, (time.perf_counter() - t0) / len(args.seeds)))
    base = dict((n, a) for n, a, _ in rows).get("alone (ce)")
    lines = [
        "# Distillation losses compared",
        "",
        f"`python benchmarks/distill_methods.py --seeds {' '.join(map(str, args.seeds))} --train-limit "
        f"{args.train_limit}` on {time.strftime('%Y-%m-%d')}, 2-core CPU, {time.perf_counter() - t_all:.0f} s. "
        f"Teacher `{params.teacher.model.name}` from `dvc repro`; student `{params.student.model.name}`, "
        f"{cfg.epochs} epochs on the first {len(splits['train'])} training images, batch {cfg.batch_size}, "
        f"{cfg.optimizer} lr {cfg.lr}, augmentation {'on' if cfg.augment else 'off'}. Test accuracy on the "
        f"{len(splits['test'])} Fashion-MNIST test images. Feature losses tap `features` of both models.",
        "",
        "| method | losses (weight*name) | test accuracy | vs alone (pt) | s / run |",
        "|---|---|---|---|---|",
    ]
    for name, accs, seconds in rows:
        gain = (
            mean_std([a - b for a, b in zip(accs, base, strict=True)], 100, 2, signed=True)
            if base and name != "alone (ce)"
            else ""
        )
        lines.append(f"| {name} | {describe(METHODS[name])} | {mean_std(accs)} | {gain} | {seconds:.0f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
