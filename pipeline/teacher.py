"""Stage 2, teacher: train the teacher on the source task.

Output (``paths.teacher``): ``model.safetensors``, ``model.json``, ``history.csv``.
"""

from __future__ import annotations

from pipeline import layout, runner, tracking
from pipeline.data import NUM_CLASSES, load_splits
from pipeline.loss_set import LossSet
from pipeline.runner import StageContext
from pipeline.training import Runtime
from pipeline.variants import Augmentation, Fitted, StageTraining, Variant


def run(ctx: StageContext) -> Fitted:
    params, cfg = ctx.params, ctx.params.teacher
    runtime = Runtime.from_params(params.runtime, params.seed, NUM_CLASSES)
    splits = load_splits(layout.prepared(params, layout.SOURCE_FILE))
    training = StageTraining(
        "teacher",
        params,
        cfg,
        ctx.plugins.model("teacher.model"),
        runtime,
        splits,
        augmentation=Augmentation.for_stage(
            params, ctx.plugins.augmenters(), cfg.augment, "teacher", splits["train"]
        ),
    )
    variants = [Variant("teacher", LossSet.build(ctx.plugins.losses("teacher.losses"), "teacher"))]
    with tracking.stage_run("teacher", params, ctx.params_file, training.tags(variants)) as tracker:
        return training.run(tracker, variants)["teacher"]


def main(argv: list[str] | None = None) -> None:
    runner.main("teacher", run, argv)


if __name__ == "__main__":
    main()
