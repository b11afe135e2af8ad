"""Stage 6, evaluate: accuracy, size and latency of every model and its ONNX (and INT8) form.

Writes ``paths.metrics`` (flat dotted keys, DVC metrics) and, in ``paths.plots``, the confusion matrix of the distilled student (``confusion.csv``, DVC plot)
and PNG figures that also go to MLflow. Every metric is logged to the stage's run and to the
pipeline's parent run, so experiments compare on one row in the MLflow UI.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline import datasets, layout, model_registry, plots_page, report, runner, teachers, tracking
from pipeline.atomic import read_json, write_json, write_text
from pipeline.data import Split, load_splits
from pipeline.evaluation import accuracy, confusion_matrix, predict_logits
from pipeline.modelio import load_model
from pipeline.onnx_model import INPUT_NAME, OUTPUT_NAME, onnx_predict, ort_session
from pipeline.params import Params
from pipeline.runner import StageContext
from pipeline.stage_outputs import Parity, PreparedSummary, read_history


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


def input_batch(batch: int, shape: tuple[int, ...] = (1, 28, 28)) -> np.ndarray:
    """A fixed random float32 batch of images of ``shape`` (channels, height, width)."""
    return np.random.default_rng(0).random((batch, *shape), dtype=np.float32)


def torch_latency(
    model: nn.Module, batch: int, warmup: int, repeats: int, shape: tuple[int, ...] = (1, 28, 28)
) -> dict[str, float]:
    x = torch.from_numpy(input_batch(batch, shape))
    model = model.eval().cpu()

    def call() -> None:
        with torch.inference_mode():
            model(x)

    return time_ms(call, warmup, repeats)


def onnx_latency(
    session: Any,
    batch: int,
    warmup: int,
    repeats: int,
    shape: tuple[int, ...] = (1, 28, 28),
    names: tuple[str, str] = (INPUT_NAME, OUTPUT_NAME),
    dtype: str = "float32",
) -> dict[str, float]:
    """Latency of an ONNX Runtime session on ``batch`` inputs of ``shape`` (``names``: its input and
    output; an imported teacher has its own)."""
    x = input_batch(batch, shape)
    if dtype == "uint8":
        x = (x * 255).astype(np.uint8)
    return time_ms(lambda: session.run([names[1]], {names[0]: x}), warmup, repeats)


def _imported_onnx_teacher(params: Params) -> tuple[Path, dict[str, Any]] | None:
    """An ONNX teacher's own file and how to feed it (its native input), or None."""
    folder = layout.model_dir(params, "teacher")
    meta = read_json(folder / layout.META)
    if meta.get("kind") != "onnx":
        return None
    return folder / meta["file"], meta["onnx"]


def interleaved_latencies(
    timers: dict[str, Callable[[], dict[str, float]]], rounds: int
) -> dict[str, dict[str, float]]:
    """Time every entry of ``timers`` once per round, the entries interleaved within each round, and keep
    per entry the round with the lowest median (and that round's p95). A stall of the machine (another
    process, a thread pool still waking up) lands in one round of one entry instead of deciding a
    comparison, and every entry is measured under the same conditions as the others."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for key, timer in timers.items():
            stats = timer()
            if key not in best or stats["median"] < best[key]["median"]:
                best[key] = stats
    return best


# the points of the models figure: label -> (accuracy key, batch-1 latency key, size in bytes key or
# parameters key, which is turned into float32 bytes)
MODEL_POINTS = {
    "teacher (PyTorch)": ("teacher.accuracy", "teacher.latency_ms.torch_b1", "teacher.parameters"),
    "teacher (ONNX)": ("teacher.onnx_accuracy", "teacher.latency_ms.onnx_b1", "teacher.onnx_bytes"),
    "student alone (PyTorch)": (
        "student_alone.accuracy",
        "student.latency_ms.torch_b1",
        "student_alone.parameters",
    ),
    "distilled student (PyTorch)": ("student.accuracy", "student.latency_ms.torch_b1", "student.parameters"),
    "distilled student (ONNX)": ("student.onnx_accuracy", "student.latency_ms.onnx_b1", "student.onnx_bytes"),
    "distilled student (INT8 ONNX)": (
        "student_int8.onnx_accuracy",
        "student_int8.latency_ms.onnx_b1",
        "student_int8.onnx_bytes",
    ),
}


def _models_figure(plt: Any, metrics: dict[str, float]) -> Any:
    """Test accuracy against batch-1 latency and against size, one point per model and format (the
    student alone has the distilled student's architecture, hence its latency)."""
    fig, (by_latency, by_size) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label, (acc, latency, size) in MODEL_POINTS.items():
        if acc not in metrics or latency not in metrics or size not in metrics:
            continue
        nbytes = metrics[size] * 4 if size.endswith("parameters") else metrics[size]
        marker = "s" if "teacher" in label else ("^" if "alone" in label else "o")
        for ax, x in ((by_latency, metrics[latency]), (by_size, nbytes / 1024)):
            ax.scatter(x, metrics[acc], marker=marker, s=60, label=label, alpha=0.8)
    by_latency.set_xlabel("batch-1 latency, median (ms, log scale)")
    by_size.set_xlabel("size (KiB; PyTorch: float32 parameters, log scale)")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax in (by_latency, by_size):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    fig.suptitle("every model: accuracy against latency and size")
    handles, labels = by_latency.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def _figures(
    curves: dict[str, list[dict[str, float]]],
    cms: dict[str, tuple[np.ndarray, tuple[str, ...]]],
    metrics: dict[str, float],
    out: Path,
) -> dict[str, Any]:
    """The run's figures, also saved under ``out``: validation curves, confusion matrices (title ->
    matrix and class names) and the models figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_curves, ax = plt.subplots(figsize=(6, 4))
    for name, history in curves.items():
        ax.plot(
            [r["epoch"] for r in history], [r[layout.VAL_ACCURACY] for r in history], marker="o", label=name
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig_curves.tight_layout()
    fig_cm, axes = plt.subplots(1, len(cms), figsize=(6 * len(cms), 5))
    for ax, (title, (matrix, classes)) in zip(np.atleast_1d(axes), cms.items(), strict=True):
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(f"{title}, test split")
    fig_cm.tight_layout()
    figs = {
        "training_curves.png": fig_curves,
        "confusion_matrix.png": fig_cm,
        "models.png": _models_figure(plt, metrics),
    }
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=120)
    return figs


# metrics prefix -> the model's name (its paths.* folder) and the prepared file of its test split
EVALUATED = {
    "teacher": ("teacher", layout.SOURCE_FILE),
    "student_alone": ("student_alone", layout.SOURCE_FILE),
    "student": ("student", layout.SOURCE_FILE),
    "transfer": ("transferred", layout.TARGET_FILE),
    "transfer_scratch": ("scratch", layout.TARGET_FILE),
}


def _accuracies(
    params: Params, tests: dict[str, Split]
) -> tuple[dict[str, float], dict[str, nn.Module], dict[str, np.ndarray]]:
    """Test accuracy and size of every PyTorch model; (metrics, models, predictions)."""
    cpu = torch.device("cpu")
    metrics, models, preds = {}, {}, {}
    for name, (model_name, data_file) in EVALUATED.items():
        split = tests[data_file]
        if name == "teacher":  # trained or imported, any kind
            model, _meta = teachers.load_teacher(layout.model_dir(params, model_name), cpu, split.x.shape[1:])
        else:
            model, _meta = load_model(layout.model_dir(params, model_name), cpu)
        logits = predict_logits(model, torch.from_numpy(split.x), cpu, params.runtime.eval_batch_size)
        models[name], preds[name] = model, logits.argmax(1).numpy()
        metrics[f"{name}.accuracy"] = accuracy(logits, torch.from_numpy(split.y))
        metrics[f"{name}.parameters"] = teachers.teacher_parameters(model)
    metrics["transfer.scratch_accuracy"] = metrics.pop("transfer_scratch.accuracy")
    metrics.pop("transfer_scratch.parameters")
    return metrics, models, preds


def _onnx_metrics(
    params: Params, tests: dict[str, Split], imported: tuple[Path, dict[str, Any]] | None
) -> dict[str, float]:
    """ONNX Runtime accuracy and file size of every exported model, and of the INT8 student
    (``imported``: an ONNX teacher's own file, see ``_imported_onnx_teacher``)."""
    metrics = {}
    exported = dict(layout.EXPORTED)
    if layout.onnx_file(params, layout.INT8).exists():
        exported[layout.INT8] = layout.SOURCE_FILE
    if imported is not None:  # the teacher is an ONNX file: its accuracy is the ONNX Runtime one
        metrics["teacher.onnx_bytes"] = imported[0].stat().st_size
    for model_name, data_file in exported.items():
        name = "transfer" if model_name == "transferred" else model_name  # the metrics prefix
        path, split = layout.onnx_file(params, model_name), tests[data_file]
        if not path.exists():  # an imported teacher export does not convert (see parity.json)
            continue
        predicted = onnx_predict(ort_session(path), split.x).argmax(1)
        metrics[f"{name}.onnx_accuracy"] = float((predicted == split.y).mean())
        metrics[f"{name}.onnx_bytes"] = path.stat().st_size
    return metrics


def _latency_metrics(
    params: Params,
    models: dict[str, nn.Module],
    shape: tuple[int, ...],
    imported: tuple[Path, dict[str, Any]] | None,
) -> dict[str, float]:
    """Median and p95 latency per batch size: teacher and student in PyTorch and in ONNX Runtime, and the
    INT8 student in ONNX Runtime, all with ``evaluate.latency_threads`` threads (None: as many as PyTorch
    uses); best of ``evaluate.latency_rounds`` interleaved rounds (see ``interleaved_latencies``)."""
    ev = params.evaluate
    w, r = ev.latency_warmup, ev.latency_repeats
    threads = ev.latency_threads or torch.get_num_threads()
    timers: dict[str, Callable[[], dict[str, float]]] = {}
    # a teacher with ONNX members runs in ONNX Runtime whatever PyTorch does: no PyTorch latency
    torch_teacher = not any(isinstance(m, teachers.OnnxTeacher) for m in models["teacher"].modules())
    for b in ev.latency_batches:
        for name in ("teacher", "student") if torch_teacher else ("student",):
            timers[f"{name}|torch_b{b}"] = functools.partial(torch_latency, models[name], b, w, r, shape)
    sessions = {
        name: (ort_session(path, threads), shape, (INPUT_NAME, OUTPUT_NAME), "float32")
        for name in ("teacher", "student", layout.INT8)
        if (path := layout.onnx_file(params, name)).exists()
    }
    if imported is not None:  # timed on its own input, as it would serve
        path, info = imported
        dims = (info["channels"], info["height"], info["width"])
        own = dims if info["layout"] == "nchw" else (info["height"], info["width"], info["channels"])
        names = (info["input_name"], info["output_name"])
        sessions["teacher"] = (ort_session(path, threads), own, names, info["dtype"])
    for b in ev.latency_batches:
        for name, (session, in_shape, names, dtype) in sessions.items():
            if name == "teacher" and imported is not None and imported[1]["batch"] not in (None, b):
                continue  # a fixed batch size other than b
            timers[f"{name}|onnx_b{b}"] = functools.partial(
                onnx_latency, session, b, w, r, in_shape, names, dtype
            )
    metrics = {}
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timed = interleaved_latencies(timers, ev.latency_rounds)
    finally:
        torch.set_num_threads(torch_threads)
    for key, stats in timed.items():
        name, kind = key.split("|")
        metrics[f"{name}.latency_ms.{kind}"] = stats["median"]
        metrics[f"{name}.latency_p95_ms.{kind}"] = stats["p95"]
    return metrics


BIAS_GRID = np.arange(0.0, 20.0001, 0.25)  # candidate logit offsets for the left-out classes


def left_out_class_metrics(
    val_logits: np.ndarray,
    val_y: np.ndarray,
    test_logits: np.ndarray,
    test_y: np.ndarray,
    classes: tuple[int, ...],
) -> dict[str, float]:
    """Accuracy on the test images of the ``classes`` left out of training, before and after adding
    one bias to their logits; the bias is the one in ``BIAS_GRID`` that maximises the validation
    accuracy over all classes (the smallest such), never chosen on the test split."""
    cols = list(classes)

    def predict(logits: np.ndarray, bias: float) -> np.ndarray:
        shifted = logits.copy()
        shifted[:, cols] += bias
        return shifted.argmax(1)

    val_acc = [float((predict(val_logits, b) == val_y).mean()) for b in BIAS_GRID]
    bias = float(BIAS_GRID[int(np.argmax(val_acc))])
    rows = np.isin(test_y, cols)
    return {
        "left_out_accuracy": float((test_logits[rows].argmax(1) == test_y[rows]).mean()),
        "left_out_bias": bias,
        "left_out_accuracy_after_bias": float((predict(test_logits[rows], bias) == test_y[rows]).mean()),
        "accuracy_after_bias": float((predict(test_logits, bias) == test_y).mean()),
    }


def _left_out_metrics(
    params: Params, models: dict[str, nn.Module], tests: dict[str, Split]
) -> dict[str, float]:
    """The dark-knowledge check for both students, when ``distill.exclude_classes`` left classes out."""
    classes = tuple(params.distill.exclude_classes)
    if not classes:
        return {}
    val = load_splits(layout.prepared(params, layout.SOURCE_FILE))["val"]
    test = tests[layout.SOURCE_FILE]
    metrics = {}
    for name in ("student", "student_alone"):
        logits = {
            split_name: predict_logits(
                models[name], torch.from_numpy(split.x), torch.device("cpu"), params.runtime.eval_batch_size
            ).numpy()
            for split_name, split in (("val", val), ("test", test))
        }
        found = left_out_class_metrics(logits["val"], val.y, logits["test"], test.y, classes)
        metrics |= {f"{name}.{k}": v for k, v in found.items()}
    return metrics


def _confusion_csv(path: Path, classes: tuple[str, ...], actual: np.ndarray, predicted: np.ndarray) -> None:
    write_text(
        path,
        "actual,predicted\n"
        + "".join(f"{classes[a]},{classes[p]}\n" for a, p in zip(actual, predicted, strict=True)),
    )


def _plots(
    params: Params,
    tests: dict[str, Split],
    preds: dict[str, np.ndarray],
    metrics: dict[str, float],
    tracker: Any,
) -> None:
    """DVC plot data (confusion CSVs) and the PNG figures, also logged to MLflow."""
    plots = Path(params.paths.plots)
    plots.mkdir(parents=True, exist_ok=True)
    source, target = tests[layout.SOURCE_FILE], tests[layout.TARGET_FILE]
    summary = PreparedSummary.read(params)  # the class names of each task
    source_classes, target_classes = summary.source.classes, summary.target.classes
    _confusion_csv(plots / "confusion.csv", source_classes, source.y, preds["student"])
    _confusion_csv(plots / "transfer_confusion.csv", target_classes, target.y, preds["transfer"])
    curves = {  # an imported teacher trained here for no epochs: it has no curve
        name: read_history(path)
        for name, (model_name, _file) in EVALUATED.items()
        if (path := layout.model_dir(params, model_name) / layout.HISTORY).exists()
    }
    cms = {
        "distilled student": (
            confusion_matrix(source.y, preds["student"], len(source_classes)),
            source_classes,
        ),
        "transferred student": (
            confusion_matrix(target.y, preds["transfer"], len(target_classes)),
            target_classes,
        ),
    }
    for file, fig in _figures(curves, cms, metrics, plots).items():
        tracker.log_figure(fig, file, parent=True)
    tracker.log_artifact(plots / "confusion.csv", "plots")


def _log_to_logged_models(exported: Parity, metrics: dict[str, float], tracker: Any) -> None:
    """Each exported model's accuracy (ONNX Runtime, test split), file size, batch-1 latency (where
    measured) and parameters, logged against the MLflow logged model export made of it (``exported``:
    export's ``parity.json``)."""
    for model_name, model_id in exported.logged_models.items():
        if tracker.active and not _in_store(tracker.client, model_id):
            print(
                f"[evaluate] {model_name}: logged model {model_id} is not in this MLflow store (export ran "
                f"against another, e.g. before a `dvc pull` into a fresh clone); its metrics go to this "
                f"run only. `dvc repro -f -s export` logs the models here"
            )
            continue
        prefix = "transfer" if model_name == "transferred" else model_name  # the metrics prefix
        found = {
            "accuracy": metrics.get(f"{prefix}.onnx_accuracy"),
            "onnx_bytes": metrics.get(f"{prefix}.onnx_bytes"),
            "latency_ms_b1": metrics.get(f"{prefix}.latency_ms.onnx_b1"),
            "parameters": metrics.get(f"{prefix}.parameters"),
        }
        tracker.log_metrics({k: v for k, v in found.items() if v is not None}, model_id=model_id)


def _in_store(client: Any, model_id: str) -> bool:
    try:
        client.get_logged_model(model_id)
    except Exception:  # MlflowException RESOURCE_DOES_NOT_EXIST (or any store error: nothing to log to)
        return False
    return True


def _registry_decision(
    params: Params, exported: Parity, metrics: dict[str, float], tracker: Any
) -> str | None:
    """Record this execution's measurements on the student version export registered, and move the
    'champion' alias to it when it wins (``pipeline.model_registry``); the decision, in words."""
    registered = exported.registered
    if not tracker.active or registered is None:
        return None
    name, version = registered
    source = params.teacher.source
    teacher = params.teacher.model.describe() if source.trains else f"{source.describe()} (imported)"
    shape = datasets.format_of(params, "source").shape
    measured = {
        "accuracy": metrics["student.onnx_accuracy"],
        "latency_ms": metrics["student.latency_ms.onnx_b1"],
        "onnx_bytes": metrics["student.onnx_bytes"],
    }
    description = (
        f"Student {params.student.model.describe()} distilled from teacher {teacher} "
        f"with {' + '.join(f'{s.weight:g} {s.describe()}' for s in params.distill.losses)}, "
        f"{params.distill.epochs} epochs, seed {params.seed}. ONNX Runtime: test accuracy "
        f"{measured['accuracy']:.4f}, {int(measured['onnx_bytes']):,} bytes, batch-1 latency "
        f"{measured['latency_ms']:.4f} ms. Teacher {metrics['teacher.accuracy']:.4f}, student alone "
        f"{metrics['student_alone.accuracy']:.4f}. Input: float32 [batch, {', '.join(map(str, shape))}] in "
        "[0, 1]; outputs: logits and probabilities."
    )
    try:
        decision = model_registry.evaluate_candidate(
            tracker.client,
            name,
            version,
            measured,
            description,
            params.mlflow.champion_margin,
            params.mlflow.champion_max_latency_ms,
        )
    except Exception as exc:  # a version deleted from the registry meanwhile, another store...
        return f"{name} v{version} not updated ({type(exc).__name__}: {exc})"
    text = decision.describe(name, version)
    tracker.set_tags({"distillops.registry_decision": text, "distillops.champion_version": decision.champion})
    return text


def run(ctx: StageContext) -> dict[str, float]:
    params = ctx.params
    tests = {
        f: load_splits(layout.prepared(params, f))["test"] for f in (layout.SOURCE_FILE, layout.TARGET_FILE)
    }
    with tracking.stage_run("evaluate", params, ctx.params_file) as tracker:
        metrics, models, preds = _accuracies(params, tests)
        imported = _imported_onnx_teacher(params)
        metrics |= _onnx_metrics(params, tests, imported)
        metrics |= _latency_metrics(params, models, tests[layout.SOURCE_FILE].x.shape[1:], imported)
        metrics |= _left_out_metrics(params, models, tests)
        metrics["distill.gain"] = metrics["student.accuracy"] - metrics["student_alone.accuracy"]
        gap = metrics["teacher.accuracy"] - metrics["student_alone.accuracy"]
        if gap > 0:  # the share of the teacher-student gap that distillation closed
            metrics["distill.gap_closed"] = metrics["distill.gain"] / gap
        metrics["compression.parameters"] = metrics["teacher.parameters"] / metrics["student.parameters"]
        if imported is not None:
            metrics["teacher.onnx_accuracy"] = metrics["teacher.accuracy"]
        for runtime in ("torch", "onnx"):  # how many times faster the student answers one image
            if f"teacher.latency_ms.{runtime}_b1" in metrics:  # not for every imported teacher
                metrics[f"compression.latency_{runtime}_b1"] = (
                    metrics[f"teacher.latency_ms.{runtime}_b1"] / metrics[f"student.latency_ms.{runtime}_b1"]
                )
        metrics["transfer.gain"] = metrics["transfer.accuracy"] - metrics["transfer.scratch_accuracy"]
        metrics["student.onnx_speedup_b1"] = (
            metrics["student.latency_ms.torch_b1"] / metrics["student.latency_ms.onnx_b1"]
        )
        _plots(params, tests, preds, metrics, tracker)
        plots_page.ensure()  # so that `dvc plots show` renders offline even where setup never ran
        exported = Parity.read(params)  # what export logged and registered
        _log_to_logged_models(exported, metrics, tracker)
        decision = _registry_decision(params, exported, metrics, tracker)
        metrics_file = Path(params.paths.metrics)
        write_json(metrics_file, metrics)
        tracker.log_metrics(metrics, parent=True)
        tracker.log_artifact(metrics_file)
        print(report.summary(metrics, params))
        if decision:
            print(f"[evaluate] registry: {decision}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    runner.main("evaluate", run, argv)


if __name__ == "__main__":
    main()
