"""Stage 5, export: the students to ONNX, checked against PyTorch, plus a static INT8 version.

Each model is exported with a dynamic batch axis (input ``pixels`` float32 ``[batch, C, H, W]`` in
[0, 1], the data's channels and size; outputs ``logits`` and ``probabilities``; the class names in the
metadata). The stage fails unless ONNX Runtime matches PyTorch on real test images at
every batch size in ``export.parity_batches`` (max abs difference <= ``export.atol`` and the same
argmax). The distilled student's ONNX file is logged to MLflow with signature and input example and
registered as a new version of ``mlflow.registered_model`` with the alias ``candidate``
(``pipeline.model_registry``); ``parity.json`` names that version, for evaluate.

Outputs (``paths.onnx``): ``<name>.onnx`` per model, ``student_int8.onnx``, ``parity.json``. The ONNX
helpers themselves live in ``pipeline.onnx_model``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline import layout, model_registry, runner, teachers, tracking
from pipeline.atomic import read_json, write_json
from pipeline.data import Split, load_splits
from pipeline.modelio import load_model
from pipeline.onnx_model import check_parity, export_onnx, finish, quantize_int8
from pipeline.runner import StageContext
from pipeline.stage_outputs import PreparedSummary, parity_file


def run(ctx: StageContext) -> dict[str, Any]:
    params = ctx.params
    data = {f: load_splits(layout.prepared(params, f)) for f in (layout.SOURCE_FILE, layout.TARGET_FILE)}
    report: dict[str, Any] = {}
    summary = PreparedSummary.read(params)  # the class names of each task
    with tracking.stage_run("export", params, ctx.params_file) as tracker:
        teacher_meta = read_json(layout.model_dir(params, "teacher") / layout.META)
        exported = dict(layout.EXPORTED)
        if not teachers.capabilities(teacher_meta)["plugin"]:  # imported as ONNX, an ensemble, ...
            del exported["teacher"]
            layout.onnx_file(params, "teacher").unlink(missing_ok=True)
            report["teacher"] = {"imported": teachers.describe_kind(teacher_meta), "exported": False}
            print(
                f"[export] teacher: not exported, it is {teachers.describe_kind(teacher_meta)} (imported); "
                f"evaluate measures it as it is"
            )
        for name, data_file in exported.items():
            model, _meta = load_model(layout.model_dir(params, name), "cpu")
            test: Split = data[data_file]["test"]
            example = torch.from_numpy(test.x[:2].astype(np.float32) / 255.0)
            classes = summary.task("source" if data_file == layout.SOURCE_FILE else "target").classes
            path = export_onnx(model, layout.onnx_file(params, name), example, params.export.opset, classes)
            parity = check_parity(model, path, test.x, params.export.parity_batches, params.export.atol)
            report[name] = {"file": path.name, "bytes": path.stat().st_size, "parity": parity}
            worst = max(v["max_abs_diff"] for v in parity.values())
            tracker.log_metrics({f"{name}.max_abs_diff": worst, f"{name}.onnx_bytes": path.stat().st_size})
            print(
                f"[export] {name}: {path} ({path.stat().st_size} bytes), parity at batches "
                f"{list(params.export.parity_batches)}: max abs diff {worst:.2e}"
            )
        if params.export.int8:
            calib = data[layout.SOURCE_FILE]["train"].x[: params.export.calibration_samples]
            q = quantize_int8(
                layout.onnx_file(params, "student"), layout.onnx_file(params, layout.INT8), calib
            )
            finish(q, summary.source.classes)  # quantisation drops the metadata
            report[layout.INT8] = {"file": q.name, "bytes": q.stat().st_size}
            tracker.log_metrics({f"{layout.INT8}.onnx_bytes": q.stat().st_size})
            print(f"[export] {layout.INT8}: {q} ({q.stat().st_size} bytes)")
        name = params.mlflow.registered_model
        logged: dict[str, str] = {}
        version = None
        for model_name in [*exported, *([layout.INT8] if params.export.int8 else [])]:
            data_file = layout.EXPORTED.get(model_name, layout.SOURCE_FILE)
            example = data[data_file]["test"].x[:1].astype(np.float32) / 255.0
            registered = name if model_name == "student" else None
            task = "source" if data_file == layout.SOURCE_FILE else "target"
            info = tracking.log_onnx_model(
                tracker,
                layout.onnx_file(params, model_name),
                f"{model_name}_onnx",
                example,
                len(summary.task(task).classes),
                registered,
            )
            if info is not None:
                logged[model_name] = info.model_id
                version = info.version if registered else version
        if logged:  # evaluate logs each model's accuracy, size and latency against it
            report["logged_models"] = logged
        if version:
            origin = {
                "git_commit": tracker.base_tags.get(tracking.COMMIT_TAG, "unknown"),
                "dvc_experiment": tracker.base_tags.get(tracking.DVC_EXP_TAG, "none"),
                "mlflow_run": tracker.run_id or "",
            }
            model_registry.mark_candidate(tracker.client, name, version, origin)
            report["registered"] = {"name": name, "version": version}  # evaluate records its metrics there
            print(
                f"[export] registered {name} version {version} in MLflow, alias '{model_registry.CANDIDATE}'"
            )
        write_json(parity_file(params), report)
        tracker.log_artifact(parity_file(params))
    return report


def main(argv: list[str] | None = None) -> None:
    runner.main("export", run, argv)


if __name__ == "__main__":
    main()
