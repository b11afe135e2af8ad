"""MLflow tracking for the stages.

* Store: ``MLFLOW_TRACKING_URI`` when set, else a SQLite file at the repository root, resolved to an
  absolute path (from inside a ``dvc exp run --temp/--queue`` copy, which lives under
  ``<root>/.dvc/tmp/exps/``, the root is the folder above ``.dvc``), so every run of a repository lands
  in one store. Experiment: ``MLFLOW_EXPERIMENT_NAME`` when set, else ``mlflow.experiment`` in params.
* Grouping: the stages of one pipeline execution share one parent run, and each stage logs a child run
  tagged ``distillops.stage``. An execution is one ``dvc repro`` or ``dvc exp run`` (the nearest ``dvc``
  process above the stage; the parent is named after the DVC experiment when there is one), else one
  configuration (git commit + params file) for stages run by hand, or ``DISTILLOPS_PIPELINE_ID`` when
  set. The parent's status and end follow its stages: RUNNING while one runs, then the last one's
  status. Stages DVC skipped log nothing: the parent is tagged ``distillops.stage_run.<stage>`` with the
  run that produced their outputs (``pipeline.provenance``), and its description lists every stage.
* Status: an exception marks the stage's run FAILED, SIGTERM/SIGINT marks it KILLED, and runs that a
  killed process left RUNNING on this host are marked KILLED when the next stage starts.
* Distributed: only the process with ``RANK`` 0 (or no ``RANK``) talks to MLflow; the others get a
  tracker that does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import interrupts, provenance
from pipeline.errors import DistillopsError
from pipeline.params import Params, flatten

STAGE_TAG = "distillops.stage"
COMMIT_TAG = "distillops.git_commit"
DIRTY_TAG = "distillops.git_dirty"  # true when tracked code or params differ from the commit
CHANGED_TAG = "distillops.git_changed"  # those files, comma-separated
PIPELINE_TAG = "distillops.pipeline_key"
EXECUTION_TAG = "distillops.execution"
DVC_EXP_TAG = "distillops.dvc_experiment"
STAGE_RUN_TAG = "distillops.stage_run."  # + stage: on the parent, the run that produced that stage's outputs
SWEEP_STUDY_TAG = "distillops.sweep.study"  # a distillops sweep trial's study, on its parent and stage runs
SWEEP_TRIAL_TAG = "distillops.sweep.trial"  # and its number
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
STAGES = ("prepare", "teacher", "distill", "transfer", "export", "evaluate")
PARENT_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"  # the run's user (MlflowClient.create_run leaves it "unknown" otherwise)
VARIANT_TAG = "distillops.variant"
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def is_primary() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def repo_root(start: Path | None = None) -> Path:
    """The repository root, also when running inside a DVC experiment's temporary copy."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    if ".dvc" in parts:  # <root>/.dvc/tmp/exps/tmpXXXX
        return Path(*parts[: parts.index(".dvc")])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir() or (candidate / ".git").exists():
            return candidate
    return here


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / DB_NAME}"


def redact(uri: str) -> str:
    """A store's URI without any user:password in it (it is printed, tagged and written to model.json)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


@contextlib.contextmanager
def quick_http() -> Iterator[None]:
    """Inside it, an unreachable tracking server fails in seconds, not after MLflow's minutes of retries
    (outside, a stage keeps MLflow's retries, so a server restarting mid-stage costs no logs)."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def open_client(root: Path | None = None) -> Any:
    """A client of the tracking store, checked before any work: a store that cannot be reached, refuses
    the credentials or cannot be opened fails in seconds with a ``DistillopsError`` naming its URI.

    A SQLite store is created (schema and migrations) by the first process that opens it, under a file
    lock beside it: two stages started at once (``dvc queue start -j 2``) would otherwise both create the
    schema and leave it half-migrated."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    try:
        with _schema_lock(uri), quick_http():
            client = MlflowClient(uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)
            client.search_experiments(max_results=1)  # opens the tracking store (creates a fresh schema)
            client.search_registered_models(max_results=1)  # and the registry's
    except Exception as exc:
        raise DistillopsError(store_failure(uri, exc, starting=True)) from None
    return client


@contextlib.contextmanager
def _schema_lock(uri: str) -> Iterator[None]:
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=300):
        yield


def failure_in_store(exc: BaseException) -> str | None:
    """``store_failure``'s account of an exception raised while talking to the tracking store (a frame of
    MLflow in its traceback), else None."""
    tb, through_mlflow = exc.__traceback__, False
    while tb is not None:
        through_mlflow |= f"{os.sep}mlflow{os.sep}" in tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return store_failure(tracking_uri(), exc) if through_mlflow else None


def store_failure(uri: str, exc: BaseException, starting: bool = False) -> str | None:
    """A one-line account of a tracking store that failed: what happened and what to do. None when
    ``exc`` is not a store failure (and ``starting`` is false)."""
    import re

    # no user:password of any URI in the text (MLflow's messages repeat the URL they called)
    text = re.sub(r"(\w+://)[^/@\s]+@", r"\1", f"{type(exc).__name__}: {exc}")
    where = redact(uri)
    if " 401" in text or "not authenticated" in text.lower():
        return (
            f"tracking store {where} refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
            f"MLFLOW_TRACKING_PASSWORD to a user of that server"
        )
    if " 403" in text or "permission denied" in text.lower():
        return (
            f"tracking store {where} refused the request (HTTP 403): the user in MLFLOW_TRACKING_USERNAME "
            f"lacks the permission; ask the server's admin to grant it (distillops server grant)"
        )
    lowered = text.lower()
    down = any(
        s in lowered
        for s in (
            "connection refused",
            "max retries exceeded",
            "failed to establish",
            "name or service",
            "timed out",
            "connectionerror",
            "could not connect",
            "server closed the connection",
            "operationalerror",
            "connection reset",
            "remote end closed",
        )
    )
    if not (down or starting):
        return None
    summary = text.splitlines()[0][:300] if text else type(exc).__name__
    if starting:
        return (
            f"cannot use the MLflow tracking store {where}: {summary}. Check that the server is up and "
            f"MLFLOW_TRACKING_URI is right (unset it to use the SQLite file at the repository root)"
        )
    return (
        f"the MLflow tracking store {where} stopped answering ({summary}); the stage's trained outputs "
        f"and checkpoints are kept: rerun it once the store is back and training resumes from the checkpoint"
    )


def git_commit(cwd: Path | None = None) -> tuple[str, list[str]]:
    """(commit sha, the tracked files changed since it that can change results) or ("unknown", []) outside
    git. DVC's own bookkeeping (``dvc.lock``, ``*.dvc``) and the stages' outputs (``outs``, ``metrics``,
    ``plots`` in dvc.yaml, e.g. a metrics file kept in git) are left out: a pipeline run changes them, so
    counting them would mark every run of a fresh clone dirty."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "-z", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", []
    # -z: "XY path\0", and a rename's "R  new\0old\0"; the path is what the tree holds now
    entries = status.split("\0")
    changed, i = [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) > 3:
            changed.append(entry[3:])
            if entry[0] in "RC":
                i += 1
    outputs = stage_outputs(Path(cwd or Path.cwd()))
    return sha, sorted(f for f in changed if not _is_pipeline_output(f, outputs))


def stage_outputs(root: Path) -> list[str]:
    """Every ``outs``, ``metrics`` and ``plots`` path of ``root/dvc.yaml``, its ``${...}`` filled from
    ``root/params.yaml``; [] when either is missing or unreadable."""
    import re

    import yaml

    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
        values = yaml.safe_load((root / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return []

    def value(match: re.Match) -> str:
        node: Any = values
        for part in match.group(1).strip().split("."):
            node = node.get(part, "") if isinstance(node, dict) else ""
        return str(node)

    paths = []
    for stage in stages.values():
        for section in ("outs", "metrics", "plots"):
            for entry in (stage or {}).get(section) or []:
                for raw in entry if isinstance(entry, dict) else [entry]:
                    if isinstance(raw, str):
                        paths.append(re.sub(r"\$\{([^}]+)\}", value, raw).strip("/"))
    return [p for p in paths if p]


def _is_pipeline_output(path: str, outputs: list[str]) -> bool:
    return (
        Path(path).name == "dvc.lock"
        or path.endswith(".dvc")
        or any(path == out or path.startswith(out + "/") for out in outputs)
    )


def pipeline_key(params_text: str, commit: str) -> str:
    """The configuration's key: ``DISTILLOPS_PIPELINE_ID`` when set, else a hash of commit and params."""
    explicit = os.environ.get("DISTILLOPS_PIPELINE_ID")
    if explicit:
        return explicit
    return hashlib.sha256(f"{commit}\n{params_text}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Execution:
    """One run of the pipeline: the key its stages share, the parent run's name, the DVC experiment."""

    key: str
    name: str
    dvc_experiment: str | None = None


def _dvc_ancestor() -> tuple[int, float] | None:
    """(pid, start time) of the nearest ``dvc`` process above this one (``dvc repro``, or the process that
    runs one ``dvc exp run`` experiment), or None."""
    try:
        import psutil

        for proc in psutil.Process().parents():
            argv = proc.cmdline()
            head = [Path(a).name for a in argv[:3]]
            if "dvc" in head or argv[1:3] == ["-m", "dvc"]:
                return proc.pid, proc.create_time()
    except Exception:  # no psutil, or a process that vanished or cannot be read: no execution known
        return None
    return None


def current_execution(params_text: str, commit: str) -> Execution:
    experiment = os.environ.get("DVC_EXP_NAME") or None
    config = pipeline_key(params_text, commit)
    if os.environ.get("DISTILLOPS_PIPELINE_ID"):
        return Execution(config, experiment or f"pipeline-{config[:8]}", experiment)
    dvc = _dvc_ancestor()
    if dvc is None:  # stages run by hand: one parent per configuration
        return Execution(config, experiment or f"pipeline-{config[:8]}", experiment)
    key = hashlib.sha256(f"{socket.gethostname()}:{dvc[0]}:{dvc[1]}".encode()).hexdigest()[:16]
    return Execution(key, experiment or f"repro-{commit[:7]}", experiment)


def user() -> str:
    """Who runs it, as the MLflow UI's User column shows: the tracking server's user when there is
    one, else the login name."""
    import getpass

    try:
        return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


def sweep_tags() -> dict[str, str]:
    """A ``distillops sweep`` trial's study and number (set in the environment of its ``dvc exp run``)."""
    study, trial = os.environ.get("DISTILLOPS_SWEEP_STUDY"), os.environ.get("DISTILLOPS_SWEEP_TRIAL")
    return {SWEEP_STUDY_TAG: study, SWEEP_TRIAL_TAG: trial or ""} if study else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Tracker:
    """A thin handle on the active stage run; every method is a no-op off rank 0."""

    def __init__(
        self,
        client: Any = None,
        run_id: str | None = None,
        parent_id: str | None = None,
        experiment_id: str | None = None,
        base_tags: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.parent_id = parent_id
        self.experiment_id = experiment_id
        self.base_tags = dict(base_tags or {})

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int | None = None,
        parent: bool = False,
        model_id: str | None = None,
    ) -> None:
        """Metrics of this run (and of the parent run with ``parent``); with ``model_id``, they are also the
        metrics of that logged model, shown on its page."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0, model_id=model_id) for k, v in metrics.items()]
        for run_id in [self.run_id] + ([self.parent_id] if parent and self.parent_id else []):
            self.client.log_batch(run_id, metrics=batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, name: str, digest: str, source: str | Path, context: str) -> None:
        """An MLflow dataset input of this run (shown in the run list's Dataset column and on the run's
        page): ``name``, a ``digest`` of its contents, where it is (``source``), and how the run used it
        (``context``: training, validation, test)."""
        if not self.active:
            return
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        dataset = MetaDataset(LocalArtifactDatasetSource(str(source)), name=name, digest=digest)
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        self.client.log_inputs(self.run_id, datasets=[entity])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active and Path(path).exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, figure: Any, name: str, parent: bool = False) -> None:
        """A matplotlib figure as an image artifact of this run (and of the parent run with ``parent``)."""
        if self.active:
            for run_id in [self.run_id] + ([self.parent_id] if parent and self.parent_id else []):
                self.client.log_figure(run_id, figure, name)

    @contextlib.contextmanager
    def variant(self, name: str, tags: Mapping[str, str] | None = None) -> Iterator[Tracker]:
        """A run nested under this stage's run for one of the models a stage trains (e.g. the distilled
        student and the student trained alone), so they can be compared side by side in the UI."""
        if not self.active:
            yield Tracker()
            return
        run_tags = {**self.base_tags, PARENT_TAG: self.run_id, VARIANT_TAG: name, **(tags or {})}
        run_tags.pop(STAGE_TAG, None)  # one run per stage carries the stage tag
        run = self.client.create_run(self.experiment_id, run_name=name, tags=run_tags)
        with _ended(self.client, run.info.run_id):
            yield Tracker(self.client, run.info.run_id, self.run_id, self.experiment_id, self.base_tags)


@contextlib.contextmanager
def _ended(client: Any, run_id: str) -> Iterator[None]:
    """Terminate a run as FINISHED, KILLED (signal) or FAILED (any other exception)."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except interrupts.StageInterrupted:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(run_id, status=status)


def _experiment_id(client: Any, name: str, root: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if "MLFLOW_TRACKING_URI" not in os.environ:
        location = (root / ARTIFACTS_DIR).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another stage process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def mark_stale_runs_killed(client: Any, experiment_id: str) -> list[str]:
    """Runs left RUNNING by a process of this host that no longer exists become KILLED."""
    host = socket.gethostname()
    stale = []
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500)
    for run in runs:
        tags = run.data.tags
        pid = tags.get("distillops.pid")
        if tags.get("distillops.host") == host and pid and pid.isdigit() and not _pid_alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            stale.append(run.info.run_id)
    return stale


def _parent_run(
    client: Any, experiment_id: str, execution: Execution, config: str, commit: str, params: Params
) -> str:
    """The execution's parent run, created (with the params) by its first stage, marked RUNNING."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{EXECUTION_TAG}` = '{execution.key}' and tags.`{STAGE_TAG}` = 'pipeline'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if runs:
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    tags = {EXECUTION_TAG: execution.key, PIPELINE_TAG: config, STAGE_TAG: "pipeline", COMMIT_TAG: commit}
    tags.update(sweep_tags(), **{USER_TAG: user()})
    if execution.dvc_experiment:
        tags[DVC_EXP_TAG] = execution.dvc_experiment
    run = client.create_run(experiment_id, run_name=execution.name, tags=tags)
    Tracker(client, run.info.run_id).log_params(flatten(params))
    return run.info.run_id


def _link_upstream(client: Any, parent_id: str, stage: str, params: Params, execution: Execution) -> None:
    """Tag the parent with the runs that produced the outputs this stage reads, when another execution
    produced them (DVC skipped those stages this time)."""
    from mlflow.entities import RunTag

    tags = [
        RunTag(f"{STAGE_RUN_TAG}{up}", rec["run_id"])
        for up, rec in provenance.upstream(stage, params).items()
        if rec.get("execution") != execution.key
    ]
    if tags:
        client.log_batch(parent_id, tags=tags)


def _describe(client: Any, parent_id: str, experiment_id: str, execution: Execution) -> None:
    """The parent's description: each stage, and the run that produced its outputs (this execution's,
    or an earlier one's when DVC skipped the stage)."""
    parent = client.get_run(parent_id)
    lines = [f"Pipeline execution `{execution.name}`; stages and the runs that produced their outputs:", ""]
    for stage in STAGES:
        run_id = parent.data.tags.get(f"{STAGE_RUN_TAG}{stage}")
        if not run_id:
            continue
        try:
            produced = client.get_run(run_id)
        except Exception:  # deleted meanwhile, or in another store
            lines.append(f"- **{stage}**: run `{run_id}` (not found in this store)")
            continue
        here = produced.data.tags.get(PARENT_TAG) == parent_id
        how = "ran in this execution" if here else "skipped by DVC (outputs unchanged), produced by"
        link = f"[{produced.info.run_name}](#/experiments/{produced.info.experiment_id}/runs/{run_id})"
        lines.append(f"- **{stage}**: {how} {link}, {produced.info.status.lower()}")
    client.set_tag(parent_id, NOTE_TAG, "\n".join(lines))


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params,
    params_file: str | Path = "params.yaml",
    plugin_tags: Mapping[str, str] | None = None,
) -> Iterator[Tracker]:
    """One MLflow child run for a stage, with the contract's tags, ended with the right status; the
    execution's parent run follows it (status, end time, description)."""
    with interrupts.installed():
        if not is_primary():
            yield Tracker()
            return
        root = repo_root()
        client = open_client(root)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or params.mlflow.experiment
        experiment_id = _experiment_id(client, experiment, root)
        mark_stale_runs_killed(client, experiment_id)
        commit, changed = git_commit()
        params_text = Path(params_file).read_text() if Path(params_file).exists() else ""
        execution = current_execution(params_text, commit)
        config = pipeline_key(params_text, commit)
        parent_id = _parent_run(client, experiment_id, execution, config, commit, params)
        _link_upstream(client, parent_id, stage, params, execution)
        tags = {
            STAGE_TAG: stage,
            COMMIT_TAG: commit,
            EXECUTION_TAG: execution.key,
            DIRTY_TAG: str(bool(changed)).lower(),
            "distillops.host": socket.gethostname(),
            "distillops.pid": str(os.getpid()),
            USER_TAG: user(),
            PARENT_TAG: parent_id,
            **(plugin_tags or {}),
        }
        tags.update(sweep_tags())
        if changed:  # what differs from the commit; the UI shows a tag's first few hundred characters
            tags[CHANGED_TAG] = ", ".join(changed)[:4000]
        if execution.dvc_experiment:
            tags[DVC_EXP_TAG] = execution.dvc_experiment
        run = client.create_run(experiment_id, run_name=stage, tags=tags)
        client.set_tag(parent_id, f"{STAGE_RUN_TAG}{stage}", run.info.run_id)
        tracker = Tracker(client, run.info.run_id, parent_id, experiment_id, tags)
        tracker.log_params(flatten(params))
        try:
            with _ended(client, run.info.run_id):
                yield tracker
                provenance.record(
                    stage,
                    params,
                    {"run_id": run.info.run_id, "experiment_id": experiment_id, "execution": execution.key},
                )
        finally:
            status = client.get_run(run.info.run_id).info.status
            client.set_terminated(parent_id, status=status)
            _describe(client, parent_id, experiment_id, execution)
            print(
                f"[{stage}] MLflow run {run.info.run_id} {status} in {redact(tracking_uri(root))}",
                file=sys.stderr,
            )


@dataclass(frozen=True)
class LoggedOnnx:
    model_id: str  # the MLflow logged model (its page lists the metrics logged against it)
    version: str | None  # the registered version, when registered


def onnx_requirements() -> list[str]:
    """The pip requirements of a logged ONNX model (MLflow adds its own): the installed onnx,
    onnxruntime and numpy, pinned."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("numpy", "onnx", "onnxruntime")]


@contextlib.contextmanager
def fluent_store(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.<flavor>.log_model``, ``mlflow.start_run``) at ``uri`` for a
    block. It reads the process-wide tracking URI, and setting that URI also writes MLFLOW_TRACKING_URI into
    the environment, so both are put back as they were after the block: a caller that embeds the pipeline
    keeps its own store, and the subprocesses it starts later inherit its environment, not the stage's."""
    import mlflow
    from mlflow.tracking._tracking_service import utils  # holds the explicitly set URI; None when unset

    explicit, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(explicit)  # None unsets it, and the environment variable with it
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def log_onnx_model(
    tracker: Tracker,
    onnx_path: Path,
    name: str,
    example: Any,
    num_classes: int,
    registered_model: str | None = None,
) -> LoggedOnnx | None:
    """Log an ONNX model with signature and input example to the tracker's run, as a logged model linked
    to that run; register it as a new version of ``registered_model`` when given. None when not tracking.
    """
    if not tracker.active:
        return None
    import mlflow
    import mlflow.onnx
    import numpy as np
    import onnx
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    model = onnx.load(str(onnx_path))
    in_name = model.graph.input[0].name
    signature = ModelSignature(  # every output: logits and, for the exported students, probabilities
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]), in_name)]),
        outputs=Schema(
            [TensorSpec(np.dtype(np.float32), (-1, num_classes), out.name) for out in model.graph.output]
        ),
    )
    with fluent_store(tracker.client.tracking_uri), mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.onnx.log_model(
            model,
            name=name,
            signature=signature,
            input_example={in_name: example},
            registered_model_name=registered_model,
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            # what serving an ONNX model needs, stated rather than inferred: MLflow's inference loads the
            # model in a subprocess to see what it imports (about 5 s per model) and finds these
            pip_requirements=onnx_requirements(),
        )
    return LoggedOnnx(info.model_id, str(info.registered_model_version) if registered_model else None)
