"""Stage 2, teacher: train the teacher on the source task.

Output (``paths.teacher``): ``model.safetensors``, ``model.json``, ``history.csv``.
"""

from __future__ import annotations

from pipeline import runner, tracking
from pipeline.loss_set import LossSet
from pipeline.runner import StageContext
from pipeline.variants import Fitted, StageTraining, Variant


def run(ctx: StageContext) -> Fitted:
    params = ctx.params
    training = StageTraining.on_source_task("teacher", params, ctx.plugins, params.teacher, "teacher.model")
    variants = [Variant("teacher", LossSet.build(ctx.plugins.losses("teacher.losses"), "teacher"))]
    with tracking.stage_run("teacher", params, ctx.params_file, training.tags(variants)) as tracker:
        return training.run(tracker, variants)["teacher"]


def main(argv: list[str] | None = None) -> None:
    runner.main("teacher", run, argv)


if __name__ == "__main__":
    main()
