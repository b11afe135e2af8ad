"""Which MLflow run produced a stage's outputs, kept with the outputs themselves.

A stage that finishes writes ``mlflow-run.json`` into each folder it outputs (the ``outs`` of its stage
in ``dvc.yaml``), so the record travels wherever DVC puts those outputs: the cache, the run cache, a
``dvc exp`` checkout, a remote. When a later stage runs in another pipeline execution (DVC skipped the
stages before it because nothing changed), it reads the records in the folders it depends on and links
its execution's parent run to the runs that really produced them: nothing is logged twice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.atomic import write_json
from pipeline.params import Params, flatten

FILE = "mlflow-run.json"
_VAR = re.compile(r"\$\{([\w.]+)\}")


def stage_folders(stage: str, params: Params, kind: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[Path]:
    """The folders among ``stage``'s ``kind`` (``outs`` or ``deps``) in ``dvc.yaml``, with ``${...}``
    resolved from the params; an empty list when there is no ``dvc.yaml`` or no such stage."""
    try:
        spec = yaml.safe_load(dvc_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    entries = ((spec.get("stages") or {}).get(stage) or {}).get(kind) or []
    values = flatten(params)
    folders = []
    for entry in entries:
        raw = entry if isinstance(entry, str) else next(iter(entry))
        path = Path(_VAR.sub(lambda m: str(values.get(m.group(1), m.group(0))), raw))
        if "${" not in str(path) and path.is_dir():
            folders.append(path)
    return folders


def record(stage: str, params: Params, produced_by: dict[str, Any]) -> list[Path]:
    """Write ``produced_by`` (run id, experiment, execution...) into each output folder of ``stage``."""
    written = []
    for folder in stage_folders(stage, params, "outs"):
        write_json(folder / FILE, {"stage": stage, **produced_by})
        written.append(folder / FILE)
    return written


def upstream(stage: str, params: Params) -> dict[str, dict[str, Any]]:
    """The records found in the folders ``stage`` depends on, by the stage that wrote them."""
    found: dict[str, dict[str, Any]] = {}
    for folder in stage_folders(stage, params, "deps"):
        try:
            rec = json.loads((folder / FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("stage") and rec.get("run_id"):
            found.setdefault(rec["stage"], rec)
    return found
