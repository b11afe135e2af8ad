from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import interrupts, tracking
from tests.conftest import repo_params


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
