"""The unlabelled pool (data.unlabelled_fraction) and the scored transfer set (distill.procedure: scored)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import prepare
from pipeline.data import UNLABELLED, Split, one_hot
from pipeline.distill import scored_transfer_set
from pipeline.errors import DistillopsError, ParamsError
from pipeline.loss_set import LossSet
from pipeline.params import LossSpec
from pipeline.protocols import LossInputs
from pipeline.selection import Selections
from pipeline.tracking import Tracker
from pipeline.variants import StageTraining, Variant
from tests.conftest import repo_params
from tests.unit.test_training import RUNTIME, student, toy_split, train_cfg


def source_splits(fraction: float, train_limit=None):
    params = repo_params()
    params = replace(params, data=replace(params.data, unlabelled_fraction=fraction, train_limit=train_limit))
    train, test = toy_split(1000, 0), toy_split(100, 1)
    params = replace(params, data=replace(params.data, val_size=100))
    return train, prepare.split_source(train, test, params)


def test_the_pool_is_a_share_of_the_training_split_without_labels_and_disjoint_from_it():
    _, plain = source_splits(0.0)
    assert "unlabelled" not in plain  # the default writes the same splits as before the pool existed
    _, splits = source_splits(0.3)
    pool, train = splits["unlabelled"], splits["train"]
    assert len(pool) == 270 and len(train) == 630  # 30% of the 900 training images
    assert (pool.y == UNLABELLED).all() and (train.y >= 0).all()
    # the pool and the labelled split together are exactly the old training split, in the same order
    np.testing.assert_array_equal(np.concatenate([pool.x, train.x]), plain["train"].x)
    assert splits["val"].x.shape == plain["val"].x.shape


def test_a_pool_that_leaves_no_labelled_image_is_refused():
    with pytest.raises(ParamsError, match="data.unlabelled_fraction"):
        source_splits(0.999, train_limit=10)


def test_unlabelled_images_get_zero_target_rows():
    rows = one_hot(torch.tensor([2, UNLABELLED, 0]), 4)
    assert rows.tolist() == [[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]


def test_losses_that_use_labels_see_only_labelled_rows_and_teacher_losses_see_all():
    losses = LossSet.from_specs([LossSpec("ce"), LossSpec("kd")], "distill")
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    targets = one_hot(torch.tensor([1, 2, UNLABELLED, 3, UNLABELLED, 4]), 10)
    labelled = targets.sum(1) > 0
    _, (ce, kd) = losses(LossInputs(logits, teacher, targets, targets.argmax(1), labelled=labelled))
    keep = labelled.nonzero().squeeze(1)
    assert torch.isclose(ce, F.cross_entropy(logits[keep], targets[keep].argmax(1)))
    _, (_, kd_all) = losses(LossInputs(logits, teacher, targets, targets.argmax(1)))
    assert torch.isclose(kd, kd_all)  # kd ignores labels: the whole batch either way
    nobody = torch.zeros(6, dtype=torch.bool)
    _, (ce_none, _) = losses(LossInputs(logits, teacher, targets * 0, targets.argmax(1), labelled=nobody))
    assert ce_none.item() == 0.0


def pooled(n_labelled: int, n_pool: int) -> Split:
    data = toy_split(n_labelled + n_pool, 3)
    y = data.y.copy()
    y[:n_pool] = UNLABELLED
    return Split(data.x, y)


def test_a_student_learns_from_the_pool_through_kd_and_counts_accuracy_on_labelled_rows_only(tmp_path):
    from pipeline.training import Trainer

    teacher = student(1)
    losses = LossSet.from_specs([LossSpec("ce"), LossSpec("kd")], "distill")
    cfg = train_cfg(epochs=1, batch_size=32, augment=False)
    t = Trainer("distill", student(0), losses, cfg, RUNTIME, teacher=teacher)
    with contextlib.redirect_stdout(io.StringIO()):
        history = t.fit(pooled(100, 100), toy_split(32, 4)).history
    assert 0.0 <= history[0]["train_accuracy"] <= 1.0 and np.isfinite(history[0]["loss_ce"])
    assert t.teacher_passes == 1  # the teacher scored labelled and unlabelled images alike


def test_a_pool_with_only_label_losses_is_refused_by_name():
    from pipeline.training import Trainer

    losses = LossSet.from_specs([LossSpec("ce")], "distill")
    t = Trainer("distill", student(0), losses, train_cfg(epochs=1, augment=False), RUNTIME)
    with pytest.raises(DistillopsError, match="unlabelled images.*kd or pseudo_label"):
        t.fit(pooled(50, 50), toy_split(32, 4))


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_the_scored_transfer_set_is_the_training_split_and_pool_labelled_by_the_teacher(tmp_path, kind):
    params = repo_params()
    splits = {"train": toy_split(60, 0), "unlabelled": pooled(0, 40), "val": toy_split(20, 1)}
    model = Selections.resolve(params).model("student.model")
    training = StageTraining("distill", params, train_cfg(), model, RUNTIME, splits)
    teacher = student(5)
    scored = scored_transfer_set(training, teacher, kind)
    images = np.concatenate([splits["train"].x, splits["unlabelled"].x])
    np.testing.assert_array_equal(scored.x, images)
    with torch.no_grad():
        probs = F.softmax(teacher.eval()(torch.from_numpy(images).float() / 255), dim=1)
    assert (scored.y == probs.argmax(1).numpy()).all()  # the teacher's labels, never the true ones
    expected = one_hot(probs.argmax(1), 10) if kind == "hard" else probs
    np.testing.assert_allclose(scored.targets, expected.numpy(), atol=1e-5)


def test_a_variant_trains_on_its_own_transfer_set_and_records_how(tmp_path):
    params = repo_params()
    paths = replace(params.paths, student=str(tmp_path / "s"), checkpoints=str(tmp_path / "c"))
    params = replace(params, paths=paths)
    model = Selections.resolve(params).model("student.model")
    splits = {"train": toy_split(64, 0), "val": toy_split(32, 1), "test": toy_split(32, 2)}
    cfg = train_cfg(epochs=3, batch_size=32, lr=3e-3, augment=False)
    training = StageTraining("distill", params, cfg, model, RUNTIME, splits)
    # a transfer set whose targets say the opposite of the labels: the student must learn the targets
    flipped = toy_split(256, 7)
    rows = one_hot(torch.from_numpy(1 - flipped.y), 10).numpy()
    own = Split(flipped.x, 1 - flipped.y, rows)
    variant = Variant(
        "student", LossSet.from_specs([LossSpec("ce")], "distill"), train=own, meta={"why": "x"}
    )
    with contextlib.redirect_stdout(io.StringIO()):
        fitted = training.run(Tracker(), [variant])["student"]
    assert json.loads((tmp_path / "s" / "model.json").read_text())["why"] == "x"
    print(fitted.history[-1]["train_accuracy"], fitted.test_accuracy)
    assert fitted.history[-1]["train_accuracy"] > 0.9  # it learnt `own`'s targets...
    assert fitted.test_accuracy < 0.1  # ...which contradict the true labels the test split holds


def test_the_scored_procedure_does_not_combine_with_warm_start_nor_the_pool_with_left_out_classes():
    from pipeline.params import parse_params
    from tests.conftest import tiny_params_dict

    raw = tiny_params_dict()
    raw["distill"]["procedure"] = "scored"
    raw["distill"]["warm_start"] = {"fraction": 0.5, "epochs": 1}
    with pytest.raises(ParamsError, match="distill.warm_start"):
        parse_params(raw)
    raw = tiny_params_dict()
    raw["data"]["unlabelled_fraction"] = 0.5
    raw["distill"]["exclude_classes"] = [1]
    with pytest.raises(ParamsError, match="distill.exclude_classes"):
        parse_params(raw)
    raw = tiny_params_dict()
    raw["distill"]["procedure"] = "teacherless"
    with pytest.raises(ParamsError, match="distill.procedure"):
        parse_params(raw)
