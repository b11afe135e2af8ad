"""Online vs offline augmentation for the distilled student: time, teacher passes and accuracy.

    python benchmarks/offline_augment.py [--copies 4] [--seed 0] [--out benchmarks/OFFLINE_AUGMENT.md]

Run after `dvc repro` (it reads models/teacher and data/prepared). Both variants train the params'
student with the distill stage's losses and settings and `augment.ops`; online draws fresh ops every
batch (so the teacher runs on every batch), offline trains epoch e on copy e mod K of K materialised
copies (so the teacher runs once per copy). The time to materialise the copies (prepare's job) is
reported separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from common import pipeline_inputs, train_student

from pipeline import offline_copies
from pipeline.data import FASHION_CLASSES
from pipeline.params import load_params
from pipeline.selection import Selections, build_augmenters

NUM_CLASSES = len(FASHION_CLASSES)  # the benchmarks run on Fashion-MNIST: 10 classes of grey 28x28


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(Path(__file__).with_name("OFFLINE_AUGMENT.md")))
    args = parser.parse_args()
    params = load_params(args.params)
    cfg = dataclasses.replace(params.distill, augment=True)
    splits, teacher = pipeline_inputs(params)
    t0 = time.perf_counter()
    copies = offline_copies.materialise(
        splits["train"],
        build_augmenters(Selections.resolve(params).augmenters(), "prepare"),
        args.copies,
        args.seed,
        NUM_CLASSES,
    )
    materialise_s = time.perf_counter() - t0
    rows = []
    for mode in ("online", "offline"):
        run = train_student(
            params, cfg, cfg.losses, args.seed, splits, teacher, mode, copies if mode == "offline" else None
        )
        passes = f"{run.teacher_passes} full passes" if mode == "offline" else "every batch"
        rows.append(f"| {mode} | {run.seconds:.0f} | {passes} | {run.accuracy:.4f} |")
        print(rows[-1], flush=True)
    ops = ", ".join(spec.describe() for spec in params.augment.ops)
    lines = [
        "# Online vs offline augmentation (distilled student)",
        "",
        f"`python benchmarks/offline_augment.py --copies {args.copies} --seed {args.seed}` on "
        f"{time.strftime('%Y-%m-%d')}, 2-core CPU. Student `{params.student.model.name}` distilled from "
        f"`models/teacher` with the distill stage's losses, {cfg.epochs} epochs on all "
        f"{len(splits['train'])} training images, ops: {ops}. Offline: {args.copies} copies, materialised "
        f"in {materialise_s:.1f} s (prepare's job; {copies.x.nbytes / 2**20:.0f} MiB). One seed: accuracy "
        f"differences under ~0.5 pt are noise.",
        "",
        "| mode | distill training (s) | teacher forward | test accuracy |",
        "|---|---|---|---|",
        *rows,
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
