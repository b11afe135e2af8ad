"""A third party's plugin package, really installed (pip, into a separate site folder), selected only
through `dvc exp run -S`, runs the whole pipeline on a tiny configuration; its distribution and version
show up in the MLflow tags. The same run uses offline augmentation: prepare materialises the copies
with the third-party augmenter, teacher and distill train on them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, tiny_params_dict
from tests.stages.conftest import copy_repo, sh

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "distillops-example-plugins"
PROVENANCE = "distillops-example-plugins==0.1.0"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, pipeline_env):
    site = tmp_path_factory.mktemp("site")
    source = shutil.copytree(EXAMPLE, tmp_path_factory.mktemp("src") / EXAMPLE.name)  # builds write here
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        + ["--target", str(site), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    env = {**pipeline_env, "PYTHONPATH": str(site)}
    repo = copy_repo(tmp_path_factory.mktemp("clone"))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        sh(cmd, repo, env)
    listed = json.loads(sh(["distillops", "plugins", "list", "--json"], repo, env).stdout)
    run = sh(
        [
            "dvc",
            "exp",
            "run",
            "distill",  # the plugins act up to here; export and evaluate are tested elsewhere
            "-n",
            "third-party",
            "-S",
            "augment.ops=[{name: gaussian_noise, std: 0.08}]",
            "-S",
            "augment.mode=offline",
            "-S",
            "augment.copies=2",
            "-S",
            "distill.augment=true",
            "-S",
            "distill.epochs=3",
            "-S",
            "distill.losses=[{name: logit_huber, delta: 2.0, weight: 0.5}, {name: ce, weight: 0.5}]",
        ],
        repo,
        env,
    )
    return repo, env, listed, run, source


def test_plugins_list_shows_the_installed_package(experiment):
    _, _, listed, _, _ = experiment
    rows = {(r["group"], r["name"]): r for r in listed}
    assert rows[("losses", "logit_huber")]["distribution"] == PROVENANCE
    assert rows[("augmenters", "gaussian_noise")]["status"] == "ok"


def test_runs_carry_the_third_party_distribution_and_version(experiment):
    from mlflow.tracking import MlflowClient

    repo, *_ = experiment
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("distillops")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    by_stage = {
        r.data.tags.get("distillops.stage"): r for r in runs if "distillops.variant" not in r.data.tags
    }
    assert by_stage["distill"].data.tags["plugins.losses.logit_huber"] == PROVENANCE
    assert by_stage["distill"].data.params["distill.losses.0.name"] == "logit_huber"
    for stage in ("prepare", "teacher", "distill"):
        assert by_stage[stage].data.tags["plugins.augmenters.gaussian_noise"] == PROVENANCE, stage
    assert all(by_stage[s].info.status == "FINISHED" for s in by_stage if s)
    history = client.get_metric_history(by_stage["distill"].info.run_id, "student.loss_logit_huber")
    assert [m.step for m in history] == [1, 2, 3]


def test_offline_copies_were_materialised_and_used(experiment):
    repo, _, _, run, _ = experiment
    manifest = json.loads((repo / "data/augmented/manifest.json").read_text())
    assert manifest["mode"] == "offline" and manifest["copies"] == 2
    with np.load(repo / "data/augmented/copies.npz") as npz:
        assert npz["x"].shape == (2, 512, 1, 28, 28)
        assert not np.array_equal(npz["x"][0], npz["x"][1])
    assert "2 offline augmented copies" in run.stdout
    # 3 distillation epochs over 2 copies: the teacher's logits are computed twice, not three times
    assert "teacher logits: 2 passes for 3 epochs" in run.stdout


def test_dvc_exp_show_lists_the_experiment_with_its_params(experiment):
    repo, env, *_ = experiment
    shown = sh(["dvc", "exp", "show", "--json"], repo, env).stdout
    assert "third-party" in shown and "logit_huber" in shown and "gaussian_noise" in shown


def test_the_package_own_tests_pass_once_installed(experiment):
    _, env, _, _, source = experiment
    result = sh(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], source, env, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout
