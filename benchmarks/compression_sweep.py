"""Choose the default teacher and student on the validation split: train candidates through the stages'
own code (``StageTraining``) with params overrides, and record validation accuracy (the choice), test
accuracy (reported, never used to choose), training seconds and parameters.

    python benchmarks/compression_sweep.py teachers --seeds 0 --keep /tmp/teachers --jsonl out.jsonl
    python benchmarks/compression_sweep.py students --teacher /tmp/teachers/resnet8-e14-0 --seeds 0 1 2
    python benchmarks/compression_sweep.py latency          # ONNX Runtime batch-1 latency, every candidate
    python benchmarks/compression_sweep.py epoch-time --images 5000   # CPU seconds per training epoch
    python benchmarks/compression_sweep.py table --jsonl a.jsonl,b.jsonl   # the markdown tables

``teachers`` trains each teacher candidate (``--names`` picks some) with ``teacher.losses``; ``students``
trains each student candidate alone (``distill.baseline_losses``) and distilled (``distill.losses``) from
the teacher saved in ``--teacher``. Run after ``dvc repro`` (reads data/prepared). One JSON line per run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import FASHION_CLASSES, Split  # noqa: E402
from pipeline.loss_set import LossSet  # noqa: E402
from pipeline.modelio import count_parameters, load_model  # noqa: E402
from pipeline.params import Params, parse_params  # noqa: E402
from pipeline.selection import Selections  # noqa: E402
from pipeline.tracking import Tracker  # noqa: E402
from pipeline.variants import StageTraining, Variant  # noqa: E402

NUM_CLASSES = len(FASHION_CLASSES)  # the benchmarks run on Fashion-MNIST: 10 classes of grey 28x28
IN_CHANNELS = 1

# params overrides per candidate (dotted keys, as `dvc exp run -S` writes them)
TEACHERS: dict[str, dict[str, Any]] = {
    "resnet8-e10": {"teacher.epochs": 10},
    "resnet8-e12": {"teacher.epochs": 12},
    "resnet8-e15": {"teacher.epochs": 15},
    "resnet8-e20": {"teacher.epochs": 20},
    "resnet8w-e10": {"teacher.model": {"name": "resnet8", "widths": [24, 48, 96]}, "teacher.epochs": 10},
    "resnet8w-e15": {"teacher.model": {"name": "resnet8", "widths": [24, 48, 96]}, "teacher.epochs": 15},
    "lenet5x4-e15": {"teacher.model": {"name": "lenet5", "width": 4, "hidden": [256]}, "teacher.epochs": 15},
    "lenet5x4-e20": {"teacher.model": {"name": "lenet5", "width": 4, "hidden": [256]}, "teacher.epochs": 20},
    "lenet5x4-e25": {"teacher.model": {"name": "lenet5", "width": 4, "hidden": [256]}, "teacher.epochs": 25},
    "resnet20-e10": {"teacher.model": {"name": "resnet20"}, "teacher.epochs": 10},
}
STUDENTS: dict[str, dict[str, Any]] = {
    "lenet5": {"student.model": {"name": "lenet5"}},
    "lenet5-h64": {"student.model": {"name": "lenet5", "hidden": [64]}},
    "lenet5-h32": {"student.model": {"name": "lenet5", "hidden": [32]}},
    "lenet5-w1.5-h32": {"student.model": {"name": "lenet5", "width": 1.5, "hidden": [32]}},
    # assistant teachers (TAKD), between the student (15.7k) and the teacher (452k): 87.8k and 177k
    "lenet5-w2-h96": {"student.model": {"name": "lenet5", "width": 2, "hidden": [96]}},
    "lenet5-w3-h128": {"student.model": {"name": "lenet5", "width": 3, "hidden": [128]}},
    "lenet5-w0.5-h32": {"student.model": {"name": "lenet5", "width": 0.5, "hidden": [32]}},
    "lenet5-w0.5-h16": {"student.model": {"name": "lenet5", "width": 0.5, "hidden": [16]}},
    "lenet5-w0.75-h16": {"student.model": {"name": "lenet5", "width": 0.75, "hidden": [16]}},
    "mlp-8": {"student.model": {"name": "mlp", "hidden": [8]}},
    "mlp-16": {"student.model": {"name": "mlp", "hidden": [16]}},
    "mobilenet-w0.25": {"student.model": {"name": "mobilenet", "width": 0.25, "expansion": 2}},
}
# distillation settings tried on a chosen student: "<student>|<setting>" (the student alone is the
# student's own row, so `students --skip-alone` trains only the distilled one)
LOSSES: dict[str, list[dict[str, Any]]] = {
    "kd-T2": [{"name": "kd", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
    "kd-T4-w0.9": [{"name": "kd", "weight": 0.9, "temperature": 4.0}, {"name": "ce", "weight": 0.1}],
    "kd-T1-w0.9": [{"name": "kd", "weight": 0.9, "temperature": 1.0}, {"name": "ce", "weight": 0.1}],
    "kd-T3": [{"name": "kd", "weight": 0.5, "temperature": 3.0}, {"name": "ce", "weight": 0.5}],
    "kd-T4": [{"name": "kd", "weight": 0.5, "temperature": 4.0}, {"name": "ce", "weight": 0.5}],
    "kd-T2-w0.75": [{"name": "kd", "weight": 0.75, "temperature": 2.0}, {"name": "ce", "weight": 0.25}],
    "dist": [{"name": "dist", "weight": 1.0}, {"name": "ce", "weight": 1.0}],
}
for _student in list(STUDENTS):
    for _setting, _losses in LOSSES.items():
        STUDENTS[f"{_student}|{_setting}"] = {**STUDENTS[_student], "distill.losses": _losses}


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``--set distill.epochs=30`` pairs (YAML values), applied to every candidate of the run."""
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE (for example distill.epochs=30), got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def shown_name(name: str, sets: list[str]) -> str:
    """The candidate's name with the run's --set pairs on its model part, so a distillation setting's
    student alone (the part before '|') is the one trained with the same pairs."""
    if not sets:
        return name
    model, sep, setting = name.partition("|")
    return f"{model}[{','.join(sets)}]{sep}{setting}"


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any], **extra: Any) -> Params:
    raw = copy.deepcopy(raw)
    for key, value in {**overrides, **extra}.items():
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    return parse_params(raw)


def train(params: Params, stage: str, model_key: str, variant: Variant, out: Path) -> dict[str, Any]:
    cfg = params.teacher if stage == "teacher" else params.distill
    training = StageTraining.on_source_task(stage, params, Selections.resolve(params), cfg, model_key)
    with contextlib.redirect_stdout(io.StringIO()):
        fitted = training.run(Tracker(), [variant])[variant.name]
    vals = [row["val_accuracy"] for row in fitted.history]
    return {
        "val_accuracy": vals[-1],
        "best_val_accuracy": max(vals),
        "test_accuracy": fitted.test_accuracy,
        "seconds": round(fitted.seconds, 1),
        "parameters": count_parameters(fitted.model),
        "device": str(training.runtime.device),
    }


def run_teachers(raw: dict[str, Any], args: argparse.Namespace, emit: Any) -> None:
    for name in args.names or TEACHERS:
        for seed in args.seeds:
            keep = Path(args.keep or "sweep-teachers") / f"{name}-{seed}"
            params = with_overrides(
                raw,
                {**TEACHERS[name], **parse_sets(args.set)},
                seed=seed,
                **{"paths.teacher": str(keep), "paths.checkpoints": args.tmp},
            )
            losses = LossSet.build(Selections.resolve(params).losses("teacher.losses"), "teacher")
            emit(
                {
                    "phase": "teachers",
                    "name": shown_name(name, args.set),
                    "seed": seed,
                    **train(params, "teacher", "teacher.model", Variant("teacher", losses), keep),
                }
            )


def run_students(raw: dict[str, Any], args: argparse.Namespace, emit: Any) -> None:
    for name in args.names or STUDENTS:
        for seed in args.seeds:
            pairs = [("student_alone", "distill.baseline_losses"), ("student", "distill.losses")]
            if args.skip_alone:
                pairs = pairs[1:]
            if args.skip_distilled:
                pairs = pairs[:1]
            for variant, key in pairs:
                out = Path(args.keep or args.tmp) / f"{name}-{seed}-{variant}"
                params = with_overrides(
                    raw,
                    {**STUDENTS[name], **parse_sets(args.set)},
                    seed=seed,
                    **{f"paths.{variant}": str(out), "paths.checkpoints": args.tmp},
                )
                plugins = Selections.resolve(params)
                losses = LossSet.build(plugins.losses(key), "distill")
                teacher = None
                if losses.needs_teacher:
                    teacher, _ = load_model(
                        Path(args.teacher.format(seed=seed)), "cuda" if torch.cuda.is_available() else "cpu"
                    )
                emit(
                    {
                        "phase": "students",
                        "name": shown_name(name, args.set),
                        "variant": variant,
                        "seed": seed,
                        **train(
                            params, "distill", "student.model", Variant(variant, losses, teacher=teacher), out
                        ),
                    }
                )


def run_latency(raw: dict[str, Any], args: argparse.Namespace, emit: Any) -> None:
    """Median ONNX Runtime batch-1 latency, measured as evaluate does (untrained weights: same graph)."""
    from pipeline.evaluate import onnx_latency
    from pipeline.onnx_model import export_onnx, ort_session

    for table, key in ((TEACHERS, "teacher.model"), (STUDENTS, "student.model")):
        for name in [n for n in args.names if n in table] if args.names else table:
            params = with_overrides(raw, table[name])
            model = Selections.resolve(params).model(key).build_model(NUM_CLASSES, IN_CHANNELS).eval()
            with tempfile.TemporaryDirectory() as tmp:
                example = torch.zeros(1, IN_CHANNELS, 28, 28)
                path = export_onnx(model, Path(tmp) / "m.onnx", example, params.export.opset)
                lat = onnx_latency(ort_session(path), 1, params.evaluate.latency_warmup, 2000)
            emit({"phase": "latency", "name": name, "parameters": count_parameters(model), **lat})


def run_epoch_time(raw: dict[str, Any], args: argparse.Namespace, emit: Any) -> None:
    """Seconds of one training epoch on ``--images`` images, scaled to the whole training split."""
    for table, stage, key, variant in (
        (TEACHERS, "teacher", "teacher.model", "teacher"),
        (STUDENTS, "distill", "student.model", "student_alone"),
    ):
        for name in [n for n in args.names if n in table] if args.names else table:
            params = with_overrides(
                raw,
                table[name],
                **{
                    f"{stage}.epochs": 1,
                    f"paths.{variant}": f"{args.tmp}/{name}",
                    "paths.checkpoints": args.tmp,
                },
            )
            plugins = Selections.resolve(params)
            cfg = params.teacher if stage == "teacher" else params.distill
            training = StageTraining.on_source_task(stage, params, plugins, cfg, key)
            full = training.splits["train"]
            idx = np.random.default_rng(0).permutation(len(full))[: args.images]
            training.splits = {**training.splits, "train": Split(full.x[idx], full.y[idx])}
            loss_key = "teacher.losses" if stage == "teacher" else "distill.baseline_losses"
            losses = LossSet.build(plugins.losses(loss_key), stage)
            with contextlib.redirect_stdout(io.StringIO()):
                fitted = training.run(Tracker(), [Variant(variant, losses)])[variant]
            per_epoch = fitted.seconds * len(full) / len(idx)
            emit({"phase": "epoch-time", "name": name, "seconds_per_epoch": round(per_epoch, 1)})


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: teachers (validation, test, seconds), latencies, and students alone vs distilled with the
    per-seed gain, each mean +- std over the seeds found."""
    from pipeline.report import mean_std

    def rows(phase: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in records:
            if r["phase"] == phase:
                out.setdefault((r["name"], r.get("variant", "")), []).append(r)
        return out

    lines = [
        "## Teachers",
        "",
        "| candidate | parameters | seeds | validation | test | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for (name, _), rs in rows("teachers").items():
        lines.append(
            f"| {name} | {rs[0]['parameters']:,} | {len(rs)} | {mean_std([r['val_accuracy'] for r in rs])} | "
            f"{mean_std([r['test_accuracy'] for r in rs])} | {sum(r['seconds'] for r in rs) / len(rs):.0f} |"
        )
    lines += [
        "",
        "## ONNX Runtime batch-1 latency",
        "",
        "| model | parameters | median ms | p95 ms |",
        "|---|---|---|---|",
    ]
    for (name, _), rs in rows("latency").items():
        lines.append(f"| {name} | {rs[-1]['parameters']:,} | {rs[-1]['median']:.4f} | {rs[-1]['p95']:.4f} |")
    students = rows("students")
    lines += [
        "",
        "## Students: alone vs distilled",
        "",
        "| candidate | parameters | seeds | alone val | distilled val | gain val (pt) | alone test | distilled test | gain test (pt) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(n for n, _ in students):
        base = name.split("|")[0]  # a distillation setting's student alone is its student's
        alone = {r["seed"]: r for r in students.get((base, "student_alone"), [])}
        kd = {r["seed"]: r for r in students.get((name, "student"), [])}
        seeds = sorted(set(alone) & set(kd))
        if not seeds:
            continue

        cells = []
        for key in ("val_accuracy", "test_accuracy"):
            cells += [
                mean_std([alone[s][key] for s in seeds]),
                mean_std([kd[s][key] for s in seeds]),
                mean_std([(kd[s][key] - alone[s][key]) * 100 for s in seeds], digits=2, signed=True),
            ]
        shown = name.replace("|", " with ")  # a pipe would split the markdown cell
        lines.append(
            f"| {shown} | {kd[seeds[0]]['parameters']:,} | {len(seeds)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=["teachers", "students", "latency", "epoch-time", "table"])
    parser.add_argument("--names", nargs="*")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--teacher", help="a trained teacher's folder (students phase); {seed} is replaced by each seed"
    )
    parser.add_argument(
        "--keep",
        help="where the teachers phase saves models (default sweep-teachers); the students phase keeps its "
        "models there only when given (a distilled model may then teach, as an assistant teacher)",
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--skip-alone", action="store_true", help="students: train the distilled one only")
    parser.add_argument(
        "--skip-distilled", action="store_true", help="students: train the student alone only"
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--jsonl", default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="params override for every candidate"
    )
    args = parser.parse_args()
    if args.phase == "table":  # --jsonl is read, not written
        print(
            table(
                [json.loads(line) for f in args.jsonl.split(",") for line in Path(f).read_text().splitlines()]
            )
        )
        return
    raw = yaml.safe_load(Path(args.params).read_text())
    raw["runtime"]["progress"] = False
    out = open(args.jsonl, "a") if args.jsonl else None  # noqa: SIM115

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        t0 = time.perf_counter()
        {
            "teachers": run_teachers,
            "students": run_students,
            "latency": run_latency,
            "epoch-time": run_epoch_time,
        }[args.phase](raw, args, emit)
        print(f"# {args.phase}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
