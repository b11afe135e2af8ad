"""Stage entry points fail fast and clearly on bad input (real subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, tiny_params_dict


def run_stage(stage: str, params: dict, cwd) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'm.db'}"}
    return subprocess.run(
        [sys.executable, "-m", f"pipeline.{stage}", "--params", "params.yaml"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_params_typo_fails_naming_file_and_key(tmp_path):
    params = tiny_params_dict()
    params["teacher"]["epoch"] = params["teacher"].pop("epochs")
    result = run_stage("teacher", params, tmp_path)
    assert result.returncode == 2
    assert "params.yaml: teacher.epoch: unknown key (did you mean 'teacher.epochs'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_plugin_fails_before_any_work(tmp_path):
    params = tiny_params_dict()
    params["distill"]["losses"] = [{"name": "kdd"}]
    result = run_stage("prepare", params, tmp_path)  # even the first stage checks every selection
    assert result.returncode == 2
    assert "unknown losses plugin 'kdd'. Did you mean 'kd'?" in result.stderr
    assert not (tmp_path / "data").exists()


def test_missing_inputs_say_which_stage_to_run(tmp_path):
    result = run_stage("teacher", tiny_params_dict(), tmp_path)
    assert result.returncode == 2
    assert "run the prepare stage first" in result.stderr


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("distill", "losses", [{"name": "kd", "temperature": 0}], "distill.losses[0]"),
        ("augment", "ops", [{"name": "flip", "p": 2}], "augment.ops[0]"),
        ("student", "model", {"name": "lenet5", "width": -1}, "student.model"),
        ("teacher", "model", {"name": "resnet8", "widths": [0, 0, 0]}, "teacher.model"),
    ],
)
def test_a_bad_plugin_value_fails_at_the_first_stage_naming_the_key(tmp_path, section, key, value, named):
    """Every stage builds every selected plugin before any work: a value the plugin rejects stops even
    `prepare`, long before the stage that uses it."""
    params = tiny_params_dict()
    params[section][key] = value
    result = run_stage("prepare", params, tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"error: stage 'prepare': {named}: " in result.stderr
    assert f"plugin '{value[0]['name'] if isinstance(value, list) else value['name']}'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_params_file_that_is_not_utf8_gets_one_line_naming_it(tmp_path):
    (tmp_path / "params.yaml").write_bytes(b"seed: 0\ncomment: caf\xe9\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.teacher"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[0].startswith("error: stage 'teacher': params.yaml: not UTF-8")
    assert "Traceback" not in result.stderr
