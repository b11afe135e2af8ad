"""ONNX in the core: export with a dynamic batch axis, ONNX Runtime sessions, parity against PyTorch,
static INT8 quantisation and batched prediction. Used by the export and evaluate stages and by the plugin
checks.

The exported model takes ``pixels`` (float32 ``[batch, C, H, W]`` in [0, 1]) and returns ``logits`` and
their softmax, ``probabilities`` (what a served model answers with).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.atomic import write_with
from pipeline.errors import DistillopsError, MissingDependencyError

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
PROBABILITIES = "probabilities"


CLASSES_KEY = "distillops.classes"  # ONNX metadata: the class names, JSON, in output order


def export_onnx(
    model: nn.Module, path: Path, example: torch.Tensor, opset: int, classes: Sequence[str] | None = None
) -> Path:
    """Export with a dynamic batch axis and a ``probabilities`` output, with the class names (when given)
    in the model's metadata; written atomically."""
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
    return finish(path, classes)


def finish(path: Path, classes: Sequence[str] | None = None) -> Path:
    """In place: add a second output, ``probabilities`` (softmax of ``logits`` over the classes), and
    the class names as metadata (``distillops.classes``), which ``distillops predict`` reads."""
    import copy
    import json

    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if not any(o.name == PROBABILITIES for o in graph.output):
        logits = next(o for o in graph.output if o.name == OUTPUT_NAME)
        graph.node.append(onnx.helper.make_node("Softmax", [OUTPUT_NAME], [PROBABILITIES], axis=-1))
        out = copy.deepcopy(logits)
        out.name = PROBABILITIES
        graph.output.append(out)
    if classes is not None:
        onnx.helper.set_model_props(model, {CLASSES_KEY: json.dumps(list(classes))})
    onnx.checker.check_model(model)
    write_with(path, lambda tmp: onnx.save(model, str(tmp)))
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


def onnx_predict(session: Any, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    out = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + batch].astype(np.float32) / 255.0})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out)
