"""Sub-model weight transfer (``distill.warm_start``) against training on the whole split from the
start, over seeds, through the distill stage's own code (``StageTraining``), with the pipeline's teacher,
data and params.

    python benchmarks/warm_start.py --fraction 0.2 --warm-epochs 5 --seeds 0 1 2

Three runs per seed, each distilling the params' student (``distill.losses``, teacher logits cached):
- ``plain``: ``distill.epochs`` epochs on the whole split;
- ``warm start``: ``--warm-epochs`` epochs on a seeded random share ``--fraction`` of the split, then
  ``distill.epochs`` on the whole split from those weights;
- ``plain, equal steps``: the whole split for ``distill.epochs`` + fraction x warm epochs (rounded): as
  many optimizer steps as the warm start took in all.
Wall time is reported for each, so the equal-time comparison can be read off as well. Run after
`dvc repro` (it reads models/teacher and data/prepared); outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import layout  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.modelio import load_model  # noqa: E402
from pipeline.params import WarmStart, load_params  # noqa: E402
from pipeline.report import mean_std  # noqa: E402
from pipeline.selection import Selections  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402
from pipeline.variants import StageTraining, Variant  # noqa: E402


def distill(params, seed: int, epochs: int, warm: WarmStart | None, tmp: Path) -> tuple[float, float, float]:
    """(test accuracy, last validation accuracy, seconds) of one distilled student."""
    paths = replace(params.paths, student=str(tmp / "student"), checkpoints=str(tmp / "checkpoints"))
    p = replace(params, seed=seed, paths=paths)
    plugins = Selections.resolve(p)
    training = StageTraining.on_source_task(
        "distill", p, plugins, replace(p.distill, epochs=epochs), "student.model", warm_start=warm
    )
    teacher, _ = load_model(layout.model_dir(params, "teacher"), training.runtime.device)
    variant = Variant("student", LossSet.build(plugins.losses("distill.losses"), "distill"), teacher=teacher)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        fitted = training.run(Tracker(), [variant])["student"]
    return fitted.test_accuracy, fitted.history[-1]["val_accuracy"], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--warm-epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(Path(__file__).with_name("WARM_START.md")))
    args = parser.parse_args()
    params = load_params(args.params)
    epochs = params.distill.epochs
    warm = WarmStart(args.fraction, args.warm_epochs)
    equal_steps = epochs + round(args.fraction * args.warm_epochs)
    runs = {
        f"plain ({epochs} epochs)": (epochs, None),
        f"warm start ({args.warm_epochs} epochs on {args.fraction:.0%}, then {epochs})": (epochs, warm),
        f"plain, equal steps ({equal_steps} epochs)": (equal_steps, None),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, (n, w) in runs.items():
                results[name].append(distill(params, seed, n, w, Path(tmp) / f"{seed}-{len(results[name])}"))
                test, val, sec = results[name][-1]
                print(f"seed {seed} {name}: test {test:.4f} val {val:.4f} {sec:.0f} s", flush=True)
    lines = [
        "# Sub-model weight transfer (warm start) vs the whole split from the start",
        "",
        f"`python benchmarks/warm_start.py --fraction {args.fraction} --warm-epochs {args.warm_epochs} --seeds "
        f"{' '.join(map(str, args.seeds))}` on {time.strftime('%Y-%m-%d')}, 2-core CPU, torch "
        f"{torch.__version__}. Student `{params.student.model.name}` distilled from `models/teacher` with "
        f"{', '.join(s.name for s in params.distill.losses)} (cached teacher logits), batch "
        f"{params.distill.batch_size}, the distill stage's code (`StageTraining`). Mean +- std over the seeds; "
        f"accuracy on the 10,000 test images, validation accuracy after the last epoch.",
        "",
        "| run | test accuracy | validation accuracy | seconds |",
        "|---|---|---|---|",
    ]
    for name, rows in results.items():
        tests, vals, secs = zip(*rows, strict=True)
        lines.append(
            f"| {name} | {mean_std(tests)} | {mean_std(vals)} | {statistics.mean(secs):.0f} +- "
            f"{statistics.stdev(secs) if len(secs) > 1 else 0:.0f} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
