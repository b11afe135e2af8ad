"""`distillops report` over a real SQLite MLflow store: groups by configuration, one value per seed."""

from __future__ import annotations

import statistics
import subprocess
import sys

from mlflow.tracking import MlflowClient


def evaluate_run(client, exp_id, seed, loss, acc, status="FINISHED", start_time=None):
    run = client.create_run(exp_id, start_time=start_time, tags={"distillops.stage": "evaluate"})
    for key, value in {
        "seed": seed,
        "distill.losses.0.name": loss,
        "distill.epochs": 20,
        "paths.models": "m",
    }.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, "student.accuracy", acc)
    client.log_metric(run.info.run_id, "teacher.accuracy", 0.91)
    client.set_terminated(run.info.run_id, status=status)


def test_report_gives_mean_and_std_over_seeds_per_swept_configuration(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("sweep")
    evaluate_run(client, exp_id, 0, "kd", 0.50)  # replaced by the rerun of seed 0 below
    for seed, acc in enumerate([0.912, 0.914, 0.913]):
        evaluate_run(client, exp_id, seed, "kd", acc)
    for seed, acc in enumerate([0.915, 0.918]):
        evaluate_run(client, exp_id, seed, "dist", acc)
    evaluate_run(client, exp_id, 5, "dist", 0.1, status="FAILED")  # not counted
    other_stage = client.create_run(exp_id, tags={"distillops.stage": "distill"})
    client.log_metric(other_stage.info.run_id, "student.accuracy", 0.2)
    client.set_terminated(other_stage.info.run_id)

    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "report", "--tracking-uri", uri, "--experiment", "sweep"]
        + ["--metric", "student.accuracy", "--metric", "teacher.accuracy", "--metric", "distill.gain"]
        + ["--out", str(tmp_path / "reports" / "methods")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert (
        lines[0] == "| distill.losses.0.name | seeds | student.accuracy | teacher.accuracy | distill.gain |"
    )
    kd = statistics.mean([0.912, 0.914, 0.913]), statistics.stdev([0.912, 0.914, 0.913])
    dist = statistics.mean([0.915, 0.918]), statistics.stdev([0.915, 0.918])
    kd_row = f"| kd | 3 (0, 1, 2) | {kd[0]:.4f} +- {kd[1]:.4f} | 0.9100 +- 0.0000 | - |"
    assert kd_row in lines
    assert f"| dist | 2 (0, 1) | {dist[0]:.4f} +- {dist[1]:.4f} | 0.9100 +- 0.0000 | - |" in lines
    assert len(lines) == 4
    # the same table and a figure are written under --out and logged to a run of their own
    md, png = tmp_path / "reports" / "methods.md", tmp_path / "reports" / "methods.png"
    assert kd_row in md.read_text() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exp = client.get_experiment_by_name("sweep")
    (report,) = client.search_runs([exp.experiment_id], "tags.`distillops.stage` = 'report'")
    assert sorted(a.path for a in client.list_artifacts(report.info.run_id, "report")) == [
        "report/methods.md",
        "report/methods.png",
    ]


def test_report_on_a_missing_experiment_says_what_to_do(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "report", "--tracking-uri", uri, "--experiment", "nope"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "no MLflow experiment 'nope'" in out.stderr and "dvc repro" in out.stderr


def test_each_metric_is_shown_in_its_own_unit():
    from pipeline.report import cell

    assert cell("student.parameters", [15734.0, 15734.0]) == "15,734"
    assert cell("compression.parameters", [28.7, 28.7]) == "28.70 +- 0.00x"
    assert cell("distill.gain", [0.0049, 0.0046, 0.0006]) == "+0.34 +- 0.24 pt"
    assert cell("distill.gap_closed", [0.25, 0.21]) == "+23 +- 3 %"
    assert cell("student.accuracy", [0.9117, 0.9107]) == "0.9112 +- 0.0007"
    assert cell("student.accuracy", []) == "-"


def test_report_reads_several_experiments_and_only_runs_since_a_time(tmp_path):
    """Seeds of one configuration logged to two experiments count together; --since drops older runs."""
    import time

    from pipeline.report import finished_evaluate_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    first, second = client.create_experiment("a"), client.create_experiment("b")
    now = time.time()
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(now - 3600))
    evaluate_run(client, first, 0, "kd", 0.90, start_time=int((now - 7200) * 1000))  # two hours ago
    evaluate_run(client, first, 1, "kd", 0.91)
    evaluate_run(client, second, 2, "kd", 0.92)
    assert len(finished_evaluate_runs(uri, "a,b")) == 3
    runs = finished_evaluate_runs(uri, "a, b", since)
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2"]
