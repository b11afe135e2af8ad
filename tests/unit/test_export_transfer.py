from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from pipeline.data import FASHION_CLASSES
from pipeline.errors import DistillopsError
from pipeline.onnx_model import check_parity, export_onnx, ort_session
from pipeline.params import PluginSpec
from pipeline.selection import create
from pipeline.transfer import Unfreezing, find_head, transfer_weights


def lenet(seed: int, classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create("models", PluginSpec("lenet5"), num_classes=classes, in_channels=1)[0].eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = lenet(0)
    path = export_onnx(
        model, tmp_path_factory.mktemp("onnx") / "m.onnx", torch.rand(2, 1, 28, 28), 18, FASHION_CLASSES
    )
    return model, path


def test_export_has_a_dynamic_batch_axis(exported):
    _, path = exported
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[1:]] == [1, 28, 28]
    session = ort_session(path)
    for b in (1, 7, 32, 100):
        assert session.run(None, {"pixels": np.zeros((b, 1, 28, 28), np.float32)})[0].shape == (b, 10)


def test_parity_passes_for_the_exported_model(exported):
    model, path = exported
    images = (np.random.default_rng(0).random((40, 1, 28, 28)) * 255).astype(np.uint8)
    report = check_parity(model, path, images, (1, 7, 32), 1e-4)
    assert set(report) == {"1", "7", "32"}
    assert all(r["max_abs_diff"] <= 1e-4 and r["same_argmax"] for r in report.values())


def test_parity_fails_when_onnx_and_torch_disagree(exported):
    _, path = exported
    images = (np.random.default_rng(0).random((40, 1, 28, 28)) * 255).astype(np.uint8)
    with pytest.raises(DistillopsError, match=r"m.onnx: ONNX Runtime disagrees with PyTorch at batch 1"):
        check_parity(lenet(1), path, images, (1, 7, 32), 1e-4)


def test_auto_head_is_the_fully_connected_layers_after_the_last_conv():
    assert find_head(lenet(0)) == ("classifier.1", "classifier.3", "fc")
    resnet = create("models", PluginSpec("resnet8"), num_classes=10, in_channels=1)[0]
    assert find_head(resnet) == ("fc",)
    mlp = create("models", PluginSpec("mlp"), num_classes=10, in_channels=1)[0]
    assert find_head(mlp) == ("fc",)


def test_transfer_copies_everything_but_the_head():
    source, target = lenet(0), lenet(1, classes=5)
    report = transfer_weights(source, target, find_head(target))
    assert set(report["fresh"]) == {
        f"{m}.{p}" for m in ("classifier.1", "classifier.3", "fc") for p in ("weight", "bias")
    }
    assert {"features.0.weight", "features.3.bias"} <= set(report["copied"])
    for key in report["copied"]:
        assert torch.equal(source.state_dict()[key], target.state_dict()[key])
    assert target.fc.out_features == 5


def test_transfer_replaces_head_even_when_class_count_matches():
    source, target = lenet(0), lenet(1)
    fresh_head = target.fc.weight.clone()
    transfer_weights(source, target, ("fc",))
    assert torch.equal(target.fc.weight, fresh_head)
    assert torch.equal(target.features[0].weight, source.features[0].weight)


def test_named_head_must_exist():
    with pytest.raises(DistillopsError, match=r"transfer.head \['nope'\] not found"):
        find_head(lenet(0), ("nope",))
    assert find_head(lenet(0), ("fc",)) == ("fc",)


def test_predict_reports_top_classes_with_chosen_labels(exported, tmp_path, capsys):
    import json

    from pipeline import predict

    model, path = exported
    images = (np.random.default_rng(1).random((3, 28, 28)) * 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", images)
    assert (
        predict.main([str(path), str(tmp_path / "x.npy"), "--top", "3", "--labels", "index", "--json"]) == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = model(torch.from_numpy(images[:, None].astype(np.float32) / 255)).argmax(1).tolist()
    assert [r["predictions"][0]["class"] for r in rows] == expected
    assert all(len(r["predictions"]) == 3 and r["predictions"][0]["label"].isdigit() for r in rows)
    predict.main([str(path), str(tmp_path / "x.npy"), "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["predictions"][0]["label"] for r in rows] == [FASHION_CLASSES[k] for k in expected]


def test_exported_model_answers_probabilities_too(exported):
    model, path = exported
    x = np.random.default_rng(2).random((5, 1, 28, 28)).astype(np.float32)
    logits, probs = ort_session(path).run(["logits", "probabilities"], {"pixels": x})
    expected = torch.softmax(model(torch.from_numpy(x)), 1).detach().numpy()
    assert np.allclose(probs, expected, atol=1e-5) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_distillops_predict_reads_real_image_files_of_any_size_without_torch(exported, tmp_path):
    """Real Fashion-MNIST test images saved as PNG and JPEG, grey and RGB, at other sizes: `distillops
    predict` (a real subprocess in which importing torch fails) gives the same classes and probabilities
    as the model on the same pixels, as text and as JSON."""
    import json
    import subprocess
    import sys

    from PIL import Image

    from pipeline.data import DEBIAN_DIR, read_idx

    model, path = exported
    images = read_idx(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz")[:4]
    files = []
    for i, (img, (size, mode, ext)) in enumerate(
        zip(
            images,
            [(28, "L", "png"), (56, "RGB", "png"), (100, "L", "jpg"), (28, "RGB", "jpeg")],
            strict=True,
        )
    ):
        pic = Image.fromarray(img).convert(mode).resize((size, size))
        pic.save(tmp_path / f"item{i}.{ext}", quality=100)
        files.append(str(tmp_path / f"item{i}.{ext}"))
    block_torch = "import sys; sys.modules['torch'] = None; from pipeline.cli import main; main(sys.argv[1:])"
    run = subprocess.run(
        [sys.executable, "-c", block_torch, "predict", str(path), *files, "--top", "2", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["source"] for r in rows] == files
    from pipeline import predict  # the same reading, in this process, to compare with the model itself

    pixels = predict.load_images(files, (1, 28, 28))
    expected = torch.softmax(model(torch.from_numpy(pixels)), 1).detach().numpy()
    for row, probs in zip(rows, expected, strict=True):
        assert [p["class"] for p in row["predictions"]] == np.argsort(-probs)[:2].tolist()
        assert row["predictions"][0]["probability"] == pytest.approx(float(probs.max()), abs=1e-4)
    text = subprocess.run(
        [sys.executable, "-c", block_torch, "predict", str(path), files[0]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert text.startswith(f"{files[0]}: {FASHION_CLASSES[int(expected[0].argmax())]} ")


def test_exported_model_carries_its_class_names(exported):
    from pipeline.predict import Model

    _, path = exported
    model = Model(str(path))
    assert model.classes == FASHION_CLASSES and model.shape == (1, 28, 28)


def _frozen(model: torch.nn.Module) -> dict[str, bool]:
    """Parameter name -> whether it is frozen."""
    return {name: not p.requires_grad for name, p in model.named_parameters()}


def test_linear_probe_keeps_the_copied_body_frozen_and_in_eval_mode():
    model = create("models", PluginSpec("resnet8"), num_classes=10, in_channels=1)[0].train()
    unfreeze = Unfreezing("linear_probe", ("auto",), epochs=6)
    for epoch in range(6):
        unfreeze(model, epoch)
        frozen = _frozen(model)
        assert not frozen["fc.weight"] and not frozen["fc.bias"]
        assert all(frozen[n] for n in frozen if not n.startswith("fc."))
        assert not model.stem[1].training and model.fc.training  # frozen BatchNorm keeps its statistics


def test_gradual_unfreezing_goes_from_the_top_down_and_is_complete_by_the_middle_epoch():
    model = lenet(0).train()
    unfreeze = Unfreezing("gradual", ("auto",), epochs=4)  # body: features.0 and features.3
    seen = []
    for epoch in range(4):
        unfreeze(model, epoch)
        frozen = _frozen(model)
        assert not any(frozen[n] for n in frozen if n.startswith(("classifier.", "fc.")))  # the head
        seen.append((frozen["features.0.weight"], frozen["features.3.weight"]))
    assert seen == [(True, True), (True, False), (False, False), (False, False)]


def test_layers_frozen_at_the_start_are_trained_once_unfrozen():
    from pipeline.loss_set import LossSet
    from pipeline.params import LossSpec
    from pipeline.training import Trainer
    from tests.conftest import train_cfg
    from tests.unit.test_training import RUNTIME, toy_split

    model = lenet(0).train()
    first_conv = model.features[0].weight.detach().clone()
    probe = lenet(0).train()
    cfg = train_cfg(epochs=3, batch_size=32, augment=False)
    for m, variant in ((model, "gradual"), (probe, "linear_probe")):
        Trainer(
            "transfer",
            m,
            LossSet.from_specs([LossSpec("ce")], "transfer"),
            cfg,
            RUNTIME,
            before_epoch=Unfreezing(variant, ("auto",), cfg.epochs),
        ).fit(toy_split(96, 0), toy_split(32, 1))
    assert not torch.equal(model.features[0].weight, first_conv)  # unfrozen at epoch 2, then trained
    assert torch.equal(probe.features[0].weight, first_conv)  # never unfrozen: untouched
    assert not torch.equal(probe.fc.weight, lenet(0).fc.weight)  # the head trained


def _saved_sources(tmp_path):
    """params whose teacher and distilled student folders hold small saved models, and tiny target splits."""
    from dataclasses import replace

    from pipeline.modelio import save_model
    from pipeline.selection import Selections
    from tests.conftest import repo_params
    from tests.unit.test_training import toy_split

    params = repo_params()
    names = ("teacher", "student", "transferred", "scratch")
    paths = replace(params.paths, checkpoints=str(tmp_path / "c"), **{n: str(tmp_path / n) for n in names})
    cfg = replace(params.transfer, epochs=1, batch_size=16)
    params = replace(params, paths=paths, transfer=cfg, runtime=replace(params.runtime, progress=False))
    plugins = Selections.resolve(params)
    for name, key in (("teacher", "teacher.model"), ("student", "student.model")):
        torch.manual_seed(1)
        sel = plugins.model(key)
        save_model(tmp_path / name, sel.build_model(10, 1), sel.spec, 10, 1, sel.info, {})
    splits = {"finetune": toy_split(48, 0), "val": toy_split(16, 1), "test": toy_split(16, 2)}
    return params, plugins, splits


def _toy_format(splits):
    from pipeline.data import DataFormat

    return DataFormat.of(splits["finetune"].x, [str(c) for c in range(10)])


@pytest.mark.parametrize("order", ["distil_then_transfer", "transfer_then_distil"])
def test_both_orders_train_the_student_architecture_against_the_same_scratch_baseline(tmp_path, order):
    import contextlib
    import io
    import json
    from dataclasses import replace

    from pipeline.modelio import load_model
    from pipeline.tracking import Tracker
    from pipeline.transfer import ADAPTED_TEACHER, Plan, target_training

    params, plugins, splits = _saved_sources(tmp_path)
    params = replace(params, transfer=replace(params.transfer, order=order))
    plan = Plan.of(params, plugins)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        fitted, metrics = plan.train(target_training(params, plugins, splits, _toy_format(splits)), Tracker())
    student_cls = type(load_model(tmp_path / "student")[0])
    assert isinstance(fitted["transferred"].model, student_cls) and isinstance(
        fitted["scratch"].model, student_cls
    )
    transferred = tmp_path / "transferred"
    if order == "distil_then_transfer":
        assert "teacher" not in fitted and "adapted_teacher_accuracy" not in metrics
        assert json.loads((transferred / "transfer.json").read_text())["source"] == "distilled student"
    else:
        teacher_cls = type(load_model(tmp_path / "teacher")[0])
        assert isinstance(fitted["teacher"].model, teacher_cls)
        adapted = transferred / ADAPTED_TEACHER
        assert json.loads((adapted / "transfer.json").read_text())["source"] == "teacher"
        assert (
            metrics["adapted_teacher_accuracy"]
            == json.loads((adapted / "model.json").read_text())["test_accuracy"]
        )
        meta = json.loads((transferred / "model.json").read_text())
        assert meta["order"] == order and meta["distilled_from"] == f"transferred/{ADAPTED_TEACHER}"
        assert "copied" in out.getvalue() and "from the teacher" in out.getvalue()
