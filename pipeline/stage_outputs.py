"""The files one stage writes for another, read back into types: ``prepare``'s ``summary.json``, a
model's ``history.csv``, ``export``'s ``parity.json``. A reader names the file and the stage to rerun
when a file is missing or was written by an older version, instead of failing on a missing key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.atomic import read_json
from pipeline.data import DataFormat
from pipeline.errors import DataError
from pipeline.params import Params


@dataclass(frozen=True)
class TaskSummary:
    """What ``prepare`` recorded of one task (``source`` or ``target``)."""

    classes: tuple[str, ...]
    format: DataFormat
    converted_from: tuple[int, ...] | None = None  # [C, H, W] of its own images, when converted


@dataclass(frozen=True)
class PreparedSummary:
    source: TaskSummary
    target: TaskSummary
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def read(cls, params: Params) -> PreparedSummary:
        file = layout.prepared(params, layout.SUMMARY_FILE)
        if not file.exists():
            raise DataError(f"{file} does not exist; run the prepare stage first (dvc repro prepare).")
        raw = read_json(file)
        tasks = {}
        for task in ("source", "target"):
            if "format" not in raw.get(task, {}):
                raise DataError(
                    f"{file} has no data format for the {task} task (written by an older version); run the "
                    f"prepare stage again (dvc repro -f prepare)."
                )
            entry = raw[task]
            converted = entry.get("converted_from")
            tasks[task] = TaskSummary(
                tuple(entry["classes"]),
                DataFormat.from_json(entry["format"]),
                tuple(converted) if converted else None,
            )
        return cls(tasks["source"], tasks["target"], raw)

    def task(self, name: str) -> TaskSummary:
        return {"source": self.source, "target": self.target}[name]


def history_csv(history: Sequence[Mapping[str, float]]) -> str:
    """A model's per-epoch metrics as CSV (a column per metric, a row per epoch)."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)]
    for row in history:
        lines.append(",".join(_fmt(row.get(k, "")) for k in keys))
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_history(path: Path) -> list[dict[str, float]]:
    """:func:`history_csv` read back (empty cells left out)."""
    lines = path.read_text().strip().splitlines()
    keys = lines[0].split(",")
    return [
        {k: float(v) for k, v in zip(keys, line.split(","), strict=True) if v != ""} for line in lines[1:]
    ]


@dataclass(frozen=True)
class Parity:
    """``export``'s report: what it exported, how each ONNX model agrees with PyTorch, the MLflow logged
    model of each, and the student version it registered (absent: nothing registered)."""

    raw: Mapping[str, Any]

    @classmethod
    def read(cls, params: Params) -> Parity:
        file = parity_file(params)
        return cls(read_json(file) if file.is_file() else {})

    @property
    def logged_models(self) -> dict[str, str]:
        return dict(self.raw.get("logged_models", {}))

    @property
    def registered(self) -> tuple[str, str] | None:
        found = self.raw.get("registered")
        return (found["name"], str(found["version"])) if found else None


def parity_file(params: Params) -> Path:
    return layout.onnx_file(params, "student").parent / layout.PARITY_FILE
