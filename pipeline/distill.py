"""Stage 3, distill: train the student from the teacher, and the same student without it.

Both students share architecture, data, augmentation, epochs, optimiser and seed; only the losses
differ (``distill.losses`` with the teacher, ``distill.baseline_losses`` without), so the difference
in test accuracy is the gain from distillation.

Outputs (``<paths.models>/student`` and ``<paths.models>/student_alone``): weights, sidecar, history.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import stage, tracking
from pipeline.atomic import write_json
from pipeline.data import IN_CHANNELS, NUM_CLASSES, load_splits
from pipeline.modelio import build_model, load_model
from pipeline.params import Params
from pipeline.prepare import SOURCE_FILE
from pipeline.teacher import out_dir as teacher_dir
from pipeline.training import build_losses, plugin_tags, setup_runtime

VARIANTS = ("student_alone", "student")


def out_dir(params: Params, variant: str) -> Path:
    return Path(params.paths.models) / variant


def run(params: Params, params_file: Path) -> dict[str, stage.Fitted]:
    cfg = params.distill
    device = setup_runtime(params.runtime, params.seed)
    splits = load_splits(Path(params.paths.prepared) / SOURCE_FILE)
    teacher, _meta = load_model(teacher_dir(params), device)
    aug = stage.augmentation(params, cfg.augment, "distill", splits["train"])
    losses = {
        "student_alone": build_losses(cfg.baseline_losses, "distill"),
        "student": build_losses(cfg.losses, "distill"),
    }
    _, model_info = build_model(params.student.model, NUM_CLASSES, IN_CHANNELS)
    all_plugins = [*aug.plugins, *losses["student_alone"], *losses["student"]]
    tags = {**plugin_tags(all_plugins), model_info.tag: model_info.provenance}
    fitted: dict[str, stage.Fitted] = {}
    with tracking.stage_run("distill", params, params_file, tags) as tracker:
        for variant in VARIANTS:
            # same seed for both students: same initial weights, data order and augmentations
            setup_runtime(params.runtime, params.seed)
            model, _ = build_model(params.student.model, NUM_CLASSES, IN_CHANNELS)
            teacher_or_none = teacher if variant == "student" else None
            trainer = stage.make_trainer(
                params,
                "distill",
                f"distill-{variant}",
                model,
                losses[variant],
                cfg,
                aug.online,
                device,
                label=variant,
                teacher=teacher_or_none,
                copies=aug.copies,
            )
            variant_tags = {
                **plugin_tags([*aug.plugins, *losses[variant]]),
                model_info.tag: model_info.provenance,
            }
            fitted[variant] = stage.fit_variant(
                tracker,
                variant,
                variant_tags,
                trainer,
                splits["train"],
                splits,
                out_dir(params, variant),
                params.student.model,
                model_info,
            )
        gain = fitted["student"].test_accuracy - fitted["student_alone"].test_accuracy
        tracker.log_metrics({"distill_gain": gain})
        write_json(
            out_dir(params, "student") / "gain.json",
            {
                "student_accuracy": fitted["student"].test_accuracy,
                "student_alone_accuracy": fitted["student_alone"].test_accuracy,
                "gain": gain,
            },
        )
        print(
            f"[distill] distilled {fitted['student'].test_accuracy:.4f} vs alone "
            f"{fitted['student_alone'].test_accuracy:.4f}: gain {gain * 100:+.2f} pt"
        )
    return fitted


def main(argv: list[str] | None = None) -> None:
    stage.main("distill", run, argv)


if __name__ == "__main__":
    main()
