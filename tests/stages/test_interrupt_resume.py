"""SIGTERM during training, in a real subprocess: checkpoint saved, MLflow run KILLED, non-zero exit;
the rerun resumes and ends bit-identical to an uninterrupted run. SIGKILL: no
chance to save anything, so the rerun resumes from the last per-epoch checkpoint, marks the run the
killed process left RUNNING as KILLED, and still ends bit-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, tiny_params_dict

pytestmark = pytest.mark.slow


def stage_cmd(stage: str) -> list[str]:
    return [sys.executable, "-m", f"pipeline.{stage}", "--params", "params.yaml"]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    dirs = []
    params = tiny_params_dict(**{"data.train_limit": 3000, "teacher.epochs": 2, "teacher.batch_size": 64})
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    for name in ("reference", "interrupted", "killed"):
        d = tmp_path_factory.mktemp(name)
        (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        d_env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{d / 'mlflow.db'}"}
        subprocess.run(stage_cmd("prepare"), cwd=d, env=d_env, check=True, capture_output=True, timeout=300)
        dirs.append((d, d_env))
    return dirs


@pytest.fixture(scope="module")
def reference(workdirs) -> Path:
    """An uninterrupted teacher run with the same params and seed."""
    ref, ref_env = workdirs[0]
    subprocess.run(stage_cmd("teacher"), cwd=ref, env=ref_env, check=True, capture_output=True, timeout=600)
    return ref


def test_sigterm_checkpoints_marks_killed_and_resume_is_bit_identical(workdirs, reference):
    ref, (work, env) = reference, workdirs[1]

    proc = subprocess.Popen(
        stage_cmd("teacher"), cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:  # wait until the first epoch is done, then stop it inside the second
        lines.append(line)
        if "epoch 1/2" in line:
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "checkpoint saved at epoch 2" in output, output
    checkpoint = work / ".checkpoints" / "teacher.pt"
    assert checkpoint.exists()
    assert not (work / "models" / "teacher" / "model.safetensors").exists()

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("distillops")
    runs = client.search_runs([exp.experiment_id], "tags.`distillops.stage` = 'teacher'")
    assert [r.info.status for r in runs] == ["KILLED"]

    resumed = subprocess.run(
        stage_cmd("teacher"), cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming training from epoch 2" in resumed.stdout
    assert_same_teacher(work, ref)
    assert not checkpoint.exists()  # removed once the stage has finished


def assert_same_teacher(work: Path, ref: Path) -> None:
    weights = Path("models/teacher/model.safetensors")
    assert (work / weights).read_bytes() == (ref / weights).read_bytes()
    history = Path("models/teacher/history.csv")
    assert (work / history).read_text() == (ref / history).read_text()


def test_sigkill_resumes_from_the_last_epoch_checkpoint_bit_identically(workdirs, reference):
    ref, (work, env) = reference, workdirs[2]
    proc = subprocess.Popen(
        stage_cmd("teacher"), cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    checkpoint = work / ".checkpoints" / "teacher.pt"
    for line in proc.stdout:
        if "epoch 1/2" in line:  # the epoch-1 checkpoint is written (atomically) right after this line
            deadline = time.monotonic() + 60
            while not checkpoint.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.kill()  # somewhere inside epoch 2
            break
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert checkpoint.exists()

    resumed = subprocess.run(
        stage_cmd("teacher"), cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming training from epoch 2, batch 0" in resumed.stdout, resumed.stdout
    assert_same_teacher(work, ref)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("distillops")
    runs = client.search_runs([exp.experiment_id], "tags.`distillops.stage` = 'teacher'")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
