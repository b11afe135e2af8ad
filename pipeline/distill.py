"""Stage 3, distill: train the student from the teacher, and the same student without it.

Both students share architecture, data, augmentation, epochs, optimiser and seed; only the losses
differ (``distill.losses`` with the teacher, ``distill.baseline_losses`` without), so the difference
in test accuracy is the gain from distillation. With ``distill.warm_start`` both first train on a seeded
random share of the training split (sub-model weight transfer) and continue from those weights. With
``distill.exclude_classes`` the images of those classes are left out of both students' training set
(the dark-knowledge check: what the distilled student learns of them comes from the soft targets alone).

Outputs (``paths.student`` and ``paths.student_alone``): weights, sidecar, history; ``gain.json`` in
the student's folder.
"""

from __future__ import annotations

from pipeline import layout, runner, tracking
from pipeline.atomic import write_json
from pipeline.errors import ParamsError
from pipeline.loss_set import LossSet
from pipeline.modelio import load_model
from pipeline.runner import StageContext
from pipeline.variants import Fitted, StageTraining, Variant


def run(ctx: StageContext) -> dict[str, Fitted]:
    params = ctx.params
    cfg = params.distill
    training = StageTraining.on_source_task(
        "distill", params, ctx.plugins, cfg, "student.model", warm_start=cfg.warm_start
    )
    teacher, _meta = load_model(layout.model_dir(params, "teacher"), training.runtime.device)
    bad = [c for c in cfg.exclude_classes if not 0 <= c < training.runtime.num_classes]
    if bad:
        raise ParamsError(
            f"distill.exclude_classes: {bad} are not class indices of the source task "
            f"(0 to {training.runtime.num_classes - 1})"
        )
    dropped = training.without_classes(cfg.exclude_classes)
    if dropped:
        print(
            f"[distill] classes {list(cfg.exclude_classes)} left out of the transfer set: {dropped} training "
            f"images dropped for both students (the teacher still knows them)"
        )
    variants = [
        Variant("student_alone", LossSet.build(ctx.plugins.losses("distill.baseline_losses"), "distill")),
        Variant("student", LossSet.build(ctx.plugins.losses("distill.losses"), "distill"), teacher=teacher),
    ]
    with tracking.stage_run("distill", params, ctx.params_file, training.tags(variants)) as tracker:
        fitted = training.run(tracker, variants)
        student, alone = fitted["student"].test_accuracy, fitted["student_alone"].test_accuracy
        tracker.log_metrics({"distill_gain": student - alone})
        write_json(
            layout.model_dir(params, "student") / "gain.json",
            {"student_accuracy": student, "student_alone_accuracy": alone, "gain": student - alone},
        )
        print(
            f"[distill] distilled {student:.4f} vs alone {alone:.4f}: gain {(student - alone) * 100:+.2f} pt"
        )
    return fitted


def main(argv: list[str] | None = None) -> None:
    runner.main("distill", run, argv)


if __name__ == "__main__":
    main()
