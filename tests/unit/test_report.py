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
    assert lines[0] == "| configuration | seeds | student.accuracy | teacher.accuracy | distill.gain |"
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


class FakeRun:
    """What group_runs reads of an MLflow run."""

    def __init__(self, start: int, params: dict, metrics: dict | None = None, tags: dict | None = None):
        from types import SimpleNamespace

        self.info = SimpleNamespace(start_time=start)
        self.data = SimpleNamespace(params=params, metrics=metrics or {}, tags=tags or {})


def test_configurations_are_labelled_by_what_differs_that_matters():
    """Losses in words, other params as key=value; empty params and keys renamed between versions of the
    pipeline (data.dataset -> data.dataset.name, data.source -> data.dataset.source) make no group and
    no label of their own."""
    from pipeline.report import group_runs

    old = {"data.dataset": "fashion_mnist", "data.source": "auto", "distill.warm_start.epochs": ""}
    new = {"data.dataset.name": "fashion_mnist", "data.dataset.source": "auto", "distill.warm_start": "null"}
    kd = {"distill.losses.0.name": "kd", "distill.losses.0.temperature": "3.0", "distill.losses.1.name": "ce"}
    runs = [
        FakeRun(1, {**old, **kd, "seed": "0"}, {"student.accuracy": 0.91}),
        FakeRun(2, {**new, **kd, "seed": "1"}, {"student.accuracy": 0.92}),  # same configuration, renamed
        FakeRun(3, {**new, **kd, "distill.losses.0.standardize": "True", "seed": "0"}),
        FakeRun(
            4, {**new, **kd, "distill.losses.0.standardize": "False", "distill.losses.0.temperature": "2.0"}
        ),
        FakeRun(
            5, {**new, **kd, "distill.losses.0.name": "dkd", "distill.losses.0.beta": "2.0", "seed": "0"}
        ),
        FakeRun(6, {**new, **kd, "distill.exclude_classes": "[3]", "seed": "0"}),
    ]
    varying, groups = group_runs(runs, ["student.accuracy"])
    assert not any(k.startswith(("data.", "distill.warm_start")) for k in varying)
    by_label = {g.label: g for g in groups}
    assert set(by_label) == {
        "kd T=3",
        "kd T=3 standardize",
        "kd T=2",
        "dkd T=3 beta=2",
        "kd T=3, exclude_classes=[3]",
    }
    assert by_label["kd T=3"].seeds == ["0", "1"] and by_label["kd T=3"].values["student.accuracy"] == [
        0.91,
        0.92,
    ]


def test_a_param_most_groups_leave_alone_is_named_on_the_groups_that_change_it():
    """batch_size=64 in one of four configurations labels that one; the three at 128 are not all labelled
    batch_size=128. With two groups neither value is the usual one, so both are named; a value shared by
    half of the groups only is not the usual one either."""
    from pipeline.report import group_runs

    kd = {"distill.losses.0.name": "kd", "distill.losses.0.temperature": "3.0", "distill.batch_size": "128"}
    runs = [
        FakeRun(1, {**kd, "distill.epochs": "30"}),
        FakeRun(2, {**kd, "distill.epochs": "60"}),
        FakeRun(3, {**kd, "distill.epochs": "60", "distill.batch_size": "64"}),
        FakeRun(4, {**kd, "distill.epochs": "30", "distill.losses.0.temperature": "2.0"}),
    ]
    _, groups = group_runs(runs, [])
    assert sorted(g.label for g in groups) == [
        "kd T=2, epochs=30",
        "kd T=3, batch_size=64, epochs=60",
        "kd T=3, epochs=30",
        "kd T=3, epochs=60",
    ]
    _, groups = group_runs(runs[1:3], [])
    assert sorted(g.label for g in groups) == ["batch_size=128", "batch_size=64"]
    # two groups change the teacher, each its own way: the other three are not labelled teacher=plain
    teacher = [{**kd, "benchmark.teacher": t} for t in ("plain", "plain", "plain", "flips", "seeds")]
    teacher[1]["distill.losses.0.temperature"] = "2.0"
    teacher[2]["distill.losses.0.temperature"] = "4.0"
    _, groups = group_runs([FakeRun(i, c) for i, c in enumerate(teacher)], [])
    assert sorted(g.label for g in groups) == [
        "kd T=2",
        "kd T=3",
        "kd T=3, teacher=flips",
        "kd T=3, teacher=seeds",
        "kd T=4",
    ]


def test_loss_weights_show_when_they_differ_and_dvc_names_when_nothing_else_does():
    from pipeline.report import group_runs

    a = {"distill.losses.0.name": "kd", "distill.losses.0.weight": "0.5", "distill.losses.1.name": "ce"}
    b = {**a, "distill.losses.0.weight": "0.9", "distill.losses.1.weight": "0.1"}
    _, groups = group_runs([FakeRun(1, a), FakeRun(2, b)], [])
    assert [g.label for g in groups] == ["0.5 kd + ce", "0.9 kd + 0.1 ce"]
    same = {"distill.epochs": "30"}
    _, groups = group_runs([FakeRun(1, same, tags={"distillops.dvc_experiment": "baseline"})], [])
    assert [g.label for g in groups] == ["all runs"]


def test_a_store_under_the_working_directory_is_named_relative_to_it(tmp_path):
    from pipeline.report import display_uri

    assert display_uri(f"sqlite:///{tmp_path}/mlflow.db", tmp_path) == "sqlite:///mlflow.db"
    assert display_uri(f"sqlite:///{tmp_path}/sub/m.db", tmp_path) == "sqlite:///sub/m.db"
    assert display_uri("sqlite:////elsewhere/mlflow.db", tmp_path) == "sqlite:////elsewhere/mlflow.db"
    assert display_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


def test_the_figure_shows_each_configuration_and_its_legend_covers_no_plot():
    import matplotlib.pyplot as plt

    from pipeline.report import Group, draw

    metrics = {"teacher.accuracy": [0.93, 0.92], "student_alone.accuracy": [0.90, 0.91]}
    metrics |= {
        "student.accuracy": [0.915, 0.92],
        "distill.gain": [0.015, 0.01],
        "distill.gap_closed": [0.5, 0.9],
    }
    groups = [Group({}, ["0", "1"], metrics, label=f"kd T={t} standardize") for t in range(1, 9)]
    fig = draw(groups)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["teacher", "student alone", "distilled student"]
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:
        assert box.y1 <= ax.get_tightbbox(renderer).y0 + 1, "the legend overlaps a plot"
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [f"kd T={t} standardize (2 seeds)" for t in range(1, 9)]
    assert [ax.get_xlabel() for ax in fig.axes][1:] == [
        "gain over the student alone (points)",
        "teacher-student gap closed (%)",
    ]
    plt.close(fig)
