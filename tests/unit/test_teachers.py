"""Imported teachers and starting points, on real files made here: a model trained with plain PyTorch on
real Fashion-MNIST images, saved as safetensors and .pt, exported to ONNX in another input format,
registered in a real MLflow store. Every bad input of teacher.source / *.init fails naming key and file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data import DataFormat, convert_images, load_fashion_mnist
from pipeline.errors import DistillopsError, ParamsError
from pipeline.params import ImportedTeacher, InitParams, InputSpec, PluginSpec, TeacherSource, parse_params
from pipeline.selection import create
from pipeline.teachers import (
    Ensemble,
    InputAdapter,
    OnnxTeacher,
    check_source,
    inspect_onnx,
    load_teacher,
    write_teacher,
)
from pipeline.weights import apply_init, load_into, read_state_dict
from tests.conftest import tiny_params_dict

FMT = DataFormat(tuple(str(i) for i in range(10)), 1, 28, 28, (0.286,), (0.353,))
LENET = PluginSpec("lenet5", {"hidden": [32]})


@pytest.fixture(scope="module")
def images():
    train, _test, _info = load_fashion_mnist(Path("data/raw"), "auto")
    return train.x[:1024], train.y[:1024]


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 60) -> nn.Module:
    """Plain PyTorch: a few AdamW steps on real images (no distillops training code)."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x).float() / 255.0, torch.from_numpy(y)
    for step in range(steps):
        idx = torch.arange(step * 64, step * 64 + 64) % len(xt)
        opt.zero_grad()
        F.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    """A lenet5 for the data's format, and an RGB 32x32 network, each trained here; their files."""
    folder = tmp_path_factory.mktemp("teachers")
    x, y = images
    model, _ = create("models", LENET, num_classes=10, in_channels=1, image_size=28, mean=0.286, std=0.353)
    _train(model, x, y)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "t.safetensors"))
    torch.save(model.state_dict(), folder / "t.pt")
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / "wrapped.pth"
    )
    torch.save(model, folder / "pickled.pt")  # a whole pickled module: code, not weights
    rgb = nn.Sequential(  # expects RGB 32x32 normalised with (x - 0.5) / 0.25, like an outside model
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)
    )
    x_rgb = convert_images(x, 3, 32, 32)

    class Norm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = rgb

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.net((t - 0.5) / 0.25)

    _train(Norm(), x_rgb, y)
    onnx_path = folder / "rgb32.onnx"
    torch.onnx.export(
        rgb,
        (torch.zeros(2, 3, 32, 32),),
        str(onnx_path),
        input_names=["image"],
        output_names=["scores"],
        dynamic_axes={"image": {0: "n"}},
        dynamo=False,
    )
    probs_path = folder / "probs.onnx"
    torch.onnx.export(
        nn.Sequential(model, nn.Softmax(dim=1)),
        (torch.zeros(2, 1, 28, 28),),
        str(probs_path),
        input_names=["x"],
        output_names=["p"],
        dynamic_axes={"x": {0: "n"}},
        dynamo=False,
    )
    return {
        "model": model,
        "rgb": rgb,
        "folder": folder,
        "onnx": onnx_path,
        "probs": probs_path,
        "x_rgb": x_rgb,
    }


def _accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((module(torch.from_numpy(x).float() / 255.0).argmax(1).numpy() == y).mean())


def _source(**member) -> TeacherSource:
    return TeacherSource((ImportedTeacher(**member),))


# --- weights files ---------------------------------------------------------------------------------------
def test_safetensors_pt_and_wrapped_checkpoints_give_the_same_teacher(trained, images, tmp_path):
    x, y = images
    expected = trained["model"](torch.from_numpy(x[:64]).float() / 255.0)
    for name in ("t.safetensors", "t.pt", "wrapped.pth"):
        src = _source(kind="weights", location=str(trained["folder"] / name), model=LENET)
        (member,) = check_source(src, FMT, tmp_path)
        with torch.no_grad():
            got = member.module(torch.from_numpy(x[:64]).float() / 255.0)
        assert torch.equal(got, expected), name
        assert member.provenance["sha256"] and member.features
    assert _accuracy(member.module, x, y) > 0.5  # trained: far above chance (0.1)


def test_a_pickled_model_is_refused_with_how_to_convert(trained):
    with pytest.raises(DistillopsError) as err:
        read_state_dict(trained["folder"] / "pickled.pt", "teacher.source.weights")
    message = str(err.value)
    assert "teacher.source.weights" in message and "pickled.pt" in message
    assert "weights_only" in message and "state_dict()" in message and "safetensors" in message


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (None, "missing.safetensors", "does not exist"),
        (b"\x00\x01garbage", "bad.safetensors", "cannot be read as safetensors"),
        (b"PK\x03\x04truncated", "bad.pt", "cannot be read by torch.load"),
        (b"{}", "weights.json", "has the suffix '.json'"),
    ],
)
def test_unreadable_weights_name_the_key_and_file(tmp_path, content, name, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DistillopsError, match=expected) as err:
        read_state_dict(path, "teacher.source.weights")
    assert "teacher.source.weights" in str(err.value) and name in str(err.value)


def test_keys_and_shapes_that_do_not_match_are_named(trained, tmp_path):
    wider = PluginSpec("lenet5", {"hidden": [64]})
    src = _source(kind="weights", location=str(trained["folder"] / "t.safetensors"), model=wider)
    with pytest.raises(DistillopsError, match="shapes differ") as err:
        check_source(src, FMT, tmp_path)
    assert "teacher.source" in str(err.value) and "t.safetensors" in str(err.value)
    assert "file (32," in str(err.value) and "model (64," in str(err.value)
    other = PluginSpec("resnet8", {})
    src = _source(kind="weights", location=str(trained["folder"] / "t.safetensors"), model=other)
    with pytest.raises(DistillopsError, match="missing in the file") as err:
        check_source(src, FMT, tmp_path)
    assert "not in the model" in str(err.value) and "in all" in str(err.value)


def test_a_class_count_that_differs_from_the_data_is_named(trained, tmp_path):
    five = DataFormat(tuple("abcde"), 1, 28, 28, (0.286,), (0.353,))
    src = _source(kind="weights", location=str(trained["folder"] / "t.safetensors"), model=LENET)
    with pytest.raises(DistillopsError, match="has 10 outputs .classes. and the data has 5 classes"):
        check_source(src, five, tmp_path)


def test_a_starting_point_replaces_a_head_of_another_class_count(trained, capsys):
    model, _ = create("models", LENET, num_classes=5, in_channels=1)
    notes = load_into(
        model, trained["model"].state_dict(), "student.init.weights", "t.pt", starting_point=True
    )
    assert any("replaced by a fresh one for 5 classes" in n for n in notes)
    conv = next(k for k in model.state_dict() if k.endswith("weight"))
    assert torch.equal(model.state_dict()[conv], trained["model"].state_dict()[conv])
    record = apply_init(
        model, InitParams(str(trained["folder"] / "t.safetensors")), "student.init", "lenet5", {}
    )
    assert record["init.sha256"] and "replaced" in capsys.readouterr().out


def test_torchvision_weights_come_from_the_local_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = PluginSpec("torchvision", {"arch": "resnet18"})
    model, _ = create("models", spec, num_classes=10, in_channels=1, image_size=32)
    init = InitParams("IMAGENET1K_V1")
    with pytest.raises(DistillopsError) as err:
        apply_init(model, init, "teacher.init", "torchvision", dict(spec.kwargs))
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "teacher.init.weights.download: true" in message
    import torchvision.models as tvm

    torch.manual_seed(1)
    imagenet_like = tvm.resnet18(num_classes=1000).state_dict()  # stands in for the published file
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(imagenet_like, cache / "resnet18-f37072fd.pth")
    record = apply_init(model, init, "teacher.init", "torchvision", dict(spec.kwargs))
    assert record["init"] == "torchvision IMAGENET1K_V1"
    assert torch.equal(model.net.layer1[0].conv1.weight, imagenet_like["layer1.0.conv1.weight"])
    assert torch.equal(model.net.conv1.weight, imagenet_like["conv1.weight"].sum(1, keepdim=True))
    assert model.net.fc.weight.shape[0] == 10


# --- ONNX -----------------------------------------------------------------------------------------------
def test_an_onnx_teacher_of_another_format_is_fed_converted_images(trained, images, tmp_path):
    x, y = images
    spec = InputSpec(mean=(0.5,), std=(0.25,))
    (member,) = check_source(_source(kind="onnx", location=str(trained["onnx"]), input=spec), FMT, tmp_path)
    info = member.onnx[1]
    assert (info.channels, info.height, info.width, info.layout) == (3, 32, 32, "nchw")
    assert info.found["image_size"] == "file" and info.found["mean"] == "params" and not member.features
    with torch.no_grad():  # the same as the network on images converted the way prepare converts them
        expected = trained["rgb"]((torch.from_numpy(trained["x_rgb"][:64]).float() / 255.0 - 0.5) / 0.25)
        got = member.module(torch.from_numpy(x[:64]).float() / 255.0)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.9
    assert _accuracy(member.module, x, y) > 0.4


def test_probabilities_are_detected_and_converted_to_log_space(trained, images, tmp_path):
    x, _ = images
    (member,) = check_source(_source(kind="onnx", location=str(trained["probs"])), FMT, tmp_path)
    assert member.onnx[1].output == "probabilities"
    with torch.no_grad():
        got = member.module(torch.from_numpy(x[:16]).float() / 255.0)
        expected = F.log_softmax(trained["model"](torch.from_numpy(x[:16]).float() / 255.0), 1)
    assert torch.allclose(got, expected, atol=1e-4)


def test_onnx_inputs_that_cannot_take_these_images_are_refused(trained, tmp_path):
    flat = tmp_path / "flat.onnx"
    torch.onnx.export(nn.Linear(784, 10), (torch.zeros(1, 784),), str(flat), dynamo=False)
    with pytest.raises(DistillopsError, match=r"has 2 dimensions .* \[batch, C, H, W\]") as err:
        inspect_onnx(flat, "teacher.source", None, None, FMT)
    assert "flat.onnx" in str(err.value)
    with pytest.raises(DistillopsError, match="fixes it at 32"):
        inspect_onnx(trained["onnx"], "teacher.source", InputSpec(image_size=28), None, FMT)
    five = DataFormat(tuple("abcde"), 1, 28, 28, (0.286,), (0.353,))
    with pytest.raises(DistillopsError, match="has 10 classes and the data has 5"):
        inspect_onnx(trained["onnx"], "teacher.source", None, None, five)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(DistillopsError, match="cannot be read as an ONNX model"):
        inspect_onnx(junk, "teacher.source", None, None, FMT)


# --- ensembles, adapters, saving and loading back --------------------------------------------------------
def test_an_ensemble_averages_the_members_probabilities_with_their_weights():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    with torch.no_grad():
        got = Ensemble([a, b], [3.0, 1.0])(x)
        expected = (0.75 * F.softmax(a(x), 1) + 0.25 * F.softmax(b(x), 1)).log()
    assert torch.allclose(got, expected, atol=1e-6)


def test_the_adapter_converts_as_prepare_does():
    x = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    got = InputAdapter(3, (32, 32), data_shape=(1, 28, 28))(torch.from_numpy(x).float() / 255.0)
    expected = torch.from_numpy(convert_images(x, 3, 32, 32)).float() / 255.0
    assert (got - expected).abs().max() < 1.5 / 255  # prepare rounds to uint8, the adapter does not


def test_an_ensemble_is_written_and_read_back_as_the_same_teacher(trained, images, tmp_path):
    x, _ = images
    src = TeacherSource(
        (
            ImportedTeacher("weights", str(trained["folder"] / "t.safetensors"), LENET, weight=2.0),
            ImportedTeacher("onnx", str(trained["onnx"]), input=InputSpec(mean=(0.5,), std=(0.25,))),
        )
    )
    members = check_source(src, FMT, tmp_path / "work")
    built = Ensemble([m.module for m in members], [2.0, 1.0])
    write_teacher(tmp_path / "teacher", members, src, FMT, {"imported": True})
    loaded, meta = load_teacher(tmp_path / "teacher", "cpu", FMT.shape)
    assert meta["kind"] == "ensemble" and [m["weight"] for m in meta["members"]] == [2.0, 1.0]
    assert isinstance(loaded.members[1], OnnxTeacher)
    batch = torch.from_numpy(x[:32]).float() / 255.0
    with torch.no_grad():
        assert torch.allclose(loaded(batch), built(batch), atol=1e-5)


# --- MLflow ---------------------------------------------------------------------------------------------
def test_a_registered_onnx_teacher_resolves_its_alias_to_a_version(trained, mlflow_store, tmp_path, images):
    import mlflow
    import onnx

    mlflow.set_tracking_uri(mlflow_store)
    with mlflow.start_run():
        mlflow.onnx.log_model(
            onnx.load(str(trained["probs"])), name="teacher", registered_model_name="teachers"
        )
    client = mlflow.tracking.MlflowClient(mlflow_store)
    client.set_registered_model_alias("teachers", "champion", "1")
    src = _source(kind="mlflow", location="models:/teachers@champion")
    (member,) = check_source(src, FMT, tmp_path)
    assert member.provenance["version"] == "1" and member.provenance["resolved"] == "models:/teachers/1"
    assert member.kind == "onnx" and member.onnx[1].output == "probabilities"
    with pytest.raises(DistillopsError, match="is not in the MLflow store") as err:
        check_source(_source(kind="mlflow", location="models:/teachers@nope"), FMT, tmp_path)
    assert "teacher.source.mlflow" in str(err.value)


def test_an_unreachable_store_fails_in_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(DistillopsError, match="cannot be reached") as err:
        check_source(_source(kind="mlflow", location="models:/teachers@champion"), FMT, tmp_path)
    assert time.perf_counter() - start < 30
    assert "teacher.source.mlflow" in str(err.value) and "127.0.0.1:9" in str(err.value)


# --- params ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"onnx": "a.onnx", "weights": "b.pt"}, "teacher.source: needs exactly one of"),
        ({"weights": "b.pt"}, "teacher.source.model: a weights file needs the model plugin"),
        ({"onnx": "a.onnx", "input": {"chanels": 3}}, "did you mean 'teacher.source.input.channels'"),
        (
            [{"onnx": "a.onnx"}, {"onnx": "b.onnx", "weight": 0}],
            r"teacher.source\[1\].weight: expected a number > 0",
        ),
        ({"onnx": "a.onnx", "output": "probs"}, "teacher.source.output: 'probs' is not one of"),
        ("trian", "teacher.source: expected train, or"),
    ],
)
def test_bad_teacher_sources_fail_naming_the_key(source, expected):
    raw = tiny_params_dict(**{"teacher.source": source})
    with pytest.raises(ParamsError, match=expected):
        parse_params(raw)


def test_a_distillops_model_logged_to_a_run_is_taken_by_its_runs_uri(trained, mlflow_store, tmp_path, images):
    import mlflow

    from pipeline.modelio import save_model
    from pipeline.selection import Selected

    folder = tmp_path / "teacher"
    selected = Selected.resolve("teacher.model", "models", LENET)
    save_model(
        folder,
        trained["model"],
        LENET,
        10,
        1,
        selected.info,
        {},
        {"image_size": 28, "mean": 0.286, "std": 0.353},
    )
    mlflow.set_tracking_uri(mlflow_store)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "teacher")
    (member,) = check_source(
        _source(kind="mlflow", location=f"runs:/{run.info.run_id}/teacher"), FMT, tmp_path / "w"
    )
    assert member.kind == "plugin" and member.provenance["run_id"] == run.info.run_id
    x, _ = images
    batch = torch.from_numpy(x[:32]).float() / 255.0
    with torch.no_grad():
        assert torch.equal(member.module(batch), trained["model"](batch))
