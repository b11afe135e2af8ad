"""Stage 3, distill: train the student from the teacher, and the same student without it.

Both students share architecture, data, augmentation, optimiser and seed; only the losses differ
(``distill.losses`` with the teacher, ``distill.baseline_losses`` without), so the difference in test
accuracy is the gain from distillation. Both train ``distill.epochs`` unless ``distill.baseline_epochs``
gives the student alone its own (so that each can train at the schedule best for it on validation). With
``distill.warm_start`` both first train on a seeded random share of the training split (sub-model weight
transfer) and continue from those weights. With ``distill.exclude_classes`` the images of those classes
are left out of both students' training set (the dark-knowledge check: what the distilled student learns
of them comes from the soft targets alone).

``distill.procedure`` says how the teacher teaches:
- ``joint`` (default): the student trains with ``distill.losses`` (e.g. kd + ce), the teacher's logits and
  the labels together. With an unlabelled pool (``data.unlabelled_fraction``) the pool's images join its
  training set; losses that use labels see only the labelled rows, teacher-only losses (kd,
  pseudo_label, ...) see all.
- ``scored``: the student first trains on the labels alone (that is the student alone), then the teacher
  scores a transfer set (the training split plus the unlabelled pool): its argmax
  (``distill.scored_targets: hard``) or its probabilities (``soft``); the student goes on from the
  student alone's weights for ``distill.epochs`` more epochs on those scores, with
  ``distill.baseline_losses``. This is the teacher-labelled ("scored") transfer set of model compression
  (Bucilua, Caruana and Niculescu-Mizil 2006).

Outputs (``paths.student`` and ``paths.student_alone``): weights, sidecar, history; ``gain.json`` in
the student's folder.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import layout, runner, teachers, tracking
from pipeline.atomic import write_json
from pipeline.data import Split, one_hot
from pipeline.errors import ParamsError
from pipeline.loss_set import LossSet
from pipeline.modelio import load_model
from pipeline.params import Params
from pipeline.runner import StageContext
from pipeline.variants import Fitted, StageTraining, Variant, check_later_stages, init_variant


def scored_transfer_set(training: StageTraining, teacher: nn.Module, targets: str) -> Split:
    """The training split and the unlabelled pool, labelled by the teacher: one-hot argmax rows
    (``hard``) or its probabilities (``soft``). The true labels are not used."""
    parts = [
        training.splits["train"],
        *([training.splits["unlabelled"]] if "unlabelled" in training.splits else []),
    ]
    images = np.concatenate([p.x for p in parts])
    runtime = training.runtime
    logits = runtime.predict(teacher, torch.from_numpy(images))
    probs = F.softmax(logits, dim=1)
    labels = probs.argmax(1)
    rows = one_hot(labels, runtime.num_classes) if targets == "hard" else probs
    return Split(images, labels.numpy(), rows.numpy().astype(np.float32))


def _student(params: Params, ctx: StageContext, training: StageTraining, teacher: nn.Module) -> Variant:
    """The distilled student of ``distill.procedure``."""
    cfg = params.distill
    pool = training.splits.get("unlabelled")
    if cfg.procedure == "scored":
        scored = scored_transfer_set(training, teacher, cfg.scored_targets)
        agree = float((scored.y[: len(training.splits["train"])] == training.splits["train"].y).mean())
        print(
            f"[distill] scored transfer set: {len(scored)} images ({len(pool) if pool else 0} unlabelled) "
            f"with the teacher's {'argmax' if cfg.scored_targets == 'hard' else 'probabilities'}; it agrees "
            f"with {agree:.1%} of the training labels"
        )

        def from_student_alone(model: nn.Module) -> None:
            alone, _ = load_model(layout.model_dir(params, "student_alone"))
            model.load_state_dict(alone.state_dict())

        return Variant(
            "student",
            LossSet.build(ctx.plugins.losses("distill.baseline_losses"), "distill"),
            init=from_student_alone,
            train=scored,
            meta={
                "procedure": "scored",
                "scored_targets": cfg.scored_targets,
                "transfer_set": len(scored),
                "unlabelled": len(pool) if pool else 0,
                "teacher_label_agreement": agree,
            },
        )
    losses = LossSet.build(ctx.plugins.losses("distill.losses"), "distill")
    train = None
    if pool is not None:
        if losses.label_free:
            train = Split.concat(training.splits["train"], pool)
            print(
                f"[distill] the student also sees {len(pool)} unlabelled images through "
                f"{list(losses.label_free)}; losses that use labels see the labelled {len(train) - len(pool)}"
            )
        else:
            print(f"[distill] {len(pool)} unlabelled images unused: no teacher-only loss in distill.losses")
    meta = {"procedure": "joint", "unlabelled": len(pool) if train is not None else 0}
    return Variant("student", losses, teacher=teacher, train=train, meta=meta)


def run(ctx: StageContext) -> dict[str, Fitted]:
    params = ctx.params
    cfg = params.distill
    training = StageTraining.on_source_task(
        "distill", params, ctx.plugins, cfg, "student.model", warm_start=cfg.warm_start
    )
    teacher, meta = teachers.load_teacher(
        layout.model_dir(params, "teacher"), training.runtime.device, training.fmt.shape
    )
    if not teachers.capabilities(meta)["features"]:  # imported as ONNX, an ensemble or on other images
        kind = teachers.describe_kind(meta)
        check_later_stages(params, ctx.plugins, False, True, kind)  # the transfer stage checks its own
        print(f"[distill] the teacher is {kind}, imported: its logits are computed once per training view")
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
        Variant(
            "student_alone",
            LossSet.build(ctx.plugins.losses("distill.baseline_losses"), "distill"),
            epochs=cfg.alone_epochs,
        ),
        _student(params, ctx, training, teacher),
    ]
    if params.student.init is not None:  # both students start from the same weights: a fair baseline
        spec = params.student.model
        for variant in variants:
            if variant.init is None:
                init = init_variant(params.student.init, "student.init", spec.name, dict(spec.kwargs))
                variant.init = init["init"]
                variant.meta |= init["meta"]
    with tracking.stage_run("distill", params, ctx.params_file, training.tags(variants)) as tracker:
        fitted = training.run(tracker, variants)
        student, alone = fitted["student"].test_accuracy, fitted["student_alone"].test_accuracy
        tracker.log_metrics({layout.DISTILL_GAIN: student - alone})
        if training.runtime.group.is_main:
            write_json(
                layout.model_dir(params, "student") / "gain.json",
                {
                    "student_accuracy": student,
                    "student_alone_accuracy": alone,
                    "gain": student - alone,
                    "procedure": cfg.procedure,
                },
            )
        print(
            f"[distill] distilled {student:.4f} vs alone {alone:.4f}: gain {(student - alone) * 100:+.2f} pt"
        )
    return fitted


def main(argv: list[str] | None = None) -> None:
    runner.main("distill", run, argv)


if __name__ == "__main__":
    main()
