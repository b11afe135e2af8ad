"""runtime.precision and runtime.compile on the CPU: bf16 and fp16 autocast run the models' forward in
half precision while the losses stay float32, fp16 scales the loss (and checkpoints the scaler), and a
compiled model trains like the eager one."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.loss_set import LossSet
from pipeline.params import LossSpec
from pipeline.training import Runtime, Trainer
from tests.unit.ddp_case import CFG, model, toy_split

CPU = torch.device("cpu")


def distill(precision: str = "fp32", compile: bool = False, checkpoint=None, epochs: int = 1):
    """A student distilled on toy data; the dtypes the student's last layer produced, and the trainer."""
    runtime = Runtime(CPU, 0, 10, progress=False, precision=precision, compile=compile)
    losses = LossSet.from_specs(
        [LossSpec("kd", {"temperature": 4.0}, 0.7), LossSpec("ce", {}, 0.3)], "distill"
    )
    student = model(0, 32)
    seen: list[torch.dtype] = []
    if not compile:
        student.classifier.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    cfg = CFG.__class__(**{**CFG.__dict__, "epochs": epochs})
    trainer = Trainer(
        "distill", student, losses, cfg, runtime, teacher=model(1, 64).eval(), checkpoint=checkpoint
    )
    result = trainer.fit(toy_split(256, 0), toy_split(64, 1))
    return result, set(seen), trainer


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_autocast_runs_the_forward_in_the_chosen_precision_and_the_losses_in_float32(precision, dtype):
    result, dtypes, trainer = distill(precision)
    assert dtypes == {dtype}  # training steps and the validation pass
    row = result.history[-1]
    assert all(math.isfinite(row[k]) for k in ("train_loss", "loss_kd", "loss_ce", "val_loss"))
    assert (trainer.scaler is not None) == (precision == "fp16")


def test_half_precision_lands_near_float32():
    full, _, _ = distill("fp32", epochs=2)
    half, _, _ = distill("bf16", epochs=2)
    assert half.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=0.05)


def test_fp16_checkpoints_its_grad_scaler(tmp_path):
    distill("fp16", checkpoint=tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0


def test_a_compiled_student_and_teacher_train_like_eager_ones():
    eager, _, _ = distill("fp32")
    compiled, _, trainer = distill("fp32", compile=True)
    assert isinstance(trainer.net, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(trainer.teacher_net, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.history[-1]["train_loss"] == pytest.approx(eager.history[-1]["train_loss"], rel=1e-4)
