"""Built-in losses. Each factory returns a callable ``loss(inputs: LossInputs) -> scalar``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.protocols import LossInputs


class CrossEntropy:
    r"""Cross-entropy against the (possibly soft) target rows, with optional label smoothing.

    .. math:: \mathcal{L} = -\frac{1}{B}\sum_i \sum_k \tilde y_{ik} \log \mathrm{softmax}(z_i)_k,
       \quad \tilde y = (1-\varepsilon)\, y + \varepsilon / K

    Label smoothing: Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016.
    """

    requires_teacher = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        targets = inputs.targets
        if self.label_smoothing:
            targets = (1 - self.label_smoothing) * targets + self.label_smoothing / targets.shape[1]
        logp = F.log_softmax(inputs.student_logits.float(), dim=1)
        return -(targets * logp).sum(dim=1).mean()


class KnowledgeDistillation:
    r"""Soft-target distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
    Network", 2015).

    .. math:: \mathcal{L} = T^2 \cdot \frac{1}{B}\sum_i \mathrm{KL}\big(\mathrm{softmax}(t_i/T)\,\|\,
       \mathrm{softmax}(s_i/T)\big)

    The :math:`T^2` factor keeps the gradient scale independent of the temperature, so the weight of
    this term relative to a hard-label term need not change when T does.
    """

    requires_teacher = True

    def __init__(self, temperature: float = 4.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        if inputs.teacher_logits is None:
            raise ValueError("kd needs teacher logits, but no teacher is in play")
        t = self.temperature
        log_p_student = F.log_softmax(inputs.student_logits.float() / t, dim=1)
        log_p_teacher = F.log_softmax(inputs.teacher_logits.float() / t, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        return kl * (t * t)


def ce(label_smoothing: float = 0.0) -> CrossEntropy:
    """Cross-entropy on the target rows (optionally label-smoothed)."""
    return CrossEntropy(label_smoothing=label_smoothing)


def kd(temperature: float = 4.0) -> KnowledgeDistillation:
    """Hinton et al. 2015 soft-target KL at temperature T, scaled by T^2."""
    return KnowledgeDistillation(temperature=temperature)
