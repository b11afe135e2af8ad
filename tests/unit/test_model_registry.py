"""Aliases of the registered student in a real (SQLite) MLflow model registry."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline import model_registry as mr

NAME = "distillops-student"


def test_decide_rules():
    assert mr.decide({"accuracy": 0.5, "latency_ms": 0.1}, None, 0.002, 1.0) == (
        True,
        "there was no champion yet",
    )
    promote, why = mr.decide({"accuracy": 0.905, "latency_ms": 0.1}, {"accuracy": 0.904}, 0.002, 1.0)
    assert not promote and "0.9050 < champion's 0.9040 + margin 0.002" in why
    assert mr.decide({"accuracy": 0.906, "latency_ms": 0.1}, {"accuracy": 0.904}, 0.002, None)[0]
    promote, why = mr.decide({"accuracy": 0.99, "latency_ms": 2.5}, {"accuracy": 0.5}, 0.0, 1.0)
    assert not promote and "exceeds mlflow.champion_max_latency_ms = 1" in why
    promote, why = mr.decide({"accuracy": 0.99, "latency_ms": 2.5}, None, 0.0, 1.0)
    assert not promote  # the bound holds for the first version too


@pytest.fixture
def registry(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model(NAME)

    def new_version() -> str:
        version = client.create_model_version(NAME, source=str(tmp_path), run_id=None).version
        mr.mark_candidate(client, NAME, version, {"git_commit": "abc", "dvc_experiment": "exp-1"})
        return str(version)

    return client, new_version


def evaluate(client, version, accuracy, latency=0.03):
    measured = {"accuracy": accuracy, "latency_ms": latency, "onnx_bytes": 70_000}
    return mr.evaluate_candidate(client, NAME, version, measured, f"v{version}", 0.002, 1.0)


def test_candidate_and_champion_move_as_the_rules_say(registry):
    client, new_version = registry
    v1 = new_version()
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == v1
    first = evaluate(client, v1, 0.9100)
    assert first.promoted and first.describe(NAME, v1).endswith(
        "v1 is the new champion: there was no champion yet"
    )
    v2 = new_version()
    worse = evaluate(client, v2, 0.9110)  # better, but by less than the margin
    assert not worse.promoted and worse.champion == v1
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == v2
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v1
    v3 = new_version()
    slow = evaluate(client, v3, 0.95, latency=3.0)
    assert not slow.promoted and "exceeds" in slow.reason
    v4 = new_version()
    better = evaluate(client, v4, 0.9125)
    assert better.promoted and str(client.get_model_version_by_alias(NAME, "champion").version) == v4
    again = evaluate(client, v4, 0.9125)  # evaluate rerun on the same version
    assert not again.promoted and again.reason == "it already is the champion"
    mv = client.get_model_version(NAME, v4)
    assert mv.tags["accuracy"] == "0.9125" and mv.tags["onnx_bytes"] == "70000"
    assert mv.tags["git_commit"] == "abc" and mv.tags["dvc_experiment"] == "exp-1"
    assert mv.description == f"v{v4}"
    assert set(mv.aliases) == {"candidate", "champion"}
