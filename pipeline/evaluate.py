"""Stage 6, evaluate: accuracy, size and latency of every model and its ONNX (and INT8) form.

Writes ``paths.metrics`` (flat dotted keys, DVC metrics) and, in ``paths.plots``, the confusion matrix of the distilled student (``confusion.csv``, DVC plot)
and PNG figures that also go to MLflow. Every metric is logged to the stage's run and to the
pipeline's parent run, so experiments compare on one row in the MLflow UI.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import layout, report, runner, tracking
from pipeline.atomic import write_json, write_text
from pipeline.data import DIGIT_CLASSES, FASHION_CLASSES, NUM_CLASSES, Split, load_splits
from pipeline.modelio import count_parameters, load_model
from pipeline.onnx_model import INPUT_NAME, OUTPUT_NAME, onnx_predict, ort_session
from pipeline.runner import StageContext
from pipeline.training import accuracy, confusion_matrix, predict_logits


def time_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    samples.sort()
    return {
        "median": statistics.median(samples),
        "p95": samples[min(len(samples) - 1, int(0.95 * len(samples)))],
    }


def torch_latency(model: nn.Module, batch: int, warmup: int, repeats: int) -> dict[str, float]:
    x = torch.rand(batch, 1, 28, 28)
    model = model.eval().cpu()

    def call() -> None:
        with torch.inference_mode():
            model(x)

    return time_ms(call, warmup, repeats)


def onnx_latency(session: Any, batch: int, warmup: int, repeats: int) -> dict[str, float]:
    x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
    return time_ms(lambda: session.run([OUTPUT_NAME], {INPUT_NAME: x}), warmup, repeats)


def _latencies(
    prefix: str, kind: str, fn: Callable[[int], dict[str, float]], batches: tuple[int, ...]
) -> dict[str, float]:
    out = {}
    for b in batches:
        stats = fn(b)
        out[f"{prefix}.latency_ms.{kind}_b{b}"] = stats["median"]
        out[f"{prefix}.latency_p95_ms.{kind}_b{b}"] = stats["p95"]
    return out


def _figures(curves: dict[str, list[dict[str, float]]], cm: np.ndarray, out: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_curves, ax = plt.subplots(figsize=(6, 4))
    for name, history in curves.items():
        ax.plot([r["epoch"] for r in history], [r["val_accuracy"] for r in history], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig_curves.tight_layout()
    fig_cm, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(NUM_CLASSES), FASHION_CLASSES, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(NUM_CLASSES), FASHION_CLASSES, fontsize=7)
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("distilled student, test split")
    fig_cm.tight_layout()
    figs = {"training_curves.png": fig_curves, "confusion_matrix.png": fig_cm}
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=120)
    return figs


def _read_history(path: Path) -> list[dict[str, float]]:
    lines = path.read_text().strip().splitlines()
    keys = lines[0].split(",")
    return [
        {k: float(v) for k, v in zip(keys, line.split(","), strict=True) if v != ""} for line in lines[1:]
    ]


def run(ctx: StageContext) -> dict[str, float]:
    params = ctx.params
    ev = params.evaluate
    source = load_splits(layout.prepared(params, layout.SOURCE_FILE))["test"]
    target = load_splits(layout.prepared(params, layout.TARGET_FILE))["test"]
    cpu = torch.device("cpu")
    # metrics prefix -> (model folder, test split)
    folders = {
        "teacher": (layout.model_dir(params, "teacher"), source),
        "student_alone": (layout.model_dir(params, "student_alone"), source),
        "student": (layout.model_dir(params, "student"), source),
        "transfer": (layout.model_dir(params, "transferred"), target),
        "transfer_scratch": (layout.model_dir(params, "scratch"), target),
    }
    # metrics prefix -> ONNX file
    onnx_files = {name: layout.onnx_file(params, name) for name in ("student", "student_alone")}
    onnx_files["transfer"] = layout.onnx_file(params, "transferred")
    metrics: dict[str, float] = {}
    models: dict[str, nn.Module] = {}
    preds: dict[str, np.ndarray] = {}
    with tracking.stage_run("evaluate", params, ctx.params_file) as tracker:
        for name, (folder, split) in folders.items():
            model, _meta = load_model(folder, cpu)
            models[name] = model
            logits = predict_logits(model, torch.from_numpy(split.x), cpu)
            preds[name] = logits.argmax(1).numpy()
            metrics[f"{name}.accuracy"] = accuracy(logits, torch.from_numpy(split.y))
            metrics[f"{name}.parameters"] = count_parameters(model)
        metrics["transfer.scratch_accuracy"] = metrics.pop("transfer_scratch.accuracy")
        metrics.pop("transfer_scratch.parameters")
        for name, path in onnx_files.items():
            split: Split = folders[name][1]
            session = ort_session(path)
            metrics[f"{name}.onnx_accuracy"] = float(
                (onnx_predict(session, split.x).argmax(1) == split.y).mean()
            )
            metrics[f"{name}.onnx_bytes"] = path.stat().st_size
        w, r = ev.latency_warmup, ev.latency_repeats
        threads = torch.get_num_threads()
        for name in ("teacher", "student"):
            metrics |= _latencies(
                name, "torch", lambda b, m=models[name]: torch_latency(m, b, w, r), ev.latency_batches
            )
        session = ort_session(onnx_files["student"], threads)
        metrics |= _latencies("student", "onnx", lambda b: onnx_latency(session, b, w, r), ev.latency_batches)
        int8 = layout.onnx_file(params, layout.INT8)
        if int8.exists():
            q = ort_session(int8, threads)
            metrics["student_int8.onnx_accuracy"] = float(
                (onnx_predict(q, source.x).argmax(1) == source.y).mean()
            )
            metrics["student_int8.onnx_bytes"] = int8.stat().st_size
            metrics |= _latencies(
                "student_int8", "onnx", lambda b: onnx_latency(q, b, w, r), ev.latency_batches
            )
        metrics["distill.gain"] = metrics["student.accuracy"] - metrics["student_alone.accuracy"]
        metrics["transfer.gain"] = metrics["transfer.accuracy"] - metrics["transfer.scratch_accuracy"]
        metrics["student.onnx_speedup_b1"] = (
            metrics["student.latency_ms.torch_b1"] / metrics["student.latency_ms.onnx_b1"]
        )

        metrics_file, plots = Path(params.paths.metrics), Path(params.paths.plots)
        plots.mkdir(parents=True, exist_ok=True)
        write_text(
            plots / "confusion.csv",
            "actual,predicted\n"
            + "".join(
                f"{FASHION_CLASSES[a]},{FASHION_CLASSES[p]}\n"
                for a, p in zip(source.y, preds["student"], strict=True)
            ),
        )
        write_text(
            plots / "transfer_confusion.csv",
            "actual,predicted\n"
            + "".join(
                f"{DIGIT_CLASSES[a]},{DIGIT_CLASSES[p]}\n"
                for a, p in zip(target.y, preds["transfer"], strict=True)
            ),
        )
        curves = {name: _read_history(folders[name][0] / layout.HISTORY) for name in folders}
        cm = confusion_matrix(source.y, preds["student"], NUM_CLASSES)
        for file, fig in _figures(curves, cm, plots).items():
            tracker.log_figure(fig, file)
        write_json(metrics_file, metrics)
        tracker.log_metrics(metrics, parent=True)
        tracker.log_artifact(metrics_file)
        tracker.log_artifact(plots / "confusion.csv", "plots")
        print(report.summary(metrics, params))
    return metrics


def main(argv: list[str] | None = None) -> None:
    runner.main("evaluate", run, argv)


if __name__ == "__main__":
    main()
