"""Print where a finished pipeline put its results (run by `make pipeline`)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.atomic import read_json
from pipeline.errors import DistillopsError
from pipeline.params import load_params
from pipeline.tracking import tracking_uri


def main() -> None:
    try:
        params = load_params()
    except DistillopsError as exc:
        sys.exit(f"error: {exc}")
    metrics_path = Path(params.paths.reports) / "metrics.json"
    if not metrics_path.exists():
        sys.exit(f"error: {metrics_path} does not exist; run `dvc repro` first")
    m = read_json(metrics_path)
    onnx = Path(params.paths.models) / "onnx" / "student.onnx"
    rows = [
        ("teacher", m["teacher.accuracy"], ""),
        ("student alone", m["student_alone.accuracy"], ""),
        ("distilled student", m["student.accuracy"], f"ONNX {m['student.onnx_accuracy']:.4f}"),
        (
            "transferred (digits)",
            m["transfer.accuracy"],
            f"from scratch {m['transfer.scratch_accuracy']:.4f}",
        ),
    ]
    print("\nResults (test accuracy)")
    for name, acc, extra in rows:
        print(f"  {name:22} {acc:.4f}  {extra}")
    print(
        f"  latency batch 1: PyTorch {m['student.latency_ms.torch_b1']:.3f} ms, "
        f"ONNX Runtime {m['student.latency_ms.onnx_b1']:.3f} ms"
    )
    print("\nWhere things are")
    print(f"  metrics        {metrics_path}   (dvc metrics show)")
    print(f"  plots          {Path(params.paths.reports) / 'plots'}   (dvc plots show)")
    print(f"  ONNX student   {onnx}   ({int(m['student.onnx_bytes'])} bytes)")
    print(f"  predict        python -m pipeline.predict {onnx} images.npy")
    print(f"  MLflow         mlflow ui --backend-store-uri {tracking_uri()}")
    print(f"  registry       models:/{params.mlflow.registered_model}/latest")


if __name__ == "__main__":
    main()
