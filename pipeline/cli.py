"""The ``distillops`` command.

distillops plugins list [--json | --markdown]   every plugin: group, name, distribution==version, status,
                                   summary (--markdown: a table with each plugin's parameters and defaults);
                                   described from a cache (~/.cache/distillops, $DISTILLOPS_CACHE_DIR)
                                   so that plugins that loaded before are not imported again
distillops plugins check           import every plugin and run the contract checks on it
distillops summary                 the last run's results and where its outputs are (from paths.metrics)
distillops report [--metric M ...]   mean +- std over seeds per configuration (MLflow): table + figure
distillops predict MODEL.onnx IMAGES.npy   classify images with ONNX Runtime alone
distillops server start | add-user | grant   a team's MLflow server on PostgreSQL with basic auth
distillops sweep SPACE.yaml --study NAME     Optuna search on the validation split, across workers
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from pipeline import registry
from pipeline.errors import DistillopsError


def plugin_rows(
    load: bool = True, cache: bool = True, distribution: str | None = None
) -> list[dict[str, Any]]:
    """One row per discovered plugin; ``load`` imports each to report its status and summary.

    With ``cache``, a plugin that loaded before (same distribution version, entry point and module file:
    see :mod:`pipeline.plugin_catalog`) is described from the cache without importing it; a broken one
    is always imported afresh. ``distribution``: only that distribution's plugins (none of the others
    is loaded).
    """
    catalog = None
    if load and cache:
        from pipeline.plugin_catalog import Catalog

        catalog = Catalog()
    rows = []
    for group in registry.GROUPS:
        for name, info in registry.find(group).items():
            if distribution is not None and info.distribution != distribution:
                continue
            row = {
                "group": group,
                "name": name,
                "distribution": info.provenance,
                "entry_point": info.value,
                "status": "ok",
                "summary": "",
            }
            if info.conflicts:
                row["status"] = "conflict: also offered by " + ", ".join(info.conflicts)
            elif load:
                described = catalog.get(info) if catalog is not None else None
                if described is None:
                    try:
                        described = describe(info.load())
                    except DistillopsError as exc:
                        # never cached: its dependency may be installed by the next listing
                        row["status"] = f"broken: {exc}"
                    else:
                        if catalog is not None:
                            catalog.put(info, described)
                if described is not None:
                    row["summary"] = described["summary"]
                    row["parameters"] = described["parameters"]
                    row["keywords"] = list(described["parameters"])
            rows.append(row)
    if catalog is not None:
        catalog.save()
    return rows


def describe(factory: Any) -> dict[str, Any]:
    """What the listing shows of a loaded factory: its summary and its parameters with defaults."""
    doc = inspect.getdoc(factory) or ""
    return {
        "summary": " ".join(doc.split("\n\n")[0].split()),  # first paragraph
        "parameters": _parameters(factory),
    }


def _parameters(factory: Any) -> dict[str, str]:
    """Keyword -> default (as written in params.yaml) for a factory; the fixed model arguments left out."""
    out = {}
    for name, param in inspect.signature(factory).parameters.items():
        if name in registry.MODEL_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default
        if default is param.empty:
            out[name] = "(required)"
        else:
            out[name] = json.dumps(list(default) if isinstance(default, tuple) else default)
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The plugin table of the README: group, name, parameters with defaults, summary."""
    lines = ["| group | name | parameters (defaults) | what it does |", "|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"`{k}={v}`" for k, v in r.get("parameters", {}).items()) or "none"
        summary = r["summary"] if r["status"] == "ok" else r["status"]
        lines.append(f"| {r['group']} | `{r['name']}` | {params} | {summary.replace('|', '/')} |")
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_plugins_list(args: argparse.Namespace) -> int:
    rows = plugin_rows(distribution=args.distribution or None)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.markdown:
        print(markdown_table(rows))
    else:
        print(_table(rows, ["group", "name", "distribution", "status", "summary"]))
    return 0


def cmd_plugins_check(_args: argparse.Namespace) -> int:
    from pipeline.plugin_checks import check_plugin

    failures = 0
    for row in plugin_rows(cache=False):  # the checks import every plugin anyway: no cached status
        if row["status"] != "ok":
            print(f"FAIL {row['group']}/{row['name']} ({row['distribution']}): {row['status']}")
            failures += 1
            continue
        info = registry.find(row["group"])[row["name"]]
        problems = check_plugin(info)
        status = "ok" if not problems else "FAIL"
        print(
            f"{status:4} {row['group']}/{row['name']} ({row['distribution']})"
            + "".join(f"\n       - {p}" for p in problems)
        )
        failures += bool(problems)
    print(f"{failures} plugin(s) failed" if failures else "all plugins pass the contract checks")
    return 1 if failures else 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline import report

    return report.main(args)


def cmd_summary(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline import report
    from pipeline.atomic import read_json
    from pipeline.params import load_params

    params = load_params(args.params)
    metrics = Path(params.paths.metrics)
    if not metrics.exists():
        raise DistillopsError(f"{metrics} does not exist; run the pipeline first (dvc repro)")
    print(report.summary(read_json(metrics), params))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline import predict

    return predict.main(args.args, prog="distillops predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="list and check installed plugins")
    psub = plugins.add_subparsers(dest="plugins_command", required=True)
    plist = psub.add_parser("list", help="list every plugin with its distribution and status")
    fmt = plist.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable output")
    fmt.add_argument("--markdown", action="store_true", help="a markdown table with parameters and defaults")
    plist.add_argument("--distribution", help="only the plugins of this distribution (e.g. distillops)")
    plist.set_defaults(func=cmd_plugins_list)
    pcheck = psub.add_parser("check", help="import every plugin and run the contract checks")
    pcheck.set_defaults(func=cmd_plugins_check)
    summ = sub.add_parser("summary", help="the last run's results and where its outputs are")
    summ.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    summ.set_defaults(func=cmd_summary)
    report = sub.add_parser("report", help="mean +- std over seeds of the final metrics, from MLflow")
    report.add_argument(
        "--metric", action="append", help="a metrics.json key (repeatable; default: the main ones)"
    )
    report.add_argument(
        "--experiment",
        help="MLflow experiment, or several comma-separated (default: MLFLOW_EXPERIMENT_NAME or params.yaml)",
    )
    report.add_argument("--since", help="only runs started at or after this local time: 'YYYY-MM-DD HH:MM'")
    report.add_argument(
        "--stage",
        default="evaluate",
        help="runs tagged distillops.stage=STAGE (default: evaluate, one per pipeline; benchmarks log "
        "their runs as 'benchmark')",
    )
    report.add_argument(
        "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or the repo's SQLite)"
    )
    report.add_argument(
        "--out", default="reports/methods", help="writes OUT.md and OUT.png (default: reports/methods)"
    )
    report.add_argument("--no-log", action="store_true", help="do not log the table and figure to MLflow")
    report.set_defaults(func=cmd_report)
    pred = sub.add_parser(  # its arguments are pipeline.predict's own (distillops predict -h lists them)
        "predict",
        help="classify images with an exported ONNX model (onnxruntime, numpy, Pillow)",
        add_help=False,
    )
    pred.add_argument("args", nargs=argparse.REMAINDER)
    pred.set_defaults(func=cmd_predict)
    from pipeline import server, sweep

    server.add_parser(sub)
    sweep.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:  # straight to pipeline.predict, whose options (and -h) are its own
        from pipeline import predict

        sys.exit(predict.main(argv[1:], prog="distillops predict"))
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except DistillopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
