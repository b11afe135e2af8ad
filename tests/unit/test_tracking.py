from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import interrupts, provenance, tracking
from tests.conftest import at_once, repo_params


def runs(uri: str, experiment: str = "tests"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=100)


def test_stage_run_tags_parent_and_params(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    with tracking.stage_run(
        "teacher", repo_params(), "params.yaml", {"plugins.losses.ce": "distillops==0.1.0"}
    ) as t:
        t.log_metrics({"val_accuracy": 0.5}, step=1)
        with t.variant("student_alone", {"plugins.losses.ce": "distillops==0.1.0"}) as v:
            v.log_metrics({"val_accuracy": 0.4}, step=1)
    with tracking.stage_run("distill", repo_params(), "params.yaml"):
        pass
    client, all_runs = runs(mlflow_store)
    by_name = {r.info.run_name: r for r in all_runs}
    teacher, distill = by_name["teacher"], by_name["distill"]
    parents = [r for r in all_runs if r.data.tags.get(tracking.STAGE_TAG) == "pipeline"]
    assert len(parents) == 1  # both stages of one configuration share one parent
    assert teacher.data.tags[tracking.PARENT_TAG] == parents[0].info.run_id
    assert distill.data.tags[tracking.PARENT_TAG] == parents[0].info.run_id
    assert teacher.data.tags[tracking.STAGE_TAG] == "teacher"
    assert teacher.data.tags["plugins.losses.ce"] == "distillops==0.1.0"
    assert teacher.data.tags[tracking.COMMIT_TAG]
    assert teacher.data.params["teacher.model.name"] == "lenet5"
    assert teacher.info.status == "FINISHED"
    variant = by_name["student_alone"]
    assert variant.data.tags[tracking.PARENT_TAG] == teacher.info.run_id
    assert tracking.STAGE_TAG not in variant.data.tags
    history = client.get_metric_history(teacher.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]


def test_exception_marks_run_failed(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError), tracking.stage_run("teacher", repo_params()):
        raise ValueError("boom")
    _, all_runs = runs(mlflow_store)
    assert next(r for r in all_runs if r.info.run_name == "teacher").info.status == "FAILED"


def test_interrupt_marks_run_killed(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(interrupts.StageInterrupted), tracking.stage_run("teacher", repo_params()):
        raise interrupts.StageInterrupted(15)
    _, all_runs = runs(mlflow_store)
    assert next(r for r in all_runs if r.info.run_name == "teacher").info.status == "KILLED"


def test_runs_left_running_by_dead_process_are_marked_killed(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = MlflowClient(mlflow_store)
    exp_id = client.create_experiment("tests")
    host = socket.gethostname()
    orphan = client.create_run(
        exp_id, run_name="orphan", tags={"distillops.host": host, "distillops.pid": str(dead.pid)}
    )
    alive = client.create_run(
        exp_id, run_name="alive", tags={"distillops.host": host, "distillops.pid": str(os.getpid())}
    )
    with tracking.stage_run("prepare", repo_params()):
        pass
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"


def test_default_store_is_sqlite_at_repo_root_also_from_dvc_temp_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "repo"
    temp_copy = root / ".dvc" / "tmp" / "exps" / "tmpabc123"
    temp_copy.mkdir(parents=True)
    assert tracking.repo_root(temp_copy) == root
    monkeypatch.chdir(temp_copy)
    assert tracking.tracking_uri() == f"sqlite:///{root / 'mlflow.db'}"
    assert Path(tracking.tracking_uri().removeprefix("sqlite:///")).is_absolute()


def test_only_rank_zero_tracks(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "1")
    with tracking.stage_run("teacher", repo_params()) as t:
        assert not t.active
        t.log_metrics({"x": 1.0})
    assert MlflowClient(mlflow_store).get_experiment_by_name("tests") is None


STAGE_SCRIPT = """
import sys
from pipeline import tracking
from tests.conftest import at_once, repo_params

stage, outcome = sys.argv[1], sys.argv[2]
with tracking.stage_run(stage, repo_params(), "params.yaml"):
    if outcome == "fail":
        raise SystemExit("boom")
"""


def _fake_dvc(tmp_path: Path, stages: list[tuple[str, str]]) -> Path:
    """An executable named ``dvc`` that runs the given stages one after another, each in its own Python
    process, as `dvc repro` does: the stages' nearest ``dvc`` ancestor is this process."""
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    lines = ["#!/bin/sh", f'cd "{tmp_path}"']
    lines += [
        f'PYTHONPATH="{Path(__file__).resolve().parents[2]}" "{sys.executable}" stage.py {s} {o} || exit 1'
        for s, o in stages
    ]
    dvc = tmp_path / "bin" / "dvc"
    dvc.parent.mkdir(exist_ok=True)
    dvc.write_text("\n".join(lines) + "\n")
    dvc.chmod(0o755)
    return dvc


def test_each_dvc_execution_gets_one_parent_that_covers_its_stages(mlflow_store, tmp_path, monkeypatch):
    """Two executions of the same configuration: two parents, each spanning its own stages, and named
    after the DVC experiment when DVC says there is one."""
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    dvc = _fake_dvc(tmp_path, [("prepare", "ok"), ("teacher", "ok")])
    subprocess.run([str(dvc)], check=True, env={**os.environ, "DVC_EXP_NAME": "exp-one"})
    subprocess.run([str(dvc)], check=True, env={k: v for k, v in os.environ.items() if k != "DVC_EXP_NAME"})
    client, all_runs = runs(mlflow_store)
    parents = sorted(
        (r for r in all_runs if r.data.tags.get(tracking.STAGE_TAG) == "pipeline"),
        key=lambda r: r.info.start_time,
    )
    assert [p.info.run_name for p in parents] == [
        "exp-one",
        f"repro-{parents[1].data.tags[tracking.COMMIT_TAG][:7]}",
    ]
    assert parents[0].data.tags[tracking.DVC_EXP_TAG] == "exp-one"
    for parent in parents:
        children = [r for r in all_runs if r.data.tags.get(tracking.PARENT_TAG) == parent.info.run_id]
        assert sorted(c.info.run_name for c in children) == ["prepare", "teacher"]
        assert parent.info.status == "FINISHED"
        assert parent.info.start_time <= min(c.info.start_time for c in children)
        assert parent.info.end_time >= max(c.info.end_time for c in children)
        for child in children:
            assert parent.data.tags[f"{tracking.STAGE_RUN_TAG}{child.info.run_name}"] == child.info.run_id
        assert "**teacher**: ran in this execution" in parent.data.tags[tracking.NOTE_TAG]
        assert parent.data.params["teacher.model.name"] == "lenet5"  # the execution's params, to compare


def test_a_failed_stage_fails_the_parent(mlflow_store, tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    dvc = _fake_dvc(tmp_path, [("prepare", "ok"), ("teacher", "fail")])
    assert subprocess.run([str(dvc)], capture_output=True).returncode != 0
    _, all_runs = runs(mlflow_store)
    parent = next(r for r in all_runs if r.data.tags.get(tracking.STAGE_TAG) == "pipeline")
    assert parent.info.status == "FAILED"
    assert next(r for r in all_runs if r.info.run_name == "teacher").info.status == "FAILED"


def test_a_skipped_stage_is_linked_to_the_run_that_produced_its_outputs(mlflow_store, tmp_path):
    """The outputs carry the id of the run that wrote them; a later execution that reuses them (DVC
    skipped their stage) links its parent to that run instead of logging the stage again."""
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  teacher:\n    cmd: x\n    outs:\n      - ${paths.teacher}\n"
        "  distill:\n    cmd: y\n    deps:\n      - ${paths.teacher}\n    outs:\n      - ${paths.student}\n"
    )
    for folder in ("models/teacher", "models/student"):  # the stages' outputs (the stage code writes them)
        (tmp_path / folder).mkdir(parents=True)
    subprocess.run([str(_fake_dvc(tmp_path, [("teacher", "ok")]))], check=True)
    record = json.loads((tmp_path / "models/teacher" / provenance.FILE).read_text())
    subprocess.run([str(_fake_dvc(tmp_path, [("distill", "ok")]))], check=True)
    _, all_runs = runs(mlflow_store)
    teacher = next(r for r in all_runs if r.info.run_name == "teacher")
    assert record["run_id"] == teacher.info.run_id and record["stage"] == "teacher"
    parents = sorted(
        (r for r in all_runs if r.data.tags.get(tracking.STAGE_TAG) == "pipeline"),
        key=lambda r: r.info.start_time,
    )
    assert len(parents) == 2
    second = parents[1]
    assert [
        r.info.run_name for r in all_runs if r.data.tags.get(tracking.PARENT_TAG) == second.info.run_id
    ] == ["distill"]
    assert second.data.tags[f"{tracking.STAGE_RUN_TAG}teacher"] == teacher.info.run_id
    assert (
        "**teacher**: skipped by DVC (outputs unchanged), produced by [teacher]"
        in second.data.tags[tracking.NOTE_TAG]
    )


def test_processes_starting_at_once_on_a_fresh_sqlite_store_all_get_it(tmp_path, monkeypatch):
    """Four processes open one fresh SQLite store at the same instant (as `dvc queue start -j 2` starts
    stages): the schema is created once, under the lock beside the file, and every process can write."""
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    outcomes, pids = at_once(lambda: tracking.open_client().create_experiment(f"exp-{os.getpid()}"), 4)
    assert outcomes == ["ok"] * 4, outcomes
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {f"exp-{pid}" for pid in pids} <= names


def test_an_unreachable_or_broken_store_fails_in_seconds_naming_it(tmp_path, monkeypatch):
    import time

    from pipeline.errors import DistillopsError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret-pass@127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(DistillopsError) as err:
        tracking.open_client()
    assert time.perf_counter() - t0 < 15
    message = str(err.value)
    assert f"http://127.0.0.1:{port}" in message and "s3cret" not in message and "\n" not in message
    (tmp_path / "not-a-db").write_text("this is no SQLite file")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not-a-db'}")
    with pytest.raises(DistillopsError, match="not-a-db"):
        tracking.open_client()


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@x"
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def test_git_dirty_counts_code_and_params_not_dvc_outputs(tmp_path):
    """A pipeline run rewrites dvc.lock and the outputs git keeps (a metrics file): the tree is not
    dirty for that. A changed module or params file is, and is named."""
    (tmp_path / "params.yaml").write_text("paths:\n  metrics: reports/metrics.json\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: x\n    outs:\n      - models/onnx\n"
        "    metrics:\n      - ${paths.metrics}:\n          cache: false\n"
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "data.dvc").write_text("outs: []\n")
    (tmp_path / "stage.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "init")
    sha, changed = tracking.git_commit(tmp_path)
    assert len(sha) == 40 and changed == []
    (tmp_path / "reports" / "metrics.json").write_text('{"accuracy": 0.9}')
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (tmp_path / "data.dvc").write_text("outs: [{path: data}]\n")
    assert tracking.git_commit(tmp_path)[1] == []
    (tmp_path / "stage.py").write_text("x = 2\n")
    (tmp_path / "params.yaml").write_text("paths:\n  metrics: reports/metrics.json\nseed: 1\n")
    assert tracking.git_commit(tmp_path)[1] == ["params.yaml", "stage.py"]


@pytest.mark.parametrize("explicit", [None, "sqlite:///caller.db"])
@pytest.mark.parametrize("env", [None, "sqlite:///from-env.db"])
def test_fluent_store_points_mlflow_at_the_stage_store_and_puts_the_callers_back(
    tmp_path, monkeypatch, explicit, env
):
    """log_onnx_model logs through MLflow's fluent API, which reads a process-wide URI and copies it into
    the environment; after the block the embedding process has its own URI and environment again."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", explicit)
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    stage = f"sqlite:///{tmp_path / 'stage.db'}"
    with tracking.fluent_store(stage):
        assert mlflow.get_tracking_uri() == stage
        assert os.environ["MLFLOW_TRACKING_URI"] == stage  # what a subprocess started in the block sees
    assert utils._tracking_uri == explicit
    assert os.environ.get("MLFLOW_TRACKING_URI") == env
