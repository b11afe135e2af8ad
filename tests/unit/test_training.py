from __future__ import annotations

import signal

import numpy as np
import pytest
import torch

from pipeline import interrupts
from pipeline.data import Split
from pipeline.errors import PluginError, TrainingDiverged
from pipeline.loss_set import LossSet, feature_taps
from pipeline.params import LossSpec, PluginSpec
from pipeline.registry import PluginInfo
from pipeline.selection import Plugin, create
from pipeline.training import Runtime, Trainer
from tests.conftest import train_cfg

CPU = torch.device("cpu")
CFG = train_cfg(epochs=2, batch_size=32, lr=3e-3, augment=True)
RUNTIME = Runtime(CPU, 0, 10, progress=False)


def build_losses(specs, stage):
    return LossSet.from_specs(specs, stage)


def build_augmenters(specs, stage):
    return [Plugin(*create("augmenters", spec), stage, spec=spec) for spec in specs]


def toy_split(n: int, seed: int) -> Split:
    """Two classes that differ in brightness: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.random((n, 1, 28, 28)) * 100 + y[:, None, None, None] * 120).astype(np.uint8)
    return Split(x, y.astype(np.int64))


def student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _ = create("models", PluginSpec("lenet5"), num_classes=10, in_channels=1)
    return model


def fake_info(group: str, name: str) -> PluginInfo:
    return PluginInfo(group, name, f"acme:{name}", "acme-plugins", "9.9")


def trainer(model, losses=None, augs=None, checkpoint=None, cfg=CFG, teacher=None) -> Trainer:
    return Trainer(
        "teacher",
        model,
        losses or build_losses([LossSpec("ce")], "teacher"),
        cfg,
        RUNTIME,
        augmenters=augs if augs is not None else build_augmenters([PluginSpec("flip")], "teacher"),
        teacher=teacher,
        checkpoint=checkpoint,
    )


def test_training_learns_and_reports_per_epoch_metrics(tmp_path):
    train, val = toy_split(256, 0), toy_split(128, 1)
    result = trainer(student(), checkpoint=tmp_path / "c.pt").fit(train, val)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.history[-1]["val_accuracy"] > 0.9
    assert {"train_loss", "val_loss", "lr", "loss_ce"} <= set(result.history[0])
    assert (tmp_path / "c.pt").exists()


def test_each_loss_term_is_logged_separately():
    teacher = student(1).eval()
    losses = build_losses([LossSpec("kd", {"temperature": 2.0}, 0.5), LossSpec("ce", {}, 0.5)], "distill")
    result = trainer(student(), losses, teacher=teacher).fit(toy_split(64, 0), toy_split(32, 1))
    row = result.history[0]
    assert row["loss_kd"] > 0 and row["loss_ce"] > 0
    assert row["train_loss"] == pytest.approx(0.5 * row["loss_kd"] + 0.5 * row["loss_ce"], rel=1e-4)


def test_kd_without_teacher_is_refused():
    with pytest.raises(PluginError, match="need a teacher"):
        trainer(student(), build_losses([LossSpec("kd")], "distill"))


class InterruptAfter:
    """A label-preserving augmenter that delivers SIGTERM (as the signal handler would) on call n."""

    def __init__(self, n: int) -> None:
        self.calls, self.n = 0, n

    def __call__(self, x, y, g):
        self.calls += 1
        if self.calls == self.n:
            interrupts._state["pending"] = signal.SIGTERM
        return x, y


def test_interrupted_run_resumes_bit_identically(tmp_path):
    train, val = toy_split(200, 0), toy_split(64, 1)
    flip = build_augmenters([PluginSpec("flip"), PluginSpec("crop")], "teacher")
    ref_model = student()
    reference = trainer(ref_model, augs=flip).fit(train, val)

    ckpt = tmp_path / "ckpt.pt"
    stopper = Plugin(
        InterruptAfter(10), fake_info("augmenters", "stopper"), "teacher"
    )  # mid epoch 2 (7 steps/epoch)
    with pytest.raises(interrupts.StageInterrupted):
        trainer(student(), augs=[*flip, stopper], checkpoint=ckpt).fit(train, val)
    assert ckpt.exists()
    state = torch.load(ckpt, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 3)

    resumed_model = student(seed=123)  # different init: everything must come from the checkpoint
    passthrough = Plugin(lambda x, y, g: (x, y), fake_info("augmenters", "stopper"), "teacher")
    resumed = trainer(resumed_model, augs=[*flip, passthrough], checkpoint=ckpt).fit(train, val)
    assert resumed.resumed_from == 1
    assert resumed.history == reference.history
    for (name, a), (_, b) in zip(
        ref_model.state_dict().items(), resumed_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_nan_loss_stops_within_a_step_and_writes_no_checkpoint(tmp_path):
    calls = []

    def nan_loss(inputs):
        calls.append(1)
        return inputs.student_logits.sum() * float("nan")

    nan_loss.requires_teacher = False
    model = student()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = LossSet([(Plugin(nan_loss, fake_info("losses", "nanny"), "teacher"), 1.0)], "teacher")
    with pytest.raises(TrainingDiverged, match="nan"):
        trainer(model, losses, checkpoint=tmp_path / "c.pt").fit(toy_split(64, 0), toy_split(32, 1))
    assert len(calls) == 1
    assert not (tmp_path / "c.pt").exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plugin_raising_at_run_time_names_plugin_and_stage():
    def boom(x, y, g):
        raise RuntimeError("kaboom")

    augs = [Plugin(boom, fake_info("augmenters", "boom"), "teacher")]
    with pytest.raises(PluginError) as err:
        trainer(student(), augs=augs).fit(toy_split(64, 0), toy_split(32, 1))
    message = str(err.value)
    assert "'boom'" in message and "acme-plugins==9.9" in message and "stage 'teacher'" in message
    assert "kaboom" in message


def test_checkpoint_for_other_settings_is_not_resumed(tmp_path):
    ckpt = tmp_path / "c.pt"
    trainer(student(), checkpoint=ckpt).fit(toy_split(64, 0), toy_split(32, 1))
    other = train_cfg(epochs=2, batch_size=16, lr=3e-3)
    result = trainer(student(), checkpoint=ckpt, cfg=other).fit(toy_split(64, 0), toy_split(32, 1))
    assert result.resumed_from is None


def test_feature_taps_capture_and_are_removed():
    model = student()
    with feature_taps(model, ["features", "classifier"]) as feats:
        model(torch.rand(2, 1, 28, 28))
        assert feats["features"].shape[0] == 2 and "classifier" in feats
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(PluginError, match="does not have"), feature_taps(model, ["nope"]):
        pass


def test_checkpoint_resumes_only_the_same_augmenter_settings_architecture_and_data(tmp_path):
    ckpt = tmp_path / "c.pt"
    flip = build_augmenters([PluginSpec("flip", {"p": 0.5})], "teacher")
    trainer(student(), augs=flip, checkpoint=ckpt).fit(toy_split(64, 0), toy_split(32, 1))
    same = trainer(
        student(), augs=build_augmenters([PluginSpec("flip", {"p": 0.5})], "teacher"), checkpoint=ckpt
    )
    assert same.fit(toy_split(64, 0), toy_split(32, 1)).resumed_from == 2  # (all epochs done: nothing left)
    other_p = build_augmenters([PluginSpec("flip", {"p": 0.2})], "teacher")
    assert (
        trainer(student(), augs=other_p, checkpoint=ckpt).fit(toy_split(64, 0), toy_split(32, 1)).resumed_from
        is None
    )
    trainer(student(), augs=flip, checkpoint=ckpt).fit(toy_split(64, 0), toy_split(32, 1))
    assert (
        trainer(student(), augs=flip, checkpoint=ckpt).fit(toy_split(64, 5), toy_split(32, 1)).resumed_from
        is None
    )
    wider, _ = create("models", PluginSpec("lenet5", {"width": 2.0}), num_classes=10, in_channels=1)
    trainer(student(), augs=flip, checkpoint=ckpt).fit(toy_split(64, 0), toy_split(32, 1))
    assert (
        trainer(wider, augs=flip, checkpoint=ckpt).fit(toy_split(64, 0), toy_split(32, 1)).resumed_from
        is None
    )


def test_checkpoint_of_a_distilled_student_needs_the_same_teacher(tmp_path):
    ckpt = tmp_path / "c.pt"
    losses = [LossSpec("kd", {"temperature": 2.0}, 0.5), LossSpec("ce", {}, 0.5)]
    trainer(student(), build_losses(losses, "distill"), checkpoint=ckpt, teacher=student(1).eval()).fit(
        toy_split(64, 0), toy_split(32, 1)
    )
    again = trainer(student(), build_losses(losses, "distill"), checkpoint=ckpt, teacher=student(1).eval())
    assert again.fit(toy_split(64, 0), toy_split(32, 1)).resumed_from == 2
    retrained = trainer(
        student(), build_losses(losses, "distill"), checkpoint=ckpt, teacher=student(2).eval()
    )
    assert retrained.fit(toy_split(64, 0), toy_split(32, 1)).resumed_from is None
