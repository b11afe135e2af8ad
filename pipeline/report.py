"""What a pipeline run produced, in words: one run's summary, and mean +- std over seeds.

:func:`summary` is the one printout of a run's results: ``evaluate`` prints it when it finishes and
``distillops summary`` prints it again from ``paths.metrics`` (``make pipeline`` runs it after
``dvc repro``, which skips ``evaluate`` when nothing changed).

``distillops report``: mean +- std over seeds of the pipeline's final metrics, from MLflow, printed and
written as a markdown table and a figure (``reports/methods.md``, ``reports/methods.png``), which are
also logged to MLflow in a run of their own (tag ``distillops.stage`` = ``report``).

Every finished ``evaluate`` run carries the whole configuration as params and the final metrics, so a
sweep (``dvc exp run --queue -S seed=1 -S ...``) needs nothing else: runs are grouped by their params
minus the seed (and settings that do not change results, like paths and progress bars), the latest run
of each (configuration, seed) counts once, and each group becomes one row. The columns name the params
that differ between the groups, so the table shows what was swept.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text
from pipeline.errors import DistillopsError

DEFAULT_METRICS = (
    "teacher.accuracy",
    "student_alone.accuracy",
    "student.accuracy",
    "distill.gain",
    "distill.gap_closed",
    "student.parameters",
    "student.latency_ms.onnx_b1",
    "compression.parameters",
    "compression.latency_onnx_b1",
    "transfer.accuracy",
    "transfer.scratch_accuracy",
)
# params that do not change results (or are the replicate axis)
IGNORED_PREFIXES = ("seed", "paths.", "runtime.progress", "runtime.threads", "mlflow.")


@dataclass
class Group:
    config: dict[str, str]
    seeds: list[str]
    values: dict[str, list[float]]


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p) for p in IGNORED_PREFIXES)


def group_runs(runs: Sequence[Any], metrics: Sequence[str]) -> tuple[list[str], list[Group]]:
    """(the params that differ between groups, one group per configuration)."""
    latest: dict[tuple, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        params = run.data.params
        config = tuple(sorted((k, v) for k, v in params.items() if not _ignored(k)))
        latest[(config, params.get("seed", ""))] = run  # a rerun of the same seed replaces the earlier one
    groups: dict[tuple, Group] = {}
    for (config, seed), run in sorted(latest.items(), key=lambda kv: (kv[0][0], _seed_order(kv[0][1]))):
        group = groups.setdefault(config, Group(dict(config), [], {m: [] for m in metrics}))
        group.seeds.append(seed)
        for m in metrics:
            if m in run.data.metrics:
                group.values[m].append(run.data.metrics[m])
    keys = sorted({k for g in groups.values() for k in g.config})
    varying = [k for k in keys if len({g.config.get(k) for g in groups.values()}) > 1]
    return varying, list(groups.values())


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (0, seed)


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 4, signed: bool = False) -> str:
    """``mean +- std`` (sample std; 0 for one value) of ``values`` times ``scale``; "-" for none."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:{'+' if signed else ''}.{digits}f} +- {std * scale:.{digits}f}"


def cell(metric: str, values: Sequence[float]) -> str:
    """One metric's mean +- std in its own unit: counts as integers, ratios as "x", gains in points, the
    share of the gap closed in percent, everything else (accuracies, milliseconds) with 4 decimals."""
    if not values:
        return "-"
    if metric.startswith("compression."):
        return mean_std(values, digits=2) + "x"
    if metric.endswith((".parameters", "_bytes")):
        return mean_std(values, digits=0) if len(set(values)) > 1 else f"{int(values[0]):,}"
    if metric.endswith(".gain"):
        return mean_std(values, scale=100, digits=2, signed=True) + " pt"
    if metric.endswith("gap_closed"):
        return mean_std(values, scale=100, digits=0, signed=True) + " %"
    return mean_std(values)


def markdown(varying: Sequence[str], groups: Sequence[Group], metrics: Sequence[str]) -> str:
    head = [*(varying or ["configuration"]), "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        config = [g.config.get(k, "") for k in varying] or ["all runs"]
        cells = [*config, f"{len(g.seeds)} ({', '.join(g.seeds)})", *(cell(m, g.values[m]) for m in metrics)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def summary(m: dict[str, float], params: Any) -> str:
    """The results of one run and where its outputs are (``params``: the run's Params)."""
    from pipeline import layout
    from pipeline.tracking import tracking_uri

    onnx = layout.onnx_file(params, "student")
    rows = [
        ("teacher", m["teacher.accuracy"], f"{int(m['teacher.parameters']):,} parameters"),
        ("student alone", m["student_alone.accuracy"], ""),
        (
            "distilled student",
            m["student.accuracy"],
            f"ONNX {m['student.onnx_accuracy']:.4f}, gain {m['distill.gain'] * 100:+.2f} pt, "
            f"{int(m['student.parameters']):,} parameters",
        ),
        (
            "transferred (target)",
            m["transfer.accuracy"],
            f"from scratch {m['transfer.scratch_accuracy']:.4f}, gain {m['transfer.gain'] * 100:+.2f} pt",
        ),
    ]
    lines = ["", "Results (test accuracy)"]
    lines += [f"  {name:22} {acc:.4f}  {extra}".rstrip() for name, acc, extra in rows]
    if "student.left_out_accuracy" in m:
        lines.append(
            f"  left-out classes {list(params.distill.exclude_classes)}: distilled "
            f"{m['student.left_out_accuracy']:.4f}, {m['student.left_out_accuracy_after_bias']:.4f} after a "
            f"bias of {m['student.left_out_bias']:g} (chosen on validation); alone "
            f"{m['student_alone.left_out_accuracy']:.4f} / {m['student_alone.left_out_accuracy_after_bias']:.4f}"
        )
    gap_closed = (
        f", {m['distill.gap_closed']:.0%} of the teacher-student gap closed"
        if "distill.gap_closed" in m
        else ""
    )
    lines += [
        f"  latency batch 1: PyTorch {m['student.latency_ms.torch_b1']:.3f} ms, ONNX Runtime "
        f"{m['student.latency_ms.onnx_b1']:.3f} ms",
        f"  compression: {m['compression.parameters']:.1f}x fewer parameters"
        + "".join(
            f", {m[f'compression.latency_{rt}_b1']:.1f}x lower {name} batch-1 latency"
            for rt, name in (("onnx", "ONNX Runtime"), ("torch", "PyTorch"))
            if f"compression.latency_{rt}_b1" in m  # an imported teacher is not timed in every runtime
        )
        + f" than the teacher{gap_closed}",
        "",
        "Where things are",
        f"  metrics        {params.paths.metrics}   (dvc metrics show)",
        f"  plots          {params.paths.plots}   (dvc plots show)",
        f"  ONNX student   {onnx}   ({int(m['student.onnx_bytes']):,} bytes)",
        f"  predict        distillops predict {onnx} images.npy",
        f"  MLflow         mlflow ui --backend-store-uri {tracking_uri()}",
        f"  registry       models:/{params.mlflow.registered_model}@champion (this version: @candidate)",
    ]
    return "\n".join(lines)


def _label(config: dict[str, str], varying: Sequence[str]) -> str:
    return ", ".join(f"{k}={config.get(k, '')}" for k in varying) or "all runs"


def figure(varying: Sequence[str], groups: Sequence[Group], path: Path) -> Path:
    """Per configuration: the distilled student's test accuracy (mean +- std) against the student alone
    and the teacher, and the gain over the student alone in points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def stats(g: Group, key: str, scale: float = 1.0) -> tuple[float, float]:
        v = [x * scale for x in g.values.get(key, [])]
        if not v:
            return float("nan"), 0.0
        return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0

    import textwrap

    # long configurations wrap over lines, so the plots keep their width
    labels = [
        textwrap.fill(f"{_label(g.config, varying)} ({len(g.seeds)} seeds)", 60, break_on_hyphens=False)
        for g in groups
    ]
    height = 1.8 + sum(0.25 + 0.18 * label.count("\n") for label in labels)
    ys = list(range(len(groups)))
    fig, (acc_ax, gain_ax) = plt.subplots(
        1, 2, figsize=(14, height), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    for key, name, marker in (
        ("teacher.accuracy", "teacher", "s"),
        ("student_alone.accuracy", "student alone", "o"),
        ("student.accuracy", "distilled student", "D"),
    ):
        means, stds = zip(*(stats(g, key) for g in groups), strict=True)
        acc_ax.errorbar(means, ys, xerr=stds, fmt=marker, capsize=3, label=name)
    acc_ax.set_xlabel("test accuracy (mean +- std over seeds)")
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=8, frameon=False)
    means, stds = zip(*(stats(g, "distill.gain", 100.0) for g in groups), strict=True)
    gain_ax.barh(ys, means, xerr=stds, capsize=3, color="tab:green")
    gain_ax.axvline(0, color="black", linewidth=0.8)
    gain_ax.set_xlabel("gain over the student alone (points)")
    acc_ax.set_yticks(ys, labels, fontsize=8)
    acc_ax.invert_yaxis()
    for ax in (acc_ax, gain_ax):
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def log_report(tracking_uri: str, experiment: str, files: Sequence[Path], runs: int) -> str:
    """Log the report's files to a run of their own; its run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(
        exp.experiment_id,
        run_name="report",
        tags={"distillops.stage": "report", "distillops.runs": str(runs)},
    )
    for file in files:
        client.log_artifact(run.info.run_id, str(file), "report")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def finished_evaluate_runs(tracking_uri: str, experiment: str, since: str | None = None) -> list[Any]:
    """The finished evaluate runs of ``experiment`` (several: comma-separated names), started at or
    after ``since`` (``YYYY-MM-DD HH:MM``, local time) when given."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    ids = []
    for name in experiment.split(","):
        exp = client.get_experiment_by_name(name.strip())
        if exp is None:
            raise DistillopsError(
                f"no MLflow experiment '{name.strip()}' in {tracking_uri}; run the pipeline first "
                f"(dvc repro) or pass --experiment / --tracking-uri"
            )
        ids.append(exp.experiment_id)
    query = "tags.`distillops.stage` = 'evaluate' and attributes.status = 'FINISHED'"
    if since:
        try:
            start = time.mktime(time.strptime(since, "%Y-%m-%d %H:%M"))
        except ValueError:
            raise DistillopsError(f"--since {since!r}: expected YYYY-MM-DD HH:MM") from None
        query += f" and attributes.start_time >= {int(start * 1000)}"
    return client.search_runs(ids, filter_string=query, max_results=5000)


def main(args: argparse.Namespace) -> int:
    import os

    from pipeline import tracking
    from pipeline.params import load_params

    uri = args.tracking_uri or tracking.tracking_uri()
    try:
        default_experiment = load_params().mlflow.experiment
    except DistillopsError:  # not in a checkout with a params.yaml: the name params.yaml uses
        default_experiment = "distillops"
    experiment = args.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or default_experiment
    metrics = args.metric or list(DEFAULT_METRICS)
    runs = finished_evaluate_runs(uri, experiment, args.since)
    if not runs:
        raise DistillopsError(f"experiment '{experiment}' in {uri} has no finished evaluate run yet")
    varying, groups = group_runs(runs, metrics)
    heading = f"{len(runs)} evaluate runs in '{experiment}' ({uri}), {len(groups)} configuration(s)"
    table = markdown(varying, groups, metrics)
    print(f"{heading}\n\n{table}")
    out = Path(args.out)
    md = out.with_suffix(".md")
    png = figure(varying, groups, out.with_suffix(".png"))
    write_text(
        md,
        f"# Results over seeds\n\n`distillops report` on {time.strftime('%Y-%m-%d %H:%M')}: {heading}. Mean +- "
        f"std over seeds of each metric; one row per configuration (the params that differ are the first "
        f"columns).\n\n{table}\n\n![accuracy and gain per configuration]({png.name})\n",
    )
    print(f"\nwrote {md} and {png}")
    if not args.no_log:
        run_id = log_report(uri, experiment.split(",")[0].strip(), [md, png], len(runs))
        print(f"logged to MLflow run {run_id} (experiment '{experiment}', artifacts under report/)")
    return 0
