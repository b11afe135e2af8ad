"""Training the variants of a stage's model: what is saved, and sub-model weight transfer."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import torch
from safetensors.torch import load_file

from pipeline.data import Split
from pipeline.loss_set import LossSet
from pipeline.params import LossSpec, WarmStart
from pipeline.selection import Selections
from pipeline.tracking import Tracker
from pipeline.training import Trainer
from pipeline.variants import StageTraining, Variant
from tests.conftest import repo_params, train_cfg
from tests.unit.test_training import RUNTIME, toy_split

CFG = train_cfg(epochs=2, batch_size=32, augment=False)


def training(tmp_path, warm_start=None) -> StageTraining:
    params = repo_params()
    paths = replace(
        params.paths, student=str(tmp_path / "student"), checkpoints=str(tmp_path / "checkpoints")
    )
    params = replace(params, paths=paths)
    splits = {"train": toy_split(200, 0), "val": toy_split(64, 1), "test": toy_split(64, 2)}
    model = Selections.resolve(params).model("student.model")
    return StageTraining("distill", params, CFG, model, RUNTIME, splits, warm_start=warm_start)


def fit(t: StageTraining):
    with contextlib.redirect_stdout(io.StringIO()):
        return t.run(Tracker(), [Variant("student", LossSet.from_specs([LossSpec("ce")], "distill"))])


def test_a_variant_is_saved_with_its_sidecar_and_history_and_its_checkpoint_removed(tmp_path):
    fitted = fit(training(tmp_path))["student"]
    meta = json.loads((tmp_path / "student" / "model.json").read_text())
    assert meta["test_accuracy"] == fitted.test_accuracy and meta["epochs"] == 2 and "warm_start" not in meta
    assert (tmp_path / "student" / "history.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert not list((tmp_path / "checkpoints").glob("*"))


def test_warm_start_trains_a_seeded_subset_first_and_continues_from_its_weights(tmp_path):
    t = training(tmp_path, WarmStart(fraction=0.25, epochs=3))
    fit(t)
    meta = json.loads((tmp_path / "student" / "model.json").read_text())
    assert {k: meta["warm_start"][k] for k in ("fraction", "epochs", "images")} == {
        "fraction": 0.25,
        "epochs": 3,
        "images": 50,
    }
    assert not list((tmp_path / "checkpoints").glob("*"))  # both phases' checkpoints removed when done

    # the same two phases by hand: 3 epochs on the seeded 50 images, then 2 on all 200, same model
    torch.manual_seed(0)
    model = t.model.build_model(t.fmt.num_classes, t.fmt.channels, t.fmt.model_kwargs())
    train = t.splits["train"]
    idx = np.sort(np.random.default_rng([0, 1]).permutation(len(train))[:50])
    losses = LossSet.from_specs([LossSpec("ce")], "distill")
    with contextlib.redirect_stdout(io.StringIO()):
        Trainer("distill", model, losses, replace(CFG, epochs=3), RUNTIME).fit(
            Split(train.x[idx], train.y[idx]), t.splits["val"]
        )
        Trainer("distill", model, losses, CFG, RUNTIME).fit(train, t.splits["val"])
    saved = load_file(str(tmp_path / "student" / "model.safetensors"))
    for name, value in model.state_dict().items():
        assert torch.equal(saved[name], value), name

    plain = fit(training(tmp_path / "plain"))["student"]
    assert not torch.equal(plain.model.fc.weight, model.fc.weight)  # the warm start changed the result


def test_a_variant_with_its_own_epochs_trains_and_records_them(tmp_path):
    """distill.baseline_epochs: the student alone trains its own schedule beside the stage's."""
    t = training(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        fitted = t.run(
            Tracker(), [Variant("student", LossSet.from_specs([LossSpec("ce")], "distill"), epochs=1)]
        )["student"]
    meta = json.loads((tmp_path / "student" / "model.json").read_text())
    assert len(fitted.history) == 1 and meta["epochs"] == 1 and CFG.epochs == 2
