"""``distillops sweep``: an Optuna search over params, each trial a real pipeline run, across workers.

    distillops sweep SPACE.yaml --study NAME --trials N [--storage URI] [--target STAGE]

Any number of workers (processes, or machines with a clone of the repository) run the same command; they
share the Optuna study in ``--storage`` (``DISTILLOPS_SWEEP_STORAGE``; PostgreSQL for a team, a SQLite file
for one machine) and stop once the study has N trials. Each trial is ``dvc exp run --temp`` with the
trial's ``-S`` overrides: a DVC experiment named ``<study>-t<number>`` whose unchanged stages (prepare,
the teacher) come from DVC's run cache, and whose MLflow parent run carries the trial's number and study
(``distillops.sweep.*`` tags). The objective is a **validation** metric of the distilled student (the
test split never steers the search), optionally less a latency penalty measured by evaluate. At the end
the best trial's overrides are printed and written as a params patch (``--best-out``), ready for
``dvc exp apply <name>`` or ``dvc exp run -S ...``.

SPACE.yaml::

    objective:
      metric: student.val_accuracy      # MODEL.COLUMN of the model's history.csv, at its last epoch
      latency_penalty: 0.0              # minus this times student.latency_ms.onnx_b1 (runs evaluate)
    fixed:                              # -S overrides every trial gets (e.g. fewer epochs)
      distill.epochs: 10
    params:                             # the search space, by params.yaml key
      distill.losses.0.temperature: {float: [1.0, 8.0], log: true}
      distill.losses.0.weight: {float: [0.1, 0.9]}
      distill.batch_size: {int: [64, 256], step: 64}
      student.model.name: {choice: [lenet5, mlp]}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import DistillopsError
from pipeline.layout import MODELS
from pipeline.tracking import redact

STORAGE_ENV = "DISTILLOPS_SWEEP_STORAGE"
STUDY_ENV = "DISTILLOPS_SWEEP_STUDY"  # read by pipeline.tracking: the parent run's sweep tags
TRIAL_ENV = "DISTILLOPS_SWEEP_TRIAL"
LATENCY_METRIC = "student.latency_ms.onnx_b1"


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_categorical(self.key, list(self.choices))


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    metric: str = "student.val_accuracy"
    latency_penalty: float = 0.0

    @property
    def target(self) -> str:
        """The last stage a trial needs: distill for a validation metric, evaluate for latency."""
        return "evaluate" if self.latency_penalty else "distill"


def load_space(path: Path) -> Space:
    """Read and check a search space file; every mistake names its key."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DistillopsError(f"{path}: cannot read the search space: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict) or not doc["params"]:
        raise DistillopsError(
            f"{path}: expected a mapping with 'params': {{KEY: {{float: [LOW, HIGH]}}, ...}}"
        )
    unknown = set(doc) - {"params", "fixed", "objective"}
    if unknown:
        raise DistillopsError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}; use params, fixed, objective"
        )
    dims = []
    for key, spec in doc["params"].items():
        where = f"{path}: params.{key}"
        if not isinstance(spec, dict):
            raise DistillopsError(
                f"{where}: expected {{float: [LOW, HIGH]}}, {{int: [LOW, HIGH]}} or {{choice: [...]}}"
            )
        kinds = [k for k in ("float", "int", "choice") if k in spec]
        if len(kinds) != 1:
            raise DistillopsError(f"{where}: give exactly one of float, int, choice")
        kind, values = kinds[0], spec[kinds[0]]
        extra = set(spec) - {kind, "log", "step"}
        if extra:
            raise DistillopsError(
                f"{where}: unknown option(s) {', '.join(sorted(map(str, extra)))}; use log, step"
            )
        if kind == "choice":
            if not isinstance(values, list) or not values:
                raise DistillopsError(f"{where}.choice: expected a non-empty list")
            dims.append(Dimension(str(key), kind, choices=tuple(values)))
            continue
        ok = isinstance(values, list) and len(values) == 2
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if not ok or values[0] >= values[1]:
            raise DistillopsError(
                f"{where}.{kind}: expected [LOW, HIGH] numbers with LOW < HIGH, got {values!r}"
            )
        if spec.get("log") and values[0] <= 0:
            raise DistillopsError(f"{where}: log: true needs LOW > 0")
        dims.append(Dimension(str(key), kind, values[0], values[1], bool(spec.get("log")), spec.get("step")))
    objective = doc.get("objective") or {}
    if not isinstance(objective, dict) or set(objective) - {"metric", "latency_penalty"}:
        raise DistillopsError(f"{path}: objective: expected {{metric: NAME, latency_penalty: NUMBER}}")
    metric = str(objective.get("metric", Space.metric))
    model, _, column = metric.partition(".")
    if model not in MODELS or not column:
        raise DistillopsError(
            f"{path}: objective.metric {metric!r}: expected MODEL.COLUMN of a model's history.csv, "
            f"MODEL one of {', '.join(MODELS)} (e.g. student.val_accuracy)"
        )
    if "test" in metric:
        raise DistillopsError(
            f"{path}: objective.metric {metric!r} is a test-split metric; a sweep chooses on validation "
            f"(e.g. student.val_accuracy) so the test split stays an unbiased estimate"
        )
    fixed = doc.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise DistillopsError(f"{path}: fixed: expected a mapping of params keys to values")
    return Space(tuple(dims), dict(fixed), metric, float(objective.get("latency_penalty", 0.0)))


def overrides(values: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments, values in YAML flow syntax (lists and mappings included)."""
    out = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        out.append(f"{key}={text.removesuffix('...').strip()}")
    return out


def _run_trial(
    study_name: str, number: int, values: dict[str, Any], space: Space, logs: Path, threads: int | None
) -> str:
    """Run one trial as a DVC experiment; its name. Raises ``RuntimeError`` when the run fails."""
    name = f"{study_name}-t{number}"
    cmd = ["dvc", "exp", "run", "--temp", "-n", name]
    for override in overrides({**space.fixed, **values}):
        cmd += ["-S", override]
    cmd.append(space.target)
    env = {**os.environ, STUDY_ENV: study_name, TRIAL_ENV: str(number)}
    if threads:  # several workers on one machine: each trial's PyTorch gets its share of the cores
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with log.open("w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"trial {number}: `dvc exp run` exited {code}; its output: {log}")
    return name


def _experiment_commit(name: str) -> str:
    """The commit ``dvc exp run -n NAME`` left (its ref is ``refs/exps/../../NAME``)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    found = [line.split()[0] for line in refs if line.endswith(f"/{name}")]
    if not found:
        raise RuntimeError(f"no DVC experiment named {name} (git refs/exps)")
    return found[0]


def _objective_of(name: str, number: int, space: Space) -> float:
    """The trial's objective, read from the experiment's own outputs: the model's ``history.csv`` (last
    epoch) and evaluate's metrics file. They are there whether its stages ran or DVC restored them from
    its run cache (a trial with the same params as an earlier run), when no stage run reaches MLflow."""
    import csv
    import io

    import dvc.api

    rev = _experiment_commit(name)
    params = yaml.safe_load(subprocess.run(["git", "show", f"{rev}:params.yaml"], capture_output=True,
                                           text=True, check=True).stdout)  # fmt: skip
    model, column = space.metric.split(".", 1)
    history = f"{params['paths'][model]}/history.csv"
    rows = list(csv.DictReader(io.StringIO(dvc.api.read(history, repo=".", rev=rev))))
    if not rows or column not in rows[-1]:
        raise RuntimeError(f"trial {number}: {history} of {name} has no column {column!r}")
    value = float(rows[-1][column])
    if space.latency_penalty:
        metrics = json.loads(dvc.api.read(params["paths"]["metrics"], repo=".", rev=rev))
        value -= space.latency_penalty * float(metrics[LATENCY_METRIC])
    _log_objective(name, number, value)
    return value


def _log_objective(name: str, number: int, value: float) -> None:
    """The objective on the trial's parent run, when its stages ran (a fully cached trial has none)."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import STAGE_TAG, SWEEP_TRIAL_TAG

    client = MlflowClient()
    flt = f"tags.`{STAGE_TAG}` = 'pipeline' and attributes.run_name = '{name}' and tags.`{SWEEP_TRIAL_TAG}` = '{number}'"
    for parent in client.search_runs([e.experiment_id for e in client.search_experiments()], flt):
        client.log_metric(parent.info.run_id, "sweep.objective", value)


def _open_study(study_name: str, storage: str, seed: int | None, attempts: int = 5) -> Any:
    """Create or load the study. Workers started together race to create Optuna's tables (and the
    study) in a fresh storage; the loser sees a duplicate-key error and, retried, finds them made."""
    import optuna

    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=study_name,
                storage=storage,
                direction="maximize",
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=seed),
            )
        except Exception as exc:
            if attempt == attempts - 1 or not type(exc).__module__.startswith(("sqlalchemy", "optuna")):
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def run_worker(
    space: Space,
    study_name: str,
    trials: int,
    storage: str,
    logs: Path,
    seed: int | None,
    threads: int | None = None,
) -> Any:
    """Run trials until the study holds ``trials`` of them; the study."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(study_name, storage, seed)
    worker = f"{os.uname().nodename}:{os.getpid()}"
    while True:
        if len(study.get_trials(deepcopy=False)) >= trials:
            break
        trial = study.ask()
        if trial.number >= trials:  # another worker asked for the last one at the same moment
            study.tell(trial, state=TrialState.PRUNED)
            break
        values = {d.key: d.suggest(trial) for d in space.dimensions}
        trial.set_user_attr("worker", worker)
        t0 = time.perf_counter()
        print(
            f"[sweep {study_name}] trial {trial.number} on {worker}: {' '.join(overrides(values))}",
            flush=True,
        )
        try:
            name = _run_trial(study_name, trial.number, values, space, logs, threads)
            trial.set_user_attr("dvc_experiment", name)
            value = _objective_of(name, trial.number, space)
        except RuntimeError as exc:
            print(f"[sweep {study_name}] trial {trial.number} failed: {exc}", flush=True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        study.tell(trial, value)
        print(
            f"[sweep {study_name}] trial {trial.number}: {space.metric} objective {value:.4f} "
            f"in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    return study


def best_patch(study: Any, space: Space) -> dict[str, Any]:
    best = study.best_trial
    return {
        "study": study.study_name,
        "trial": best.number,
        "objective": best.value,
        "metric": space.metric,
        "dvc_experiment": best.user_attrs.get("dvc_experiment"),
        "overrides": {**space.fixed, **best.params},
    }


def cmd_sweep(args: argparse.Namespace) -> int:
    space = load_space(Path(args.space))
    storage = args.storage or os.environ.get(STORAGE_ENV)
    if not storage:
        Path("sweeps").mkdir(exist_ok=True)
        storage = f"sqlite:///{Path('sweeps/optuna.db').resolve()}"
    if args.trials < 1:
        raise DistillopsError(f"--trials {args.trials}: expected at least 1")
    try:
        study = run_worker(space, args.study, args.trials, storage, Path(args.logs), args.seed, args.threads)
    except Exception as exc:
        if type(exc).__module__.startswith(("sqlalchemy", "optuna", "psycopg")):
            raise DistillopsError(
                f"sweep storage {redact(storage)}: {str(exc).splitlines()[0][:300]}"
            ) from None
        raise
    done = [t for t in study.trials if t.value is not None]
    if not done:
        raise DistillopsError(f"study {args.study}: no trial completed; see the logs in {args.logs}")
    patch = best_patch(study, space)
    out = Path(args.best_out or f"sweeps/{args.study}-best.yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(patch, sort_keys=False))
    print(
        f"[sweep {args.study}] best of {len(done)} trials: trial {patch['trial']} "
        f"({patch['dvc_experiment']}), {space.metric} objective {patch['objective']:.4f}\n"
        f"  overrides: {json.dumps(patch['overrides'])}\n"
        f"  written to {out}; apply with: dvc exp apply {patch['dvc_experiment']}",
        flush=True,
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="Optuna search over params on the validation split, across workers")
    sweep.add_argument("space", help="the search space file (see `python -m pipeline.sweep --help`)")
    sweep.add_argument("--study", required=True, help="the study's name: workers with the same name share it")
    sweep.add_argument(
        "--trials", type=int, required=True, help="trials in the whole study, over all workers"
    )
    sweep.add_argument(
        "--storage",
        help=f"Optuna storage URI (default: ${STORAGE_ENV}, else sqlite:///sweeps/optuna.db): "
        "postgresql://... for workers on several machines",
    )
    sweep.add_argument(
        "--threads",
        type=int,
        help="PyTorch threads per trial (OMP_NUM_THREADS); with W workers on a machine of C cores use C/W: "
        "oversubscribed cores make every trial several times slower",
    )
    sweep.add_argument("--seed", type=int, help="the sampler's seed (reproducible with one worker)")
    sweep.add_argument("--logs", default="sweeps/logs", help="each trial's output (default: sweeps/logs)")
    sweep.add_argument("--best-out", help="the best trial's params patch (default: sweeps/STUDY-best.yaml)")
    sweep.set_defaults(func=cmd_sweep)


if __name__ == "__main__":
    print(__doc__)
    sys.exit(0)
