"""End to end: the real `dvc repro` of all six stages on a tiny configuration, in a temporary copy of
the repository, with the default MLflow store (SQLite at the copy's root)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import tiny_params_dict
from tests.stages.conftest import copy_repo, sh

pytestmark = pytest.mark.slow

CONTRACT_KEYS = {
    "teacher.accuracy",
    "student_alone.accuracy",
    "student.accuracy",
    "student.onnx_accuracy",
    "student.onnx_bytes",
    "student.latency_ms.torch_b1",
    "student.latency_ms.onnx_b1",
    "transfer.accuracy",
    "transfer.scratch_accuracy",
}
STAGES = ["prepare", "teacher", "distill", "transfer", "export", "evaluate"]


@pytest.fixture(scope="module")
def repro(tmp_path_factory, pipeline_env):
    repo = copy_repo(tmp_path_factory.mktemp("clone"))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        sh(cmd, repo, pipeline_env)
    result = sh(["dvc", "repro"], repo, pipeline_env)
    return repo, result


def test_all_stages_ran_in_order_and_wrote_outputs(repro):
    repo, result = repro
    positions = [result.stdout.index(f"Running stage '{s}'") for s in STAGES]
    assert positions == sorted(positions)
    for path in [
        "data/prepared/source.npz",
        "data/prepared/target.npz",
        "data/prepared/summary.json",
        "models/teacher/model.safetensors",
        "models/student/model.safetensors",
        "models/student_alone/model.safetensors",
        "models/transferred/model.safetensors",
        "models/scratch/model.safetensors",
        "models/onnx/student.onnx",
        "models/onnx/student_int8.onnx",
        "models/onnx/teacher.onnx",
        "reports/metrics.json",
        "reports/plots/confusion.csv",
        "reports/plots/training_curves.png",
    ]:
        assert (repo / path).is_file(), path
    summary = json.loads((repo / "data/prepared/summary.json").read_text())
    assert summary["source"]["splits"]["train"]["count"] == 512


def test_metrics_have_the_contract_keys_with_sane_values(repro):
    repo, _ = repro
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics) >= CONTRACT_KEYS
    for key in CONTRACT_KEYS:
        if key.endswith("accuracy"):
            assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["student.onnx_accuracy"] == pytest.approx(metrics["student.accuracy"], abs=0.01)
    assert metrics["student.onnx_bytes"] == (repo / "models/onnx/student.onnx").stat().st_size
    assert metrics["compression.parameters"] == metrics["teacher.parameters"] / metrics["student.parameters"]
    onnx_speedup = metrics["teacher.latency_ms.onnx_b1"] / metrics["student.latency_ms.onnx_b1"]
    assert metrics["compression.latency_onnx_b1"] == pytest.approx(onnx_speedup)
    gap = metrics["teacher.accuracy"] - metrics["student_alone.accuracy"]
    if gap > 0:
        assert metrics["distill.gap_closed"] == pytest.approx(metrics["distill.gain"] / gap)
    else:  # no gap to close on this tiny run: no ratio rather than a meaningless one
        assert "distill.gap_closed" not in metrics


def test_dvc_lists_the_metrics(repro, pipeline_env):
    repo, _ = repro
    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], repo, pipeline_env).stdout)
    text = json.dumps(shown)
    assert "teacher.accuracy" in text and "transfer.scratch_accuracy" in text


def test_dvc_renders_the_plots_into_a_page_that_needs_no_network(repro, pipeline_env, tmp_path):
    """`dvc plots show`: the validation curves and both confusion matrices, from the pipeline's files, in
    the page setup writes (.dvc/plots.html, named by .dvc/config): the charting libraries are inline, no
    script is fetched from anywhere."""
    repo, _ = repro
    sh([sys.executable, "-m", "pipeline.plots_page", ".dvc/plots.html"], repo, pipeline_env)  # as setup does
    sh(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo, pipeline_env)
    shown = json.loads(sh(["dvc", "plots", "show", "--json", "--split"], repo, pipeline_env).stdout)
    names = set(shown["data"])
    assert any("confusion.csv" in n for n in names) and any("transfer_confusion.csv" in n for n in names)
    assert any("validation_accuracy" in n for n in names)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page), "a script is loaded from elsewhere"
    assert "cdn.jsdelivr" not in page and "window.vegaEmbed=" in page
    assert page.count("vegaEmbed('#") >= 3  # every vega plot is drawn by the inline library


def test_mlflow_has_one_run_per_stage_grouped_and_tagged(repro):
    from mlflow.tracking import MlflowClient

    repo, _ = repro
    assert (repo / "mlflow.db").is_file()
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillops")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    stage_runs = {r.data.tags.get("distillops.stage"): r for r in runs}
    assert set(STAGES) <= set(stage_runs)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    parent_ids = {stage_runs[s].data.tags["mlflow.parentRunId"] for s in STAGES}
    assert len(parent_ids) == 1 and stage_runs["pipeline"].info.run_id in parent_ids
    for stage in STAGES:
        run = stage_runs[stage]
        assert run.info.status == "FINISHED", stage
        assert run.data.tags["distillops.git_commit"] == commit
    teacher_tags = stage_runs["teacher"].data.tags
    for tag in (
        "plugins.models.lenet5",
        "plugins.losses.ce",
        "plugins.augmenters.flip",
        "plugins.augmenters.crop",
    ):
        assert teacher_tags[tag].startswith("distillops=="), tag
    assert stage_runs["distill"].data.tags["plugins.losses.kd"].startswith("distillops==")
    history = client.get_metric_history(stage_runs["teacher"].info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1]
    variants = {r.data.tags.get("distillops.variant") for r in runs}
    assert {"student", "student_alone", "transferred", "scratch"} <= variants
    assert stage_runs["pipeline"].data.metrics["student.accuracy"] >= 0  # summary on the parent run
    parent = stage_runs["pipeline"]  # one `dvc repro`: one parent, spanning its stages, FINISHED
    assert parent.info.run_name == f"repro-{commit[:7]}" and parent.info.status == "FINISHED"
    assert parent.info.start_time <= min(stage_runs[s].info.start_time for s in STAGES)
    assert parent.info.end_time >= max(stage_runs[s].info.end_time for s in STAGES)
    assert parent.data.params["distill.epochs"] == "1"  # the execution's params, to compare executions
    # every model's run: its own params and the same metric names, so the compare view lines them up
    models = [stage_runs["teacher"], *(r for r in runs if r.data.tags.get("distillops.variant"))]
    assert len(models) >= 5
    for run in models:
        assert {"model", "losses", "epochs", "lr", "optimizer", "train_images", "init"} <= set(
            run.data.params
        )
        assert {"val_accuracy", "test_accuracy", "parameters"} <= set(run.data.metrics), run.info.run_name
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs  # the data it saw, as MLflow datasets
        contexts = {tag.value for d in inputs for tag in d.tags if tag.key == "mlflow.data.context"}
        assert contexts == {"training", "validation", "test"}, run.info.run_name
        assert all(d.dataset.digest and d.dataset.source for d in inputs)
    student = next(r for r in runs if r.data.tags.get("distillops.variant") == "student")
    assert "kd(" in student.data.params["losses"] and student.data.params["teacher"] != "none"
    versions = client.search_model_versions("name='distillops-student'")
    assert versions and versions[0].run_id == stage_runs["export"].info.run_id
    # the first version is both candidate and champion, with what evaluate measured and a description
    champion = client.get_model_version_by_alias("distillops-student", "champion")
    assert str(champion.version) == str(versions[0].version) and set(champion.aliases) == {
        "candidate",
        "champion",
    }
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert float(champion.tags["accuracy"]) == pytest.approx(metrics["student.onnx_accuracy"], abs=1e-4)
    assert int(champion.tags["onnx_bytes"]) == metrics["student.onnx_bytes"]
    assert champion.tags["git_commit"] == commit and "distilled from teacher" in champion.description
    # every exported ONNX model is a logged model of the export run, with what evaluate measured on it
    logged = {m.name: m for m in client.search_logged_models(experiment_ids=[exp.experiment_id])}
    expected = {f"{n}_onnx" for n in ("teacher", "student", "student_alone", "transferred", "student_int8")}
    assert expected <= set(logged)
    for name in expected:
        model = logged[name]
        assert model.source_run_id == stage_runs["export"].info.run_id
        measured = {m.key: m.value for m in model.metrics or []}
        assert {"accuracy", "onnx_bytes"} <= set(measured), name
    student_metrics = {m.key: m.value for m in logged["student_onnx"].metrics}
    assert student_metrics["accuracy"] == pytest.approx(metrics["student.onnx_accuracy"])
    assert student_metrics["latency_ms_b1"] == pytest.approx(metrics["student.latency_ms.onnx_b1"])
    # the execution's report figures are on the parent run and under reports/plots
    on_parent = {a.path for a in client.list_artifacts(parent.info.run_id)}
    for figure in ("models.png", "training_curves.png", "confusion_matrix.png"):
        assert figure in on_parent and (repo / "reports/plots" / figure).is_file(), figure
    decision = stage_runs["evaluate"].data.tags["distillops.registry_decision"]
    assert decision.endswith("is the new champion: there was no champion yet")


def test_registered_onnx_model_loads_with_signature_and_predicts(repro):
    import mlflow.pyfunc

    repo, _ = repro
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/distillops-student@champion")
    assert list(model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 28, 28]
    out = model.predict({"pixels": np.zeros((3, 1, 28, 28), np.float32)})
    assert next(iter(out.values())).shape == (3, 10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(cmd: list[str], ready_url: str, cwd: Path, env: dict):
    """A real server process, up once ``ready_url`` answers 200 (at most 180 s), stopped afterwards."""
    import urllib.request

    server = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.time() < deadline, f"{cmd[0:3]} did not answer {ready_url} in 180 s"
            time.sleep(1)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tracking_server_rest_api_shows_the_story(repro, pipeline_env):
    """The facts the MLflow UI shows, read through the REST API of a live `mlflow server` on 127.0.0.1
    over the pipeline's store: one parent with a child per stage, the models' params side by side, and
    the registered student's aliases and tags."""
    import urllib.parse
    import urllib.request

    repo, _ = repro
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    cmd = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]

    def get(path: str, **query: str) -> dict:
        with urllib.request.urlopen(f"{base}/{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
            return json.loads(r.read())

    def search(filter_string: str) -> list[dict]:
        body = json.dumps({"experiment_ids": [exp_id], "filter": filter_string, "max_results": 500}).encode()
        request = urllib.request.Request(f"{base}/runs/search", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read()).get("runs", [])

    with _server(cmd, f"http://127.0.0.1:{port}/health", repo, pipeline_env):
        exp_id = get("experiments/get-by-name", experiment_name="distillops")["experiment"]["experiment_id"]
        parents = search("tags.`distillops.stage` = 'pipeline'")
        first = min(parents, key=lambda r: int(r["info"]["start_time"]))
        assert first["info"]["status"] == "FINISHED" and first["info"]["run_name"].startswith("repro-")
        children = search(f"tags.`mlflow.parentRunId` = '{first['info']['run_id']}'")
        assert sorted(c["info"]["run_name"] for c in children) == sorted(STAGES)
        students = search("tags.`distillops.variant` != ''")
        params = {
            r["info"]["run_name"]: {p["key"]: p["value"] for p in r["data"]["params"]} for r in students
        }
        assert {"student", "student_alone", "transferred", "scratch"} <= set(params)
        for name in ("student", "student_alone", "transferred", "scratch"):
            assert {"model", "losses", "epochs", "lr", "init"} <= set(params[name]), name
        assert params["student"]["losses"] != params["student_alone"]["losses"]  # the compare view differs
        champion = get("registered-models/alias", name="distillops-student", alias="champion")[
            "model_version"
        ]
        assert "champion" in champion["aliases"] and champion.get("description")
        tags = {t["key"]: t["value"] for t in champion["tags"]}
        assert {"accuracy", "onnx_bytes", "latency_ms_onnx_b1", "git_commit", "dvc_experiment"} <= set(tags)


def test_served_champion_answers_what_predict_answers(repro, pipeline_env, tmp_path):
    """A real `mlflow models serve` of the champion on 127.0.0.1, asked about real test images saved as
    PNG files: its probabilities are `distillops predict`'s on the same files and the same model file."""
    import urllib.request

    import mlflow.artifacts
    from PIL import Image

    from pipeline import predict

    repo, _ = repro
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    files = []
    for i, img in enumerate(np.load(repo / "data/prepared/source.npz")["x_test"][:8]):
        Image.fromarray(img[0]).resize((56, 56)).save(tmp_path / f"test{i}.png")
        files.append(str(tmp_path / f"test{i}.png"))
    mlflow.set_tracking_uri(uri)  # the registry too: a models:/ URI resolves through the registry URI
    model_dir = mlflow.artifacts.download_artifacts(
        "models:/distillops-student@champion", dst_path=str(tmp_path / "champion")
    )
    onnx_file = next(Path(model_dir).glob("*.onnx"))
    out = sh(["distillops", "predict", str(onnx_file), *files, "--top", "10", "--json"], repo, pipeline_env)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    by_predict = np.zeros((len(files), 10))
    for i, row in enumerate(rows):
        for p in row["predictions"]:
            by_predict[i, p["class"]] = p["probability"]

    port = _free_port()
    serve = [
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/distillops-student@champion",
        "--env-manager",
        "local",
    ]
    env = {**pipeline_env, "MLFLOW_TRACKING_URI": uri}
    with _server([*serve, "-h", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/ping", repo, env):
        body = json.dumps({"inputs": {"pixels": predict.load_images(files, (1, 28, 28)).tolist()}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
    served = np.asarray(answer["predictions"]["probabilities"])
    assert served.shape == (len(files), 10) and np.allclose(served.sum(1), 1, atol=1e-5)
    assert (served.argmax(1) == by_predict.argmax(1)).all()
    assert np.allclose(served, by_predict, atol=1e-4)  # predict rounds to 4 decimals
    print("served classes:", served.argmax(1).tolist(), "predict classes:", by_predict.argmax(1).tolist())


def test_onnx_matches_pytorch_at_batch_1_7_32(repro):
    import onnxruntime as ort
    import torch

    from pipeline.modelio import load_model

    repo, _ = repro
    model, _ = load_model(repo / "models/student")
    session = ort.InferenceSession(str(repo / "models/onnx/student.onnx"), providers=["CPUExecutionProvider"])
    test = np.load(repo / "data/prepared/source.npz")["x_test"]
    for b in (1, 7, 32):
        x = test[:b].astype(np.float32) / 255
        expected = model(torch.from_numpy(x)).detach().numpy()
        got = session.run(None, {"pixels": x})[0]
        assert np.abs(got - expected).max() <= 1e-4 and (got.argmax(1) == expected.argmax(1)).all()


def test_predict_command_needs_only_onnxruntime_and_numpy(repro, pipeline_env):
    repo, _ = repro
    images = np.load(repo / "data/prepared/source.npz")["x_test"][:3]
    np.save(repo / "three.npy", images)
    code = (
        "import sys, runpy; sys.modules['torch'] = None; sys.modules['mlflow'] = None; "
        "sys.argv = ['predict', 'models/onnx/student.onnx', 'three.npy', '--top', '2', '--json']; "
        "runpy.run_module('pipeline.predict', run_name='__main__')"
    )
    out = sh([sys.executable, "-c", code], repo, pipeline_env, check=False)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 3 and len(rows[0]["predictions"]) == 2


def test_summary_command_prints_the_runs_results(repro, pipeline_env):
    repo, _ = repro
    out = sh(["distillops", "summary"], repo, pipeline_env)
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert f"teacher                {metrics['teacher.accuracy']:.4f}" in out.stdout
    assert "models/onnx/student.onnx" in out.stdout and "dvc metrics show" in out.stdout


def test_second_repro_does_nothing(repro, pipeline_env):
    repo, _ = repro
    lock = (repo / "dvc.lock").read_text()
    t0 = time.perf_counter()
    again = sh(["dvc", "repro"], repo, pipeline_env)
    elapsed = time.perf_counter() - t0
    assert "Running stage" not in again.stdout
    assert (repo / "dvc.lock").read_text() == lock
    print(f"second dvc repro: {elapsed:.1f} s")


def test_dvc_remote_round_trip_gives_a_fresh_clone_that_reruns_nothing(repro, pipeline_env, tmp_path):
    """The team's round trip through a DVC remote (a local folder here): `dvc push --run-cache` from the
    pipeline's repository, commit dvc.lock, the remote in .dvc/config and the git-tracked metrics, `git
    clone` it, `dvc pull --run-cache` in the clone: every output of dvc.lock is there with the source's
    bytes, `dvc status` is clean and `dvc repro` runs no stage. The repository is put back as it was
    (HEAD, index, .dvc/config), so the tests after this one see the state they expect."""
    import hashlib

    repo, _ = repro
    clone, remote = tmp_path / "clone", tmp_path / "remote"
    remote.mkdir()

    def git(*args: str, cwd: Path = repo) -> str:
        return sh(["git", *args], cwd, pipeline_env).stdout.strip()

    def dvc_status(cwd: Path) -> dict:
        return json.loads(sh(["dvc", "status", "--json"], cwd, pipeline_env).stdout or "{}")

    def files_of(root: Path, rel: str) -> dict[str, str]:
        """md5 of each file of the output ``rel`` (a file or a folder) under ``root``."""
        path = root / rel
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in found}

    def run_cache(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}  # none: empty

    assert dvc_status(repo) == {}, "the pipeline's repository must be up to date before the round trip"
    head, index, config = git("rev-parse", "HEAD"), git("write-tree"), (repo / ".dvc/config").read_bytes()
    before = git("status", "--porcelain")
    try:
        sh(["dvc", "remote", "add", "-d", "storage", str(remote)], repo, pipeline_env)
        t0 = time.perf_counter()
        pushed = sh(["dvc", "push", "--run-cache"], repo, pipeline_env)
        push_s = time.perf_counter() - t0
        # the run cache went too: one entry per stage DVC can cache runs of (not a stage with plain
        # `cache: false` outputs, such as evaluate's figures)
        entries = run_cache(repo / ".dvc/cache/runs")
        assert entries and run_cache(remote / "runs") == entries, pushed.stdout
        cmds = {yaml.safe_load((remote / "runs" / e).read_text())["cmd"] for e in entries}
        assert {f"python -m pipeline.{s}" for s in STAGES[:-1]} <= cmds, cmds
        # what a user commits: the lock file, the remote's address and the metrics git tracks
        git("add", "dvc.lock", ".dvc/config", "reports/metrics.json")
        git("commit", "-qm", "results and their DVC remote")
        git("clone", "-q", str(repo), str(clone), cwd=tmp_path)

        t0 = time.perf_counter()
        pulled = sh(["dvc", "pull", "--run-cache"], clone, pipeline_env)
        pull_s = time.perf_counter() - t0
        print(f"dvc push --run-cache: {push_s:.1f} s ({pushed.stdout.strip().splitlines()[-1]})")
        print(f"dvc pull --run-cache: {pull_s:.1f} s ({pulled.stdout.strip().splitlines()[-1]})")
        assert run_cache(clone / ".dvc/cache/runs") == entries

        lock = yaml.safe_load((repo / "dvc.lock").read_text())
        outs = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
        source = {k: v for rel in outs for k, v in files_of(repo, rel).items()}
        copied = {k: v for rel in outs for k, v in files_of(clone, rel).items()}
        assert len(source) >= 14 and "models/onnx/student.onnx" in source
        missing = sorted(set(source) - set(copied))
        assert not missing, f"outputs of dvc.lock missing from the clone after dvc pull: {missing}"
        assert copied == source, [k for k in source if copied[k] != source[k]]

        assert dvc_status(clone) == {}
        again = sh(["dvc", "repro"], clone, pipeline_env)
        assert "Running stage" not in again.stdout, again.stdout
        for stage in STAGES:
            assert f"Stage '{stage}' didn't change, skipping" in again.stdout, again.stdout
    finally:  # back to the fixture's state: HEAD, index and .dvc/config as they were, no remote
        git("reset", "-q", "--soft", head)
        git("read-tree", index)
        (repo / ".dvc/config").write_bytes(config)
    assert git("rev-parse", "HEAD") == head and git("status", "--porcelain") == before


@pytest.mark.parametrize(
    ("module", "changed"),
    [
        ("pipeline/variants.py", {"teacher", "distill", "transfer"}),  # how a stage trains its models
        # loss code: the training stages only; evaluate measures models with pipeline/evaluation.py
        ("pipeline/loss_set.py", {"teacher", "distill", "transfer"}),
        ("pipeline/evaluation.py", {"teacher", "distill", "transfer", "evaluate"}),
        # the stages that can run an ONNX teacher, and export and evaluate
        ("pipeline/onnx_model.py", {"teacher", "distill", "transfer", "export", "evaluate"}),
        ("pipeline/tracking.py", set()),  # result-neutral: only what is logged
    ],
)
def test_editing_core_code_marks_exactly_its_stages_changed(repro, pipeline_env, module, changed):
    repo, _ = repro
    path = repo / module
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        status = sh(["dvc", "status", "--json"], repo, pipeline_env)
        reported = set(json.loads(status.stdout or "{}"))
    finally:
        path.write_text(original)
    # a changed stage makes the ones that depend on its outputs changed too only after it reruns, so
    # `dvc status` lists exactly the stages whose own deps include the module
    assert reported == changed


def test_failed_stage_leaves_lock_and_previous_outputs_in_place(repro, pipeline_env):
    repo, _ = repro
    lock = (repo / "dvc.lock").read_text()
    kept = [
        "models/student/model.safetensors",
        "models/student/history.csv",
        "models/student_alone/model.json",
    ]
    before = {path: (repo / path).read_bytes() for path in kept}
    params_file = repo / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["distill"]["epochs"] = 2
    params["distill"]["lr"] = 1e12  # diverges within a few steps: the stage fails halfway
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        failed = sh(["dvc", "repro"], repo, pipeline_env, check=False)
        assert failed.returncode != 0
        assert "previous outputs are back in place" in failed.stderr, failed.stderr
        assert (repo / "dvc.lock").read_text() == lock
        assert {path: (repo / path).read_bytes() for path in kept} == before

        params["distill"]["lr"] = yaml.safe_load(original)["distill"]["lr"]  # fixed
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        rerun = sh(["dvc", "repro", "distill"], repo, pipeline_env)  # the stages after it add nothing here
        assert "Running stage 'distill'" in rerun.stdout
        assert "Running stage 'prepare'" not in rerun.stdout and "Running stage 'teacher'" not in rerun.stdout
    finally:
        params_file.write_text(original)


def test_warm_start_and_left_out_classes_through_one_dvc_exp_run(repro, pipeline_env):
    """Three distill options selected from the command line in one real `dvc exp run --temp -S ... -S ...`
    (one run for all keeps the suite short): sub-model weight transfer (a warm start on half the
    training split), the dark-knowledge check (class 3 left out of the students' training set, then
    reported before and after the bias) and the student alone's own epochs. Only the stages after the
    teacher rerun."""
    from mlflow.tracking import MlflowClient

    repo, _ = repro
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillops")

    def stage_runs(stage: str) -> list:
        return client.search_runs([exp.experiment_id], f"tags.`distillops.stage` = '{stage}'")

    teachers_before = len(stage_runs("teacher"))
    out = sh(
        [
            "dvc", "exp", "run", "--temp",
            "-S", "distill.warm_start={fraction: 0.5, epochs: 1}",
            "-S", "distill.exclude_classes=[3]",
            "-S", "distill.epochs=2", "-S", "distill.baseline_epochs=1",
        ],
        repo,
        pipeline_env,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert "Running stage 'distill'" in out.stdout and "Running stage 'teacher'" not in out.stdout
    assert "classes [3] left out of the transfer set" in log
    dropped = int(re.search(r"(\d+) training images dropped", log).group(1))
    assert f"warm start on {round(0.5 * (512 - dropped))} of {512 - dropped} images for 1 epochs" in log, log
    assert len(stage_runs("teacher")) == teachers_before
    distill = stage_runs("distill")[0]  # the newest
    assert distill.data.params["distill.warm_start.fraction"] == "0.5"
    student = client.search_runs(
        [exp.experiment_id],
        f"tags.`mlflow.parentRunId` = '{distill.info.run_id}' and tags.`distillops.variant` = 'student'",
    )[0]
    assert "warm_start.val_accuracy" in student.data.metrics and "val_accuracy" in student.data.metrics
    # the student alone trains its own epochs (distill.baseline_epochs) beside the distilled student's
    alone = client.search_runs(
        [exp.experiment_id],
        f"tags.`mlflow.parentRunId` = '{distill.info.run_id}' and tags.`distillops.variant` = 'student_alone'",
    )[0]
    assert (student.data.params["epochs"], alone.data.params["epochs"]) == ("2", "1")
    assert len(client.get_metric_history(alone.info.run_id, "val_accuracy")) == 1
    # the experiment's parent is named after it and links the teacher run of the first execution, which
    # DVC did not rerun
    parent = client.get_run(distill.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == parent.data.tags["distillops.dvc_experiment"] != ""
    teacher = stage_runs("teacher")[0]
    assert parent.data.tags["distillops.stage_run.teacher"] == teacher.info.run_id
    assert teacher.data.tags["mlflow.parentRunId"] != parent.info.run_id
    assert "**teacher**: skipped by DVC" in parent.data.tags["mlflow.note.content"]

    metrics = stage_runs("evaluate")[0].data.metrics
    for key in ("student.left_out_accuracy", "student.left_out_accuracy_after_bias", "student.left_out_bias"):
        assert key in metrics, key
    # a bias on class 3 can only turn more of its images into predicted 3s
    assert metrics["student.left_out_accuracy_after_bias"] >= metrics["student.left_out_accuracy"]


def test_scored_transfer_set_with_an_unlabelled_pool_through_dvc_exp_run(repro, pipeline_env):
    """`distill.procedure: scored` with half the training split unlabelled, from the command line: the
    pool changes prepare's output, so every stage up to distill reruns (the later ones are not needed
    here); the scored student goes on from the student alone on the teacher's labels of all 512 images,
    while the student alone sees only the 256 labelled."""
    repo, _ = repro
    out = sh(
        [
            "dvc", "exp", "run", "--temp", "distill",
            "-S", "distill.procedure=scored",
            "-S", "distill.scored_targets=soft",
            "-S", "data.unlabelled_fraction=0.5",
        ],
        repo,
        pipeline_env,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert "Running stage 'prepare'" in out.stdout and "Running stage 'teacher'" in out.stdout
    assert "scored transfer set: 512 images (256 unlabelled) with the teacher's probabilities" in log
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillops")
    prepare = client.search_runs([exp.experiment_id], "tags.`distillops.stage` = 'prepare'")[0]
    assert prepare.data.metrics["source.unlabelled_count"] == 256
    assert prepare.data.metrics["source.train_count"] == 256
    distill = client.search_runs([exp.experiment_id], "tags.`distillops.stage` = 'distill'")[0]
    assert distill.data.params["distill.procedure"] == "scored"
    assert "student.val_accuracy" in distill.data.metrics and "distill_gain" in distill.data.metrics


def test_transfer_then_distil_through_dvc_exp_run_reruns_from_the_transfer_stage(repro, pipeline_env):
    """`transfer.order: transfer_then_distil`: the teacher is adapted to the digits first, then the student
    is distilled from it on the same labelled digits; only transfer reruns (up to it: export and evaluate
    would follow)."""
    from mlflow.tracking import MlflowClient

    repo, _ = repro
    out = sh(
        ["dvc", "exp", "run", "--temp", "transfer", "-S", "transfer.order=transfer_then_distil"],
        repo,
        pipeline_env,
    )
    log = out.stdout + out.stderr
    assert "Running stage 'transfer'" in out.stdout
    assert "Running stage 'distill'" not in out.stdout and "Running stage 'teacher'" not in out.stdout
    assert "from the teacher; head" in log and "transfer then distil, finetune: transferred" in log
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillops")
    transfer = client.search_runs([exp.experiment_id], "tags.`distillops.stage` = 'transfer'")[0]
    assert transfer.data.params["transfer.order"] == "transfer_then_distil"
    assert 0 <= transfer.data.metrics["adapted_teacher_accuracy"] <= 1
    assert {"teacher.val_accuracy", "transferred.val_accuracy", "scratch.val_accuracy"} <= set(
        transfer.data.metrics
    )
    evaluate = client.search_runs([exp.experiment_id], "tags.`distillops.stage` = 'evaluate'")[0]
    assert "transfer.accuracy" in evaluate.data.metrics


def test_a_queued_sweep_shows_in_dvc_exp_show_and_in_mlflow(repro, pipeline_env):
    """`dvc exp run --queue -S ...` twice, `dvc queue start -j 2` (two workers at once) on a fresh SQLite
    store: the store is created once (no half-migrated schema), both experiments are in `dvc exp show`,
    each with its own parent run in MLflow named after it."""
    from mlflow.tracking import MlflowClient

    repo, _ = repro
    store = repo / "queued" / "mlflow.db"  # fresh: the first two stages to start create it together
    env = {**pipeline_env, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    for t in (2, 4):
        losses = f"distill.losses=[{{name: kd, weight: 0.5, temperature: {t}}}, {{name: ce, weight: 0.5}}]"
        sh(["dvc", "exp", "run", "--queue", "-n", f"kd-t{t}", "-S", losses], repo, env)
    sh(["dvc", "queue", "start", "-j", "2"], repo, env)
    try:
        deadline = time.time() + 600
        while True:
            status = sh(["dvc", "queue", "status"], repo, pipeline_env).stdout
            if not any(line.rstrip().endswith(("Queued", "Running")) for line in status.splitlines()):
                break
            assert time.time() < deadline, status
            time.sleep(5)
    finally:
        sh(["dvc", "queue", "stop"], repo, pipeline_env, check=False)
    assert "Failed" not in status, status
    table = sh(["dvc", "exp", "show", "--csv"], repo, pipeline_env).stdout.splitlines()
    header = table[0].split(",")
    rows = {line.split(",")[header.index("Experiment")]: line.split(",") for line in table[1:]}
    assert {"kd-t2", "kd-t4"} <= set(rows)
    for name in ("kd-t2", "kd-t4"):
        assert 0 <= float(rows[name][header.index("student.accuracy")]) <= 1
    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("distillops")
    for t in (2, 4):
        parent = client.search_runs(
            [exp.experiment_id], f"tags.`distillops.stage` = 'pipeline' and attributes.run_name = 'kd-t{t}'"
        )[0]
        assert (
            parent.info.status == "FINISHED" and parent.data.tags["distillops.dvc_experiment"] == f"kd-t{t}"
        )
        assert float(parent.data.params["distill.losses.0.temperature"]) == t
        evaluate = client.search_runs(
            [exp.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`distillops.stage` = 'evaluate'",
        )[0]
        print(f"kd-t{t}:", evaluate.data.tags["distillops.registry_decision"])
    assert client.get_model_version_by_alias("distillops-student", "champion").version
