"""Distilled student vs the student alone over several seeds, with the pipeline's own teacher, data and
params (everything as in the distill stage but the seed).

    python benchmarks/distill_seeds.py --seeds 0 1 2 [--out benchmarks/DISTILL_SEEDS.md]

Run after `dvc repro` (it reads models/teacher and data/prepared). A single-seed difference under
about 0.5 pt is noise; this prints mean +- std of test accuracy over the seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import NUM_CLASSES, load_splits  # noqa: E402
from pipeline.modelio import build_model, load_model  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.prepare import SOURCE_FILE  # noqa: E402
from pipeline.teacher import out_dir as teacher_dir  # noqa: E402
from pipeline.training import (  # noqa: E402
    Trainer,
    accuracy,
    build_augmenters,
    build_losses,
    predict_logits,
    setup_runtime,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(Path(__file__).with_name("DISTILL_SEEDS.md")))
    args = parser.parse_args()
    params = load_params(args.params)
    cfg = params.distill
    splits = load_splits(Path(params.paths.prepared) / SOURCE_FILE)
    cpu = torch.device("cpu")
    teacher, _ = load_model(teacher_dir(params), cpu)
    test_x, test_y = torch.from_numpy(splits["test"].x), torch.from_numpy(splits["test"].y)
    results: dict[str, list[float]] = {"student_alone": [], "student": []}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for variant, specs in (("student_alone", cfg.baseline_losses), ("student", cfg.losses)):
            device = setup_runtime(params.runtime, seed)
            model, _ = build_model(params.student.model, NUM_CLASSES, 1)
            augs = build_augmenters(params.augment.ops, "distill") if cfg.augment else []
            trainer = Trainer(
                "distill",
                model,
                build_losses(specs, "distill"),
                cfg,
                device,
                seed,
                NUM_CLASSES,
                augs,
                teacher=teacher if variant == "student" else None,
                progress=False,
                channels_last=params.runtime.channels_last,
                run_label=variant,
            )
            with contextlib.redirect_stdout(io.StringIO()):
                trainer.fit(splits["train"], splits["val"])
            acc = accuracy(predict_logits(model, test_x, device), test_y)
            results[variant].append(acc)
            print(f"seed {seed} {variant}: {acc:.4f}", flush=True)
    gains = [d - a for d, a in zip(results["student"], results["student_alone"], strict=True)]

    def fmt(values: list[float]) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} +- {std:.4f}"

    losses = ", ".join(f"{s.name}(w={s.weight}, {dict(s.kwargs)})" for s in cfg.losses)
    lines = [
        "# Distilled student vs student alone over seeds",
        "",
        f"`python benchmarks/distill_seeds.py --seeds {' '.join(map(str, args.seeds))}` on {time.strftime('%Y-%m-%d')}, "
        f"CPU, {time.perf_counter() - t0:.0f} s. Teacher: `models/teacher` from `dvc repro`; student "
        f"`{params.student.model.name}`, {cfg.epochs} epochs, augmentation {'on' if cfg.augment else 'off'}, "
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
        summary = (
            fmt(values)
            if name != "gain (pt)"
            else f"{statistics.mean(values):+.2f} +- {statistics.stdev(values) if len(values) > 1 else 0:.2f}"
        )
        lines.append(f"| {name} | {cells} | {summary} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
