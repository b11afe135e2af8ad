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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text
from pipeline.errors import DistillopsError
from pipeline.tracking import DVC_EXP_TAG

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
    experiments: set[str] = field(default_factory=set)  # DVC experiment names of its runs, where named
    label: str = ""  # what sets it apart from the other groups, in words (see :func:`labels`)


EMPTY = ("", "None", "null", "[]", "{}")  # unset, however a version of the pipeline logged it


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p) for p in IGNORED_PREFIXES)


def _moved(a: str, b: str) -> bool:
    """Whether key ``b`` is key ``a`` with one level inserted (``data.dataset`` -> ``data.dataset.name``,
    ``data.source`` -> ``data.dataset.source``): how a param moves when its section grows."""
    pa, pb = a.split("."), b.split(".")
    return len(pb) == len(pa) + 1 and any(pb[:i] + pb[i + 1 :] == pa for i in range(len(pb)))


def renamed_keys(configs: Sequence[dict[str, str]]) -> dict[str, str]:
    """Old param key -> the key a later version logs the same setting under: the two never occur in one
    run, one is the other moved by a level (:func:`_moved`), and they share a value. ``configs`` are in
    time order; the key seen last is the current one."""
    last: dict[str, int] = {}
    values: dict[str, set[str]] = {}
    for i, config in enumerate(configs):
        for k, v in config.items():
            last[k] = i
            values.setdefault(k, set()).add(v)
    renames: dict[str, str] = {}
    for a in last:
        for b in last:
            if not _moved(a, b) or not values[a] & values[b]:
                continue
            if any(a in config and b in config for config in configs):  # both set at once: two settings
                continue
            old, new = (a, b) if last[a] < last[b] else (b, a)
            renames[old] = new
    return renames


def _config(params: dict[str, str]) -> dict[str, str]:
    """The params that can change results, set ones only (empty values are dropped)."""
    return {k: v for k, v in params.items() if not _ignored(k) and v not in EMPTY}


def group_runs(runs: Sequence[Any], metrics: Sequence[str]) -> tuple[list[str], list[Group]]:
    """(the params that differ between groups, one group per configuration). Params renamed between
    versions of the pipeline count as one (:func:`renamed_keys`), so old and new runs of one
    configuration are one group; each group is labelled by what sets it apart (:func:`labels`)."""
    ordered = sorted(runs, key=lambda r: r.info.start_time or 0)
    configs = [_config(r.data.params) for r in ordered]
    renames = renamed_keys(configs)
    latest: dict[tuple, Any] = {}
    for run, raw in zip(ordered, configs, strict=True):
        config = tuple(sorted((renames.get(k, k), v) for k, v in raw.items()))
        latest[(config, run.data.params.get("seed", ""))] = run  # a rerun of a seed replaces the earlier one
    groups: dict[tuple, Group] = {}
    for (config, seed), run in sorted(latest.items(), key=lambda kv: (kv[0][0], _seed_order(kv[0][1]))):
        group = groups.setdefault(config, Group(dict(config), [], {m: [] for m in metrics}))
        group.seeds.append(seed)
        name = run.data.tags.get(DVC_EXP_TAG)
        if name:
            group.experiments.add(name)
        for m in metrics:
            if m in run.data.metrics:
                group.values[m].append(run.data.metrics[m])
    keys = sorted({k for g in groups.values() for k in g.config})
    varying = [k for k in keys if len({g.config.get(k) for g in groups.values()}) > 1]
    found = list(groups.values())
    for group, label in zip(found, labels(varying, found), strict=True):
        group.label = label
    return varying, found


# short names of loss settings in labels
_SHORT = {"temperature": "T"}
LOSSES = "distill.losses."


def _number(value: str) -> str:
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


def _losses_label(config: dict[str, str], show_weights: bool) -> str:
    """``kd T=3 standardize``, ``dkd beta=2 T=4``: the distillation losses of a configuration; a
    plain ``ce`` term is left out, weights are shown when they differ between configurations."""
    terms: dict[int, dict[str, str]] = {}
    for key, value in config.items():
        if key.startswith(LOSSES):
            index, _, field_name = key[len(LOSSES) :].partition(".")
            if index.isdigit() and field_name:
                terms.setdefault(int(index), {})[field_name] = value
    parts = []
    for _, term in sorted(terms.items()):
        name, weight = term.pop("name", "?"), term.pop("weight", None)
        if name == "ce" and not term and not show_weights:
            continue
        words = [name]
        flags = [k for k, v in sorted(term.items()) if v in ("True", "true")]
        for k, v in sorted(term.items(), key=lambda kv: (kv[0] not in _SHORT, kv[0])):
            if k not in flags and v not in ("False", "false"):
                words.append(f"{_SHORT.get(k, k)}={_number(v)}")
        words += flags  # switches last: kd T=3 standardize
        if show_weights and weight is not None:
            words.insert(0, _number(weight))
        parts.append(" ".join(words))
    return " + ".join(parts) or "ce"


def _usual(key: str, groups: Sequence[Group]) -> str | None:
    """The value of ``key`` that more than half of the groups having it share, at least two of them; else
    None (with two groups neither value is the usual one)."""
    values = Counter(g.config[key] for g in groups if key in g.config)
    common, n = values.most_common(1)[0]
    return common if n >= 2 and 2 * n > sum(values.values()) else None


def labels(varying: Sequence[str], groups: Sequence[Group]) -> list[str]:
    """One readable label per group, from what differs between the groups and matters: the distillation
    losses in words when they differ (``kd T=3``, ``kd T=2 standardize``, ``dkd beta=2 T=4``), each other
    differing param as ``key=value`` without its section (``exclude_classes=[3]``); a group's DVC
    experiment name when no param sets it apart; "all runs" for a single group. A param that most groups
    leave at one value is named only on the groups that change it (``batch_size=64`` where every other
    group has 128)."""
    loss_keys = [k for k in varying if k.startswith(LOSSES)]
    show_weights = any(k.endswith(".weight") for k in loss_keys)
    usual = {k: v for k in varying if not k.startswith(LOSSES) and (v := _usual(k, groups))}
    out = []
    for g in groups:
        parts = [_losses_label(g.config, show_weights)] if loss_keys else []
        for k in varying:
            if k.startswith(LOSSES) or k not in g.config or g.config[k] == usual.get(k):
                continue
            parts.append(f"{k.split('.', 1)[-1]}={g.config[k]}")
        if not parts and len(g.experiments) == 1 and len(groups) > 1:
            parts.append(next(iter(g.experiments)))
        out.append(", ".join(parts) or ("all runs" if len(groups) == 1 else "default"))
    return out


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
    """One row per configuration, named by its label, then mean +- std of each metric over its seeds."""
    head = ["configuration", "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [g.label, f"{len(g.seeds)} ({', '.join(g.seeds)})", *(cell(m, g.values[m]) for m in metrics)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def settings(varying: Sequence[str], groups: Sequence[Group]) -> str:
    """What each label stands for: the differing params of each configuration, in full."""
    if not varying:
        return ""
    lines = []
    for g in groups:
        sets = ", ".join(f"`{k}={g.config[k]}`" for k in varying if k in g.config) or "none of them"
        lines.append(f"- **{g.label}**: {sets}")
    return "\n".join(lines)


def display_uri(uri: str, root: Path | None = None) -> str:
    """``uri`` with a local store's path relative to ``root`` (the working directory) when it lies
    under it: a committed report names the store as any clone of the repository has it."""
    root = (root or Path.cwd()).resolve()
    for scheme in ("sqlite:///", "file://"):
        if uri.startswith(scheme):
            path = Path(uri[len(scheme) :])
            if path.is_absolute() and path.resolve().is_relative_to(root):
                return scheme + str(path.resolve().relative_to(root))
    return uri


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


def figure(groups: Sequence[Group], path: Path) -> Path:
    """Per configuration (one row each, by its label): the teacher's, the student alone's and the
    distilled student's test accuracy, the gain over the student alone in points and the share of the
    teacher-student gap closed, each mean +- std over seeds. The legend sits below the plots."""
    import matplotlib.pyplot as plt

    fig = draw(groups)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw(groups: Sequence[Group]) -> Any:
    """The figure of :func:`figure` (a matplotlib Figure, not yet saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    def stats(g: Group, key: str, scale: float = 1.0) -> tuple[float, float]:
        v = [x * scale for x in g.values.get(key, [])]
        if not v:
            return float("nan"), 0.0
        return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0

    # long labels wrap over lines, so the plots keep their width
    names = [textwrap.fill(f"{g.label} ({len(g.seeds)} seeds)", 34, break_on_hyphens=False) for g in groups]
    rows = 0.3 * len(groups) + 0.16 * sum(n.count("\n") for n in names)
    legend_in, axes_in = 0.55, max(rows, 0.9) + 0.7  # inches: legend strip, plots with their x labels
    height = legend_in + axes_in
    ys = list(range(len(groups)))
    fig, (acc_ax, gain_ax, gap_ax) = plt.subplots(
        1, 3, figsize=(14, height), sharey=True, gridspec_kw={"width_ratios": [3, 2, 2]}
    )
    for key, name, marker in (
        ("teacher.accuracy", "teacher", "s"),
        ("student_alone.accuracy", "student alone", "o"),
        ("student.accuracy", "distilled student", "D"),
    ):
        means, stds = zip(*(stats(g, key) for g in groups), strict=True)
        acc_ax.errorbar(means, ys, xerr=stds, fmt=marker, capsize=3, label=name)
    acc_ax.set_xlabel("test accuracy (mean +- std over seeds)")
    for ax, key, scale, colour, unit in (
        (gain_ax, "distill.gain", 100.0, "tab:green", "gain over the student alone (points)"),
        (gap_ax, "distill.gap_closed", 100.0, "tab:purple", "teacher-student gap closed (%)"),
    ):
        means, stds = zip(*(stats(g, key, scale) for g in groups), strict=True)
        ax.barh(ys, means, xerr=stds, capsize=3, color=colour)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(unit)
    acc_ax.set_yticks(ys, names, fontsize=8)
    acc_ax.invert_yaxis()
    for ax in (acc_ax, gain_ax, gap_ax):
        ax.grid(axis="x", alpha=0.3)
    # below the plots, outside them: it covers no point or bar
    fig.legend(*acc_ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    return fig


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


def finished_evaluate_runs(
    tracking_uri: str, experiment: str, since: str | None = None, stage: str = "evaluate"
) -> list[Any]:
    """The finished runs of ``stage`` (``evaluate``: one per pipeline) in ``experiment`` (several:
    comma-separated names), started at or after ``since`` (``YYYY-MM-DD HH:MM``, local time) when given."""
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
    if "'" in stage:
        raise DistillopsError(f"--stage {stage!r}: a stage name has no quotes")
    query = f"tags.`distillops.stage` = '{stage}' and attributes.status = 'FINISHED'"
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
    stage = getattr(args, "stage", "evaluate")
    runs = finished_evaluate_runs(uri, experiment, args.since, stage)
    if not runs:
        raise DistillopsError(f"experiment '{experiment}' in {uri} has no finished {stage} run yet")
    varying, groups = group_runs(runs, metrics)
    heading = (
        f"{len(runs)} {stage} runs in '{experiment}' ({display_uri(uri)}), {len(groups)} configuration(s)"
    )
    table = markdown(varying, groups, metrics)
    legend = settings(varying, groups)
    print(f"{heading}\n\n{table}")
    out = Path(args.out)
    md = out.with_suffix(".md")
    png = figure(groups, out.with_suffix(".png"))
    legend_text = (
        f"\n\nWhat each configuration sets (the params that differ between them):\n\n{legend}"
        if legend
        else ""
    )
    write_text(
        md,
        f"# Results over seeds\n\n`distillops report` on {time.strftime('%Y-%m-%d %H:%M')}: {heading}. Mean +- "
        f"std over seeds of each metric; one row per configuration, labelled by what sets it apart."
        f"\n\n{table}{legend_text}\n\n![accuracy, gain and gap closed per configuration]({png.name})\n",
    )
    print(f"\nwrote {md} and {png}")
    if not args.no_log:
        run_id = log_report(uri, experiment.split(",")[0].strip(), [md, png], len(runs))
        print(f"logged to MLflow run {run_id} (experiment '{experiment}', artifacts under report/)")
    return 0
