"""Distilled student vs the student alone over several seeds, with the pipeline's own teacher, data and
params (everything as in the distill stage but the seed).

    python benchmarks/distill_seeds.py --seeds 0 1 2 [--out benchmarks/DISTILL_SEEDS.md]

Run after `dvc repro` (it reads models/teacher and data/prepared). A single-seed difference under
about 0.5 pt is noise; this prints mean +- std of test accuracy over the seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from common import pipeline_inputs, train_student

from pipeline.params import load_params
from pipeline.report import mean_std


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(Path(__file__).with_name("DISTILL_SEEDS.md")))
    args = parser.parse_args()
    params = load_params(args.params)
    cfg = params.distill
    splits, teacher = pipeline_inputs(params)
    results: dict[str, list[float]] = {"student_alone": [], "student": []}
    t0 = time.perf_counter()
    # the student alone on its own schedule where distill.baseline_epochs gives one, as in the distill stage
    alone_cfg = dataclasses.replace(cfg, epochs=cfg.alone_epochs)
    for seed in args.seeds:
        for variant, specs, fit_cfg in (
            ("student_alone", cfg.baseline_losses, alone_cfg),
            ("student", cfg.losses, cfg),
        ):
            acc = train_student(params, fit_cfg, specs, seed, splits, teacher, variant).accuracy
            results[variant].append(acc)
            print(f"seed {seed} {variant}: {acc:.4f}", flush=True)
    gains = [d - a for d, a in zip(results["student"], results["student_alone"], strict=True)]

    losses = ", ".join(f"{s.name}(w={s.weight}, {dict(s.kwargs)})" for s in cfg.losses)
    lines = [
        "# Distilled student vs student alone over seeds",
        "",
        f"`python benchmarks/distill_seeds.py --seeds {' '.join(map(str, args.seeds))}` on {time.strftime('%Y-%m-%d')}, "
        f"CPU, {time.perf_counter() - t0:.0f} s. Teacher: `models/teacher` from `dvc repro`; student "
        f"`{params.student.model.name}`, {cfg.epochs} epochs (alone: {alone_cfg.epochs}), "
        f"augmentation {'on' if cfg.augment else 'off'}, "
        f"distillation losses: {losses}. Test accuracy on the 10,000 Fashion-MNIST test images.",
        "",
        "| | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean +- std |",
        "|---|" + "---|" * (len(args.seeds) + 1),
    ]
    for name, values in (
        ("student alone", results["student_alone"]),
        ("distilled", results["student"]),
        ("gain (pt)", [g * 100 for g in gains]),
    ):
        cells = " | ".join(f"{v:.4f}" if name != "gain (pt)" else f"{v:+.2f}" for v in values)
        summary = mean_std(values) if name != "gain (pt)" else mean_std(values, digits=2, signed=True)
        lines.append(f"| {name} | {cells} | {summary} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
