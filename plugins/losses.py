"""Built-in losses. Each factory returns a callable ``loss(inputs: LossInputs) -> scalar``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.protocols import LossInputs


def _require_teacher(inputs: LossInputs, name: str) -> None:
    if inputs.teacher_logits is None:
        raise ValueError(f"{name} needs teacher logits, but no teacher is in play")


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
        _require_teacher(inputs, "kd")
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


class LogitMSE:
    r"""Logit matching (Ba and Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014).

    .. math:: \mathcal{L} = \frac{1}{BK}\sum_{i,k} (s_{ik} - t_{ik})^2
    """

    requires_teacher = True

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "mse_logits")
        return F.mse_loss(inputs.student_logits.float(), inputs.teacher_logits.float())


class PseudoLabel:
    r"""Cross-entropy on the teacher's argmax (hard pseudo-labels), e.g. for unlabelled data
    (Lee, "Pseudo-Label", ICML 2013 workshop; the teacher-student form of Xie et al. 2020).

    .. math:: \mathcal{L} = -\frac{1}{B}\sum_i \log \mathrm{softmax}(s_i)_{\hat y_i},\quad
       \hat y_i = \arg\max_k t_{ik}

    With ``threshold`` > 0 only rows whose teacher confidence reaches it count.
    """

    requires_teacher = True

    def __init__(self, threshold: float = 0.0) -> None:
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.threshold = float(threshold)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "pseudo_label")
        probs = F.softmax(inputs.teacher_logits.float(), dim=1)
        conf, target = probs.max(dim=1)
        per_row = F.cross_entropy(inputs.student_logits.float(), target, reduction="none")
        mask = (conf >= self.threshold).float()
        return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


class DecoupledKD:
    r"""Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

    KD split into a target-class term (TCKD: binary KL on [p_target, 1 - p_target]) and a non-target
    term (NCKD: KL between the distributions over the other classes), weighted separately:

    .. math:: \mathcal{L} = T^2\,(\alpha\,\mathrm{KL}(b^t \| b^s) + \beta\,\mathrm{KL}(\hat p^t \| \hat p^s))
    """

    requires_teacher = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "dkd")
        t = self.temperature
        s_logits, t_logits = inputs.student_logits.float() / t, inputs.teacher_logits.float() / t
        gt = F.one_hot(inputs.labels, s_logits.shape[1]).bool()
        p_s, p_t = F.softmax(s_logits, dim=1), F.softmax(t_logits, dim=1)
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-8)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1).clamp_min(1e-8)
        tckd = (b_t * (b_t.log() - b_s.log())).sum(1).mean()
        mask = gt * 1000.0  # remove the target class from the non-target distributions
        log_q_s = F.log_softmax(s_logits - mask, dim=1)
        log_q_t = F.log_softmax(t_logits - mask, dim=1)
        nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
        return (self.alpha * tckd + self.beta * nckd) * (t * t)


class DIST:
    r"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022): match the
    Pearson correlation of predictions between student and teacher, per sample (inter-class) and per
    class across the batch (intra-class), instead of their exact values.

    .. math:: \mathcal{L} = T^2\big(\beta\,(1 - \overline{\rho}(p^s_{i\cdot}, p^t_{i\cdot}))
       + \gamma\,(1 - \overline{\rho}(p^s_{\cdot k}, p^t_{\cdot k}))\big)
    """

    requires_teacher = True

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.beta, self.gamma, self.temperature = float(beta), float(gamma), float(temperature)

    @staticmethod
    def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        a = a - a.mean(dim, keepdim=True)
        b = b - b.mean(dim, keepdim=True)
        return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + 1e-8)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "dist")
        t = self.temperature
        p_s = F.softmax(inputs.student_logits.float() / t, dim=1)
        p_t = F.softmax(inputs.teacher_logits.float() / t, dim=1)
        inter = 1.0 - self._pearson(p_s, p_t, dim=1).mean()
        intra = 1.0 - self._pearson(p_s, p_t, dim=0).mean()
        return (self.beta * inter + self.gamma * intra) * (t * t)


def mse_logits() -> LogitMSE:
    """Mean squared error between student and teacher logits (logit matching)."""
    return LogitMSE()


def pseudo_label(threshold: float = 0.0) -> PseudoLabel:
    """Cross-entropy on the teacher's argmax, optionally only where the teacher is confident."""
    return PseudoLabel(threshold=threshold)


def dkd(alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> DecoupledKD:
    """Decoupled KD (Zhao et al. 2022): target-class and non-target-class terms weighted apart."""
    return DecoupledKD(alpha=alpha, beta=beta, temperature=temperature)


def dist(beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> DIST:
    """DIST (Huang et al. 2022): inter- and intra-class correlation matching."""
    return DIST(beta=beta, gamma=gamma, temperature=temperature)
