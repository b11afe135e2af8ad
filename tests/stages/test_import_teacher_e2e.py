"""End to end: a real `dvc repro` distils from teachers the pipeline did not train. One tiny pipeline for
the module: an ensemble of a state dict (trained here with plain PyTorch) and an ONNX model that takes RGB
32x32 normalised images; then the same ONNX file registered in a real MLflow store, taken by its alias."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from pipeline.data import convert_images, load_fashion_mnist
from pipeline.selection import create
from tests.conftest import tiny_params_dict
from tests.stages.conftest import copy_repo, sh
from tests.unit.test_teachers import LENET, _train

pytestmark = pytest.mark.slow


def _teacher_files(folder) -> None:
    from pathlib import Path

    from safetensors.torch import save_file

    train, _test, _info = load_fashion_mnist(Path("data/raw"), "auto")
    x, y = train.x[:1024], train.y[:1024]
    model, _ = create("models", LENET, num_classes=10, in_channels=1, image_size=28, mean=0.286, std=0.353)
    _train(model, x, y)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "lenet.safetensors"))
    torch.save(model.state_dict(), folder / "lenet.pt")
    rgb = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)
    )
    _train(rgb, convert_images(x, 3, 32, 32), y)
    torch.onnx.export(
        rgb,
        (torch.zeros(2, 3, 32, 32),),
        str(folder / "rgb32.onnx"),
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "n"}},
        dynamo=False,
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory, pipeline_env):
    repo = copy_repo(tmp_path_factory.mktemp("clone"))
    _teacher_files(repo / "teachers")
    source = [
        {"weights": "teachers/lenet.safetensors", "model": {"name": "lenet5", "hidden": [32]}, "weight": 2},
        {"onnx": "teachers/rgb32.onnx"},
    ]
    (repo / "params.yaml").write_text(
        yaml.safe_dump(tiny_params_dict(**{"teacher.source": source}), sort_keys=False)
    )
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        sh(cmd, repo, pipeline_env)
    env = {**pipeline_env, "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    result = sh(["dvc", "repro"], repo, env)
    return repo, env, result


def test_an_ensemble_of_a_state_dict_and_an_rgb_onnx_model_is_distilled(imported):
    repo, _env, result = imported
    assert "teacher.source[1]: ONNX rgb32.onnx" in result.stdout and "[batch, 3, 32, 32]" in result.stdout
    assert "an ensemble of 2 imported, used as is" in result.stdout
    meta = json.loads((repo / "models/teacher/model.json").read_text())
    assert meta["kind"] == "ensemble" and [m["weight"] for m in meta["members"]] == [2.0, 1.0]
    onnx_meta = json.loads((repo / "models/teacher/members/1/model.json").read_text())
    assert onnx_meta["onnx"]["channels"] == 3 and onnx_meta["onnx"]["height"] == 32
    assert len(onnx_meta["source"]["sha256"]) == 64
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["teacher.accuracy"] > 0.5 and 0 <= metrics["student.accuracy"] <= 1
    assert not (repo / "models/onnx/teacher.onnx").exists()  # an ensemble is measured as it is
    assert (repo / "models/onnx/student.onnx").is_file()


def test_the_teacher_run_records_each_member_and_its_provenance(imported):
    import mlflow

    repo, env, _ = imported
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`distillops.stage` = 'teacher'"
    )
    (run,) = runs
    assert run.data.tags["distillops.teacher.source"] == "ensemble"
    assert run.data.tags["distillops.teacher.member1.path"] == "teachers/rgb32.onnx"
    for key in ("member0.test_accuracy", "member1.test_accuracy", "test_accuracy", "val_accuracy"):
        assert 0 <= run.data.metrics[key] <= 1, key
    assert run.data.params["epochs"] == "0"


def test_replacing_a_teacher_file_reruns_the_teacher_stage(imported):
    repo, env, _ = imported
    assert "modified" not in sh(["dvc", "status", "teacher"], repo, env).stdout
    onnx = repo / "teachers/rgb32.onnx"
    saved = onnx.read_bytes()
    onnx.write_bytes(saved + b"\0")  # another file under the same name
    try:
        after = sh(["dvc", "status", "teacher"], repo, env).stdout
    finally:
        onnx.write_bytes(saved)
    assert "teachers" in after and "modified" in after
    assert "modified" not in sh(["dvc", "status", "teacher"], repo, env).stdout


def test_a_registered_teacher_is_taken_by_its_alias(imported):
    import mlflow
    import onnx

    repo, env, _ = imported
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    with mlflow.start_run(experiment_id=mlflow.create_experiment("teachers")):
        mlflow.onnx.log_model(
            onnx.load(str(repo / "teachers/rgb32.onnx")), name="t", registered_model_name="rgb"
        )
    mlflow.tracking.MlflowClient().set_registered_model_alias("rgb", "champion", "1")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"]["source"] = {"mlflow": "models:/rgb@champion"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh(["dvc", "repro"], repo, env)
    assert "an ONNX model imported, used as is" in result.stdout
    meta = json.loads((repo / "models/teacher/model.json").read_text())
    assert meta["source"]["version"] == "1" and meta["source"]["resolved"] == "models:/rgb/1"
    assert "the teacher is an ONNX model" in result.stdout
    # export leaves it as it is; evaluate runs and times it on its own RGB 32x32 input
    assert "teacher: not exported, it is an ONNX model" in result.stdout
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["teacher.onnx_accuracy"] == metrics["teacher.accuracy"] > 0.5
    assert metrics["teacher.onnx_bytes"] == (repo / "models/teacher/teacher.onnx").stat().st_size
    assert metrics["teacher.latency_ms.onnx_b1"] > 0 and "teacher.latency_ms.torch_b1" not in metrics
    assert metrics["compression.latency_onnx_b1"] > 0 and "compression.latency_torch_b1" not in metrics


def test_a_pt_state_dict_gives_the_same_teacher_as_its_safetensors(imported):
    repo, env, _ = imported
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"]["source"] = {
        "weights": "teachers/lenet.pt",
        "model": {"name": "lenet5", "hidden": [32]},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh(["dvc", "repro", "teacher"], repo, env)
    assert "a PyTorch model imported, used as is" in result.stdout
    from safetensors.torch import load_file

    got = load_file(str(repo / "models/teacher/model.safetensors"))
    expected = load_file(str(repo / "teachers/lenet.safetensors"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    meta = json.loads((repo / "models/teacher/model.json").read_text())
    assert meta["source"]["path"] == "teachers/lenet.pt" and len(meta["source"]["sha256"]) == 64
