"""Example third-party plugins for distillops: installed with pip, selected in params.yaml."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_noise(std: float = 0.05, p: float = 1.0):
    """Add Gaussian pixel noise (std in [0, 1] pixel units) to each image with probability p, clamped to [0, 1]."""
    if std < 0 or not 0 <= p <= 1:
        raise ValueError(f"need std >= 0 and p in [0, 1], got std={std}, p={p}")

    def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * std
        keep = (torch.rand(x.shape[0], generator=g, device=x.device) < p).to(x.dtype)[:, None, None, None]
        return (x + noise * keep).clamp_(0.0, 1.0), y

    return augment


class LogitHuber:
    r"""Huber loss between student and teacher logits (a robust variant of logit matching,
    Ba and Caruana, "Do Deep Nets Really Need to be Deep?", 2014):
    :math:`\frac{1}{BK}\sum_{ik} \mathrm{huber}_\delta(s_{ik} - t_{ik})`."""

    requires_teacher = True

    def __init__(self, delta: float = 1.0) -> None:
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.delta = float(delta)

    def __call__(self, inputs) -> torch.Tensor:
        return F.huber_loss(inputs.student_logits.float(), inputs.teacher_logits.float(), delta=self.delta)


def logit_huber(delta: float = 1.0) -> LogitHuber:
    """Huber distance between student and teacher logits."""
    return LogitHuber(delta)
