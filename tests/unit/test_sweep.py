"""distillops sweep: the search space file, the -S overrides, and workers opening one study at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import sweep
from pipeline.errors import DistillopsError
from tests.conftest import at_once


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_a_space_reads_into_dimensions_with_a_validation_objective(tmp_path):
    space = sweep.load_space(
        write(
            tmp_path,
            "fixed: {distill.epochs: 3}\n"
            "objective: {metric: student.val_accuracy, latency_penalty: 0.01}\n"
            "params:\n"
            "  distill.losses.0.temperature: {float: [1, 8], log: true}\n"
            "  distill.batch_size: {int: [64, 256], step: 64}\n"
            "  student.model.name: {choice: [lenet5, mlp]}\n",
        )
    )
    assert [d.kind for d in space.dimensions] == ["float", "int", "choice"]
    assert space.dimensions[0].log and space.dimensions[1].step == 64
    assert space.fixed == {"distill.epochs": 3} and space.target == "evaluate"
    assert sweep.load_space(write(tmp_path, "params: {seed: {int: [0, 9]}}\n")).target == "distill"


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("params: {}\n", "params"),
        ("params: {a: {float: [2, 1]}}\n", "params.a.float"),
        ("params: {a: {float: [0, 1], log: true}}\n", "params.a: log"),
        ("params: {a: {float: [0, 1], int: [0, 1]}}\n", "exactly one"),
        ("params: {a: {choice: []}}\n", "params.a.choice"),
        ("params: {a: {float: [0, 1], steps: 2}}\n", "steps"),
        ("params: {a: 3}\n", "params.a"),
        ("params: {a: {int: [0, 3]}}\nobjective: {metric: student.test_accuracy}\n", "test-split"),
        ("params: {a: {int: [0, 3]}}\nsearch: {}\n", "search"),
        ("params: [\n", "cannot read"),
    ],
)
def test_a_wrong_space_names_its_key(tmp_path, text, names):
    with pytest.raises(DistillopsError, match=names.replace("[", r"\[")):
        sweep.load_space(write(tmp_path, text))


def test_overrides_are_yaml_values_dvc_reads_back():
    assert sweep.overrides({"a.b": 0.5, "c": "lenet5", "d": [1, 2], "e": {"name": "kd"}, "f": True}) == [
        "a.b=0.5",
        "c=lenet5",
        "d=[1, 2]",
        "e={name: kd}",
        "f=true",
    ]


def test_workers_starting_together_on_a_fresh_storage_all_open_the_study(tmp_path):
    import optuna  # imported before the fork: the workers start at once

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    outcomes, _ = at_once(lambda: sweep._open_study("s", storage, seed=None), 3)
    assert outcomes == ["ok"] * 3
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]
