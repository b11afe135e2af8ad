"""Stage 2, teacher: train the teacher on the source task, or take the one the user has.

``teacher.source: train`` (the default) trains ``teacher.model`` (from ``teacher.init``'s weights when
set). Any other source is imported and used as is (:mod:`pipeline.teachers`): the stage checks it against
the data first (classes, input format; seconds, before any data is read), then measures its validation
and test accuracy (each member's too, for an ensemble), logs it as the teacher run with its provenance
(the file's path and sha256, or the MLflow URI and the version it resolved to) and writes it where the
later stages read a teacher.

Output (``paths.teacher``): ``model.safetensors``, ``model.json``, ``history.csv`` for a trained or
weights-imported teacher; ``teacher.onnx`` + ``model.json`` for an ONNX one; ``members/<i>/`` +
``model.json`` for an ensemble.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import datasets, layout, runner, teachers, tracking
from pipeline.data import Split, load_splits
from pipeline.evaluation import accuracy, predict_logits
from pipeline.loss_set import LossSet
from pipeline.params import Params, TeacherSource
from pipeline.runner import StageContext
from pipeline.training import Runtime
from pipeline.variants import Fitted, StageTraining, Variant, check_later_stages, init_variant, split_digest


def _kind_words(source: TeacherSource, members: list[teachers.Member]) -> str:
    if source.ensemble:
        return f"an ensemble of {len(members)}"
    m = members[0]
    return (
        "an ONNX model"
        if m.kind == "onnx"
        else ("a model fed converted images" if m.adapter else "a PyTorch model")
    )


def import_teacher(ctx: StageContext) -> dict[str, Any]:
    params = ctx.params
    source = params.teacher.source
    start = time.perf_counter()
    fmt = datasets.format_of(params, "source")
    with teachers.scratch_dir() as scratch:
        members = teachers.check_source(source, fmt, Path(scratch))
        tracked = Path(params.paths.teachers).resolve()
        for m in members:
            print(f"[teacher] {m.key}: {m.describe}")
            local = Path(m.spec.location).resolve() if m.spec.kind != "mlflow" else None
            if local is not None and not local.is_relative_to(tracked):
                print(
                    f"[teacher] note: {m.spec.location} is outside {params.paths.teachers}/, so DVC does not see "
                    f"when it changes (its sha256 is recorded); move it into {params.paths.teachers}/ to make "
                    f"replacing it rerun the teacher stage"
                )
        features = not source.ensemble and members[0].features
        check_later_stages(params, ctx.plugins, features, features, _kind_words(source, members))
        checked = time.perf_counter() - start
        print(f"[teacher] imported teacher checked against the data in {checked:.1f} s")
        teacher = teachers.assemble(members, source)
        runtime = Runtime.from_params(params.runtime, params.seed, fmt.num_classes)
        splits = load_splits(layout.prepared(params, layout.SOURCE_FILE))
        metrics = _measure(teacher, members, source, splits, runtime)
        parameters = teachers.teacher_parameters(teacher)
        tags = {m.selected.info.tag: m.selected.info.provenance for m in members if m.selected is not None}
        with tracking.stage_run("teacher", params, ctx.params_file, tags) as tracker:
            tracker.set_tags(_provenance_tags(source, members))
            tracker.log_params(_model_params(source, members, parameters, params))
            for split in ("val", "test"):
                data = splits[split]
                tracker.log_dataset(
                    f"{params.data.dataset.name}-{split}",
                    split_digest(data),
                    layout.prepared(params, layout.SOURCE_FILE).resolve(),
                    "validation" if split == "val" else "test",
                )
            seconds = time.perf_counter() - start
            metrics |= {"parameters": parameters, "import_seconds": seconds}
            tracker.log_metrics(metrics)
            out = layout.model_dir(params, "teacher")
            extra = {
                "imported": True,
                "test_accuracy": metrics["test_accuracy"],
                "val_accuracy": metrics["val_accuracy"],
                "import_seconds": round(seconds, 2),
            }
            written = teachers.write_teacher(out, members, source, fmt, extra)
            for path in written:
                tracker.log_artifact(path, str(path.parent.relative_to(out.parent)))
    print(
        f"[teacher] {_kind_words(source, members)} imported, used as is: validation accuracy "
        f"{metrics['val_accuracy']:.4f}, test accuracy {metrics['test_accuracy']:.4f}, {parameters:,} "
        f"parameters ({seconds:.1f} s)"
    )
    return metrics


def _measure(
    teacher: nn.Module,
    members: list[teachers.Member],
    source: TeacherSource,
    splits: dict[str, Split],
    runtime: Runtime,
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        data = splits[split]
        x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
        if source.ensemble:
            for i, m in enumerate(members):
                logits = predict_logits(m.module, x, runtime.device, runtime.eval_batch_size)
                metrics[f"member{i}.{split}_accuracy"] = accuracy(logits, y)
        logits = predict_logits(teacher, x, runtime.device, runtime.eval_batch_size)
        metrics[f"{split}_accuracy"] = accuracy(logits, y)
    if source.ensemble:
        for i, m in enumerate(members):
            print(
                f"[teacher] member {i} ({m.describe.split(':')[0]}), weight {m.spec.weight:g}: validation "
                f"{metrics[f'member{i}.val_accuracy']:.4f}, test {metrics[f'member{i}.test_accuracy']:.4f}"
            )
    return metrics


def _provenance_tags(source: TeacherSource, members: list[teachers.Member]) -> dict[str, str]:
    tags = {"distillops.teacher.source": "ensemble" if source.ensemble else members[0].spec.kind}
    for i, m in enumerate(members):
        prefix = "distillops.teacher" if not source.ensemble else f"distillops.teacher.member{i}"
        for k in ("path", "sha256", "uri", "resolved", "version", "alias", "run_id"):
            if m.provenance.get(k):
                tags[f"{prefix}.{k}"] = m.provenance[k]
    return tags


def _model_params(
    source: TeacherSource, members: list[teachers.Member], parameters: int, params: Params
) -> dict[str, Any]:
    """The same model keys as a trained model logs (see ``StageTraining.model_params``)."""
    return {
        "model": source.describe(),
        "model.name": "ensemble"
        if source.ensemble
        else (members[0].spec.model.name if members[0].spec.model else "onnx"),
        "losses": "none (imported, used as is)",
        "teacher": "none",
        "stage": "teacher",
        "seed": params.seed,
        "epochs": 0,
        "init": "imported",
        "source_kind": "ensemble" if source.ensemble else members[0].spec.kind,
    }


def run(ctx: StageContext) -> Fitted | dict[str, Any]:
    params = ctx.params
    if not params.teacher.source.trains:
        return import_teacher(ctx)
    training = StageTraining.on_source_task("teacher", params, ctx.plugins, params.teacher, "teacher.model")
    spec = params.teacher.model
    variant = Variant(
        "teacher",
        LossSet.build(ctx.plugins.losses("teacher.losses"), "teacher"),
        **init_variant(params.teacher.init, "teacher.init", spec.name, dict(spec.kwargs)),
    )
    with tracking.stage_run("teacher", params, ctx.params_file, training.tags([variant])) as tracker:
        return training.run(tracker, [variant])["teacher"]


def main(argv: list[str] | None = None) -> None:
    runner.main("teacher", run, argv)


if __name__ == "__main__":
    main()
