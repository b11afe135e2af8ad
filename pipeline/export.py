"""Stage 5, export: the students to ONNX, checked against PyTorch, plus a static INT8 version.

Each model is exported with a dynamic batch axis (input ``pixels`` float32 ``[batch, 1, 28, 28]`` in
[0, 1], output ``logits``). The stage fails unless ONNX Runtime matches PyTorch on real test images at
every batch size in ``export.parity_batches`` (max abs difference <= ``export.atol`` and the same
argmax). The distilled student's ONNX file is logged to MLflow with signature and input example and
registered as ``mlflow.registered_model``.

Outputs (``<paths.models>/onnx``): ``<name>.onnx`` per model, ``student_int8.onnx``, ``parity.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import stage, tracking
from pipeline.atomic import write_json, write_with
from pipeline.data import NUM_CLASSES, Split, load_splits
from pipeline.distill import out_dir as student_dir
from pipeline.errors import DistillopsError, MissingDependencyError
from pipeline.modelio import load_model
from pipeline.params import Params
from pipeline.prepare import SOURCE_FILE, TARGET_FILE
from pipeline.transfer import out_dir as transfer_dir

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
# model name -> (folder function, data file its test images come from)
EXPORTED = {
    "student": (lambda p: student_dir(p, "student"), SOURCE_FILE),
    "student_alone": (lambda p: student_dir(p, "student_alone"), SOURCE_FILE),
    "transferred": (lambda p: transfer_dir(p, "transferred"), TARGET_FILE),
}


def out_dir(params: Params) -> Path:
    return Path(params.paths.models) / "onnx"


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor, opset: int) -> Path:
    """Export with a dynamic batch axis; written atomically."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise MissingDependencyError("onnxscript", "ONNX export") from None
    model = model.eval().cpu()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes=({0: batch},),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        verbose=False,
    )
    if program is None:
        raise DistillopsError(f"torch.onnx.export returned nothing for {path.name}")
    write_with(path, lambda tmp: program.save(str(tmp)))
    return path


def ort_session(path: Path, threads: int | None = None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnxruntime", "Running ONNX models") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(
    model: nn.Module, path: Path, images: np.ndarray, batches: tuple[int, ...], atol: float
) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch at each batch size; raises when they disagree."""
    session = ort_session(path)
    results = {}
    for b in batches:
        if len(images) < b:
            images = np.concatenate([images] * (b // max(len(images), 1) + 1))
        x = images[:b].astype(np.float32) / 255.0
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if got.shape != expected.shape:
            raise DistillopsError(
                f"{path.name}: ONNX output shape {got.shape} != PyTorch {expected.shape} at batch {b}"
            )
        diff = float(np.abs(got - expected).max())
        same_argmax = bool((got.argmax(1) == expected.argmax(1)).all())
        results[str(b)] = {"max_abs_diff": diff, "same_argmax": same_argmax}
        if diff > atol or not same_argmax:
            raise DistillopsError(
                f"{path.name}: ONNX Runtime disagrees with PyTorch at batch {b}: max abs diff {diff:.3g} "
                f"(allowed {atol:g}), same argmax: {same_argmax}. The export is not trustworthy; "
                f"check the model for ops that behave differently in eval mode or in ONNX."
            )
    return results


class _Calibration:
    """Feeds calibration batches to onnxruntime's static quantizer."""

    def __init__(self, images: np.ndarray, batch: int = 64) -> None:
        self.batches = iter(
            [images[i : i + batch].astype(np.float32) / 255.0 for i in range(0, len(images), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        return None if x is None else {INPUT_NAME: x}


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray) -> Path:
    """Static QDQ INT8 quantisation (weights and activations), calibrated on training images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)

    def writer(tmp: Path) -> None:
        pre = tmp.with_suffix(".pre.onnx")
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(tmp),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        finally:
            pre.unlink(missing_ok=True)

    return write_with(out, writer)


def run(params: Params, params_file: Path) -> dict[str, Any]:
    out = out_dir(params)
    data = {f: load_splits(Path(params.paths.prepared) / f) for f in (SOURCE_FILE, TARGET_FILE)}
    report: dict[str, Any] = {}
    with tracking.stage_run("export", params, params_file) as tracker:
        for name, (folder_of, data_file) in EXPORTED.items():
            model, meta = load_model(folder_of(params), "cpu")
            test: Split = data[data_file]["test"]
            example = torch.from_numpy(test.x[:2].astype(np.float32) / 255.0)
            path = export_onnx(model, out / f"{name}.onnx", example, params.export.opset)
            parity = check_parity(model, path, test.x, params.export.parity_batches, params.export.atol)
            report[name] = {"file": path.name, "bytes": path.stat().st_size, "parity": parity}
            worst = max(v["max_abs_diff"] for v in parity.values())
            tracker.log_metrics({f"{name}.max_abs_diff": worst, f"{name}.onnx_bytes": path.stat().st_size})
            print(
                f"[export] {name}: {path} ({path.stat().st_size} bytes), parity at batches "
                f"{list(params.export.parity_batches)}: max abs diff {worst:.2e}"
            )
        if params.export.int8:
            calib = data[SOURCE_FILE]["train"].x[: params.export.calibration_samples]
            q = quantize_int8(out / "student.onnx", out / "student_int8.onnx", calib)
            report["student_int8"] = {"file": q.name, "bytes": q.stat().st_size}
            tracker.log_metrics({"student_int8.onnx_bytes": q.stat().st_size})
            print(f"[export] student_int8: {q} ({q.stat().st_size} bytes)")
        write_json(out / "parity.json", report)
        tracker.log_artifact(out / "parity.json")
        example = data[SOURCE_FILE]["test"].x[:1].astype(np.float32) / 255.0
        version = tracking.log_onnx_model(
            tracker,
            out / "student.onnx",
            "student_onnx",
            example,
            NUM_CLASSES,
            params.mlflow.registered_model,
        )
        if version:
            print(f"[export] registered {params.mlflow.registered_model} version {version} in MLflow")
    return report


def main(argv: list[str] | None = None) -> None:
    stage.main("export", run, argv)


if __name__ == "__main__":
    main()
