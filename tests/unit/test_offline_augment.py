"""Offline augmentation (K materialised copies, teacher logits once per copy) and loss modules with
lazily sized parameters (materialised by the trainer before it builds the optimizer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import offline_copies
from pipeline.errors import DataError, DistillopsError
from pipeline.loss_set import LossSet
from pipeline.params import LossSpec, PluginSpec
from pipeline.protocols import LossInputs
from pipeline.selection import Plugin
from pipeline.training import Trainer
from tests.conftest import repo_params, train_cfg
from tests.unit.test_training import RUNTIME, build_augmenters, build_losses, fake_info, student, toy_split

CFG = train_cfg(epochs=4, batch_size=32, lr=3e-3)


def make_copies(split, ops, k=2, seed=0):
    return offline_copies.materialise(split, build_augmenters(ops, "prepare"), k, seed, 10)


def test_copies_are_deterministic_per_seed_and_differ_between_copies():
    split = toy_split(300, 0)
    ops = [PluginSpec("flip"), PluginSpec("crop", {"padding": 3})]
    a, b = make_copies(split, ops), make_copies(split, ops)
    assert a.x.shape == (2, 300, 1, 28, 28) and a.x.dtype == np.uint8
    assert a.targets.shape == (2, 300, 10) and a.targets.dtype == np.float32
    assert np.array_equal(a.x, b.x) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.x[0], a.x[1])  # each copy draws its own ops
    assert not np.array_equal(a.x[0], make_copies(split, ops, seed=1).x[0])
    # label-preserving ops: the rows are the one-hot labels
    assert np.array_equal(a.targets[0].argmax(1), split.y) and np.all(a.targets.max(2) == 1)


def test_label_mixing_copies_keep_soft_rows():
    copies = make_copies(toy_split(200, 0), [PluginSpec("mixup", {"alpha": 1.0})], k=1)
    rows = copies.targets[0]
    np.testing.assert_allclose(rows.sum(1), 1.0, atol=1e-5)
    assert (rows.max(1) < 0.999).mean() > 0.5  # most rows are mixtures


def test_write_and_load_round_trip_and_clear_errors(tmp_path):
    split = toy_split(64, 0)
    params = repo_params()
    copies = make_copies(split, [PluginSpec("flip")])
    with pytest.raises(DataError, match="dvc repro prepare"):
        offline_copies.load(tmp_path, len(split))
    manifest = offline_copies.write(tmp_path, params, len(split), copies)
    assert manifest["copies"] == 2 and manifest["train_count"] == 64
    loaded = offline_copies.load(tmp_path, len(split))
    assert np.array_equal(loaded.x, copies.x) and np.array_equal(loaded.targets, copies.targets)
    with pytest.raises(DataError, match="training split has 65"):
        offline_copies.load(tmp_path, 65)
    offline_copies.write(tmp_path, params, len(split), None)  # online mode: manifest only, no stale copies
    assert (
        not (tmp_path / offline_copies.COPIES).exists() and offline_copies.manifest(tmp_path)["copies"] == 0
    )


class CountingTeacher(nn.Module):
    """Wraps a model and counts the images it has seen."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.inner(x)


def distill_trainer(teacher, copies=None, augs=(), cfg=CFG, losses=None):
    specs = [LossSpec("kd", {"temperature": 2.0}, 0.5), LossSpec("ce", {}, 0.5)]
    return Trainer(
        "distill",
        student(),
        losses or build_losses(specs, "distill"),
        cfg,
        RUNTIME,
        augmenters=list(augs),
        teacher=teacher,
        copies=copies,
    )


def test_teacher_runs_once_per_copy_not_once_per_epoch():
    train, val = toy_split(96, 0), toy_split(32, 1)
    copies = make_copies(train, [PluginSpec("flip")], k=2)
    teacher = CountingTeacher(student(1).eval())
    t = distill_trainer(teacher, copies)
    result = t.fit(train, val)
    assert len(result.history) == 4
    assert t.teacher_passes == 2 and teacher.seen == 2 * 96  # 4 epochs, 2 copies: 2 passes


def test_copies_of_the_plain_split_train_exactly_like_the_plain_split():
    """Epoch e uses copy e mod K with the same data order: unaugmented copies must reproduce plain training."""
    train, val = toy_split(96, 0), toy_split(32, 1)
    plain = offline_copies.AugmentedCopies(
        np.stack([train.x, train.x]), np.stack([np.eye(10, dtype=np.float32)[train.y]] * 2)
    )
    a = distill_trainer(student(1).eval(), plain)
    a.fit(train, val)
    b = distill_trainer(student(1).eval())
    b.fit(train, val)
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert b.teacher_passes == 1


def test_offline_copies_and_online_augmenters_are_exclusive():
    train = toy_split(32, 0)
    copies = make_copies(train, [PluginSpec("flip")], k=1)
    with pytest.raises(DistillopsError, match="exclusive"):
        distill_trainer(student(1).eval(), copies, augs=build_augmenters([PluginSpec("flip")], "distill"))


class LazyHint(nn.Module):
    """A loss whose regressor is sized by the features it first sees (like FitNets)."""

    student_taps = ("classifier",)
    teacher_taps = ("features",)

    def __init__(self) -> None:
        super().__init__()
        self.regressor = nn.LazyLinear(16)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        target = inputs.teacher_features["features"].detach().float().mean(dim=(2, 3))
        return F.mse_loss(self.regressor(inputs.student_features["classifier"]), target)


def test_lazy_loss_parameters_are_materialised_trained_and_checkpointed(tmp_path):
    train, val = toy_split(64, 0), toy_split(32, 1)
    hint = LazyHint()
    losses = LossSet([(Plugin(hint, fake_info("losses", "lazy_hint"), "distill"), 1.0)], "distill")
    teacher = student(1).eval()
    t = distill_trainer(teacher, losses=losses, cfg=train_cfg(epochs=1, batch_size=32))
    t.checkpoint = tmp_path / "c.pt"
    bn_before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t._materialise_lazy((torch.from_numpy(train.x), torch.eye(10)[train.y]), mixes_unlabelled=False)
    assert hint.regressor.weight.shape == (16, 84)  # 84 = lenet5 classifier output
    assert all(torch.equal(bn_before[k], v) for k, v in t.model.state_dict().items())  # no update, eval mode
    w0 = hint.regressor.weight.detach().clone()
    t.fit(train, val)
    assert not torch.equal(w0, hint.regressor.weight)  # the optimizer trained it
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(state["loss_modules"]["0.regressor.weight"], hint.regressor.weight.detach())
