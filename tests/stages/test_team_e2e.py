"""A team's setup, end to end, with real parts: a PostgreSQL cluster on 127.0.0.1, `distillops server`
(MLflow with basic auth on it), a small pipeline run as one user and read back as another, a sweep of
two workers sharing an Optuna study in the same PostgreSQL, and the server stopped mid-stage.

Skipped where PostgreSQL is not installed (Debian: postgresql-15)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_params_dict
from tests.stages import postgres
from tests.stages.conftest import copy_repo, sh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(postgres.bin_dir() is None, reason="PostgreSQL is not installed (initdb not found)"),
]

DB_PASSWORD = "db-secret-Xq81"
ADMIN_PASSWORD = "admin-secret-Pz73k"
SECRET_KEY = "flask-secret-Wm52"
USERS = {"alice": "alice-secret-Rt66", "bob": "bob-secret-Ku94"}
SECRETS = [DB_PASSWORD, ADMIN_PASSWORD, SECRET_KEY, *USERS.values()]


class Server:
    """`distillops server start` in a subprocess; stop and start it again on the same port."""

    def __init__(self, db_uri: str, workdir: Path, env: dict) -> None:
        self.port = postgres.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.env = {
            **env,
            "DISTILLOPS_SERVER_DB": db_uri,
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": SECRET_KEY,
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "pipeline.cli", "server", "start", "--port", str(self.port)]
        cmd += ["--artifacts-destination", str(self.workdir / "artifacts"), "--workers", "2"]
        log = (self.workdir / "server.log").open("a")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=log, stderr=log,
                                     start_new_session=True)  # fmt: skip
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, (self.workdir / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "distillops server did not answer /health in 120 s"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its workers
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def team(tmp_path_factory, pipeline_env):
    """PostgreSQL, the server on it, users alice and bob, and a tiny pipeline `dvc repro`-ed as alice."""
    root = tmp_path_factory.mktemp("team")
    cluster = postgres.Cluster(DB_PASSWORD)
    cluster.start()
    try:
        db_uri = cluster.database("mlflow", "mlflow", DB_PASSWORD)
        server = Server(db_uri, root, pipeline_env)
        server.start()
        try:
            admin = {**pipeline_env, "MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": "admin",
                     "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}  # fmt: skip
            for name, password in USERS.items():
                sh([sys.executable, "-m", "pipeline.cli", "server", "add-user", name], root,
                   {**admin, "DISTILLOPS_USER_PASSWORD": password})  # fmt: skip
            repo = copy_repo(root / "repo")
            params = tiny_params_dict()
            params["mlflow"]["experiment"] = "team"
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
                sh(cmd, repo, pipeline_env)
            env = as_user("alice", server, pipeline_env)
            t0 = time.perf_counter()
            sh(["dvc", "repro"], repo, env)
            print(f"dvc repro against the PostgreSQL-backed server: {time.perf_counter() - t0:.0f} s")
            yield {"server": server, "repo": repo, "db": db_uri, "cluster": cluster, "env": pipeline_env}
        finally:
            server.stop()
    finally:
        cluster.stop()


def as_user(name: str, server: Server, env: dict) -> dict:
    return {**env, "MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": name,
            "MLFLOW_TRACKING_PASSWORD": USERS[name]}  # fmt: skip


def client_as(name: str, team: dict, monkeypatch):
    from mlflow.tracking import MlflowClient

    for key, value in as_user(name, team["server"], {}).items():
        monkeypatch.setenv(key, value)
    return MlflowClient(team["server"].url)


def test_a_pipeline_run_by_alice_is_read_back_by_bob_champion_included(team, monkeypatch, tmp_path):
    import mlflow.artifacts
    import numpy as np
    import onnxruntime as ort

    bob = client_as("bob", team, monkeypatch)
    exp = bob.get_experiment_by_name("team")
    runs = bob.search_runs([exp.experiment_id], "tags.`distillops.stage` != ''", max_results=100)
    stages = {r.data.tags["distillops.stage"]: r for r in runs}
    assert set(stages) == {"pipeline", "prepare", "teacher", "distill", "transfer", "export", "evaluate"}
    assert all(r.info.status == "FINISHED" and r.info.user_id == "alice" for r in runs), [
        (r.info.run_name, r.info.status, r.info.user_id) for r in runs
    ]
    assert stages["distill"].data.metrics["student.val_accuracy"] > 0.1
    assert stages["distill"].data.tags["distillops.git_dirty"] == "false"  # dvc.lock changed, code did not
    champion = bob.get_model_version_by_alias("distillops-student", "champion")
    model_dir = mlflow.artifacts.download_artifacts(
        f"models:/distillops-student/{champion.version}", dst_path=str(tmp_path / "champion")
    )  # through the server's artifact proxy
    session = ort.InferenceSession(str(next(Path(model_dir).glob("*.onnx"))))
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 1, 28, 28), np.float32)})
    assert out[0].shape == (2, 10)


def test_anonymous_and_cross_user_writes_are_refused(team, monkeypatch):
    from mlflow.exceptions import MlflowException

    url = team["server"].url
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    assert anonymous.value.code == 401
    bob = client_as("bob", team, monkeypatch)
    exp = bob.get_experiment_by_name("team")
    alices = bob.search_runs([exp.experiment_id], "tags.`distillops.stage` = 'distill'")[0]
    with pytest.raises(MlflowException) as refused:
        bob.log_metric(alices.info.run_id, "vandalism", 1.0)
    assert "403" in str(refused.value) or refused.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(MlflowException):
        bob.set_registered_model_alias("distillops-student", "champion", "1")
    # a wrong password at stage start: exit 2 in seconds, one line naming the server, no secret
    env = {**as_user("alice", team["server"], team["env"]), "MLFLOW_TRACKING_PASSWORD": "wrong-password"}
    t0 = time.perf_counter()
    failed = sh([sys.executable, "-m", "pipeline.prepare"], team["repo"], env, check=False)
    assert failed.returncode == 2 and time.perf_counter() - t0 < 60, failed.stderr
    assert "refused the credentials" in failed.stderr and url in failed.stderr
    assert "Traceback" not in failed.stderr


def test_no_secret_in_any_param_tag_or_artifact(team, monkeypatch):
    alice = client_as("alice", team, monkeypatch)
    exp = alice.get_experiment_by_name("team")
    for run in alice.search_runs([exp.experiment_id], max_results=500):
        text = json.dumps([run.data.params, run.data.tags])
        assert not [s for s in SECRETS if s in text], run.info.run_name
    for version in alice.search_model_versions("name = 'distillops-student'"):
        assert not [s for s in SECRETS if s in json.dumps([version.tags, version.description])]
    files = [p for p in (team["server"].workdir / "artifacts").rglob("*") if p.is_file()]
    assert len(files) > 10  # the models, figures and reports the stages logged, through the proxy
    for path in files:
        data = path.read_bytes()
        assert not [s for s in SECRETS if s.encode() in data], path


def test_a_sweep_of_two_workers_shares_one_study_in_postgresql(team, monkeypatch):
    """Two `distillops sweep` workers, one Optuna study in PostgreSQL, four trials: each trial a
    `dvc exp run --temp` (prepare and teacher from DVC's run cache) with its own MLflow parent run tagged
    with its number, scored on the distilled student's validation accuracy; the best written out."""
    import optuna

    repo, server = team["repo"], team["server"]
    storage = team["cluster"].database("optuna", "optuna", DB_PASSWORD)  # Optuna's own tables, own database
    (repo / "space.yaml").write_text(
        "params:\n"
        "  distill.losses.0.temperature: {float: [1.0, 6.0]}\n"
        "  distill.lr: {float: [0.001, 0.01], log: true}\n"
    )
    env = {**as_user("alice", server, team["env"]), "DISTILLOPS_SWEEP_STORAGE": storage}
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "sweep",
        "space.yaml",
        "--study",
        "tiny",
        "--trials",
        "4",
        "--threads",
        "1",
    ]
    t0 = time.perf_counter()
    workers = [
        subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    print(f"4 trials, 2 workers: {time.perf_counter() - t0:.0f} s")
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    study = optuna.load_study(study_name="tiny", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and len({t.user_attrs["worker"] for t in done}) == 2, outputs
    alice = client_as("alice", team, monkeypatch)
    exp = alice.get_experiment_by_name("team")
    for trial in done:
        parent = alice.search_runs(
            [exp.experiment_id],
            f"tags.`distillops.stage` = 'pipeline' and tags.`distillops.sweep.trial` = '{trial.number}'",
        )
        assert len(parent) == 1 and parent[0].info.run_name == f"tiny-t{trial.number}"
        assert parent[0].data.metrics["sweep.objective"] == pytest.approx(trial.value)
        assert float(parent[0].data.params["distill.lr"]) == pytest.approx(trial.params["distill.lr"])
    best = yaml.safe_load((repo / "sweeps" / "tiny-best.yaml").read_text())
    assert best["trial"] == study.best_trial.number and best["objective"] == study.best_value
    assert best["overrides"] == study.best_trial.params and best["dvc_experiment"] == f"tiny-t{best['trial']}"
    shown = sh(["dvc", "exp", "show", "--csv"], repo, team["env"]).stdout
    assert all(f"tiny-t{t.number}" in shown for t in done)


def test_the_server_stopping_mid_stage_costs_no_logs(team, monkeypatch):
    """The server goes down during the teacher's training and comes back 5 s later: MLflow's retries
    deliver every epoch's metrics, the stage finishes, its run is FINISHED with the whole history."""
    repo, server = team["repo"], team["server"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"]["epochs"] = 4
    params["paths"]["teacher"] = "models/teacher-restart"  # the pipeline's own outputs stay as they are
    params["paths"]["checkpoints"] = ".checkpoints-restart"
    (repo / "params-restart.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**as_user("alice", server, team["env"]), "DISTILLOPS_PIPELINE_ID": "server-restart"}
    stage = subprocess.Popen(
        [sys.executable, "-m", "pipeline.teacher", "--params", "params-restart.yaml"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    for line in stage.stdout:
        lines.append(line)
        if "epoch 1/4" in line:
            break
    assert stage.poll() is None, "".join(lines)
    server.stop()
    time.sleep(5)
    server.start()
    rest = stage.communicate(timeout=600)[0]
    assert stage.returncode == 0, "".join(lines) + rest
    alice = client_as("alice", team, monkeypatch)
    exp = alice.get_experiment_by_name("team")
    run = alice.search_runs(
        [exp.experiment_id], "tags.`distillops.stage` = 'teacher'", order_by=["attributes.start_time DESC"]
    )[0]
    assert run.info.status == "FINISHED"
    history = alice.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
