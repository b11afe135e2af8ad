"""Built-in losses. Each class is its plugin's factory (the entry point names it): built with the keywords
of params.yaml, its instances are callables ``loss(inputs: LossInputs) -> scalar``. The first paragraph of
a class docstring is the plugin's summary in ``distillops plugins list`` and the README."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from pipeline.protocols import LossInputs
from plugins._checks import flag, integer, number


def _require_teacher(inputs: LossInputs, name: str) -> None:
    if inputs.teacher_logits is None:
        raise ValueError(f"{name} needs teacher logits, but no teacher is in play")


def _term_weights(*terms: tuple[str, float]) -> tuple[float, ...]:
    """The weights of a loss's terms: each a number >= 0, not all 0 (the loss would always be 0)."""
    weights = tuple(number(name, value, 0) for name, value in terms)
    if not any(weights):
        names = " and ".join(name for name, _ in terms)
        raise ValueError(f"{names} must not all be 0 (the loss would always be 0), got {weights}")
    return weights


def standardized(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Logit standardisation: each row of logits shifted to mean 0 and scaled to standard deviation 1
    over the classes (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024):

    .. math:: \mathcal{Z}(z) = \frac{z - \bar z}{\sigma(z) + \epsilon},\quad
       \bar z = \frac{1}{K}\sum_k z_k,\quad \sigma(z) = \sqrt{\frac{1}{K}\sum_k (z_k - \bar z)^2}

    Softmax does not change when a constant is added to a row, so the shift changes nothing by itself; the
    scaling gives every row (of the teacher and of the student) the same spread before the temperature
    divides it. Plain KD asks a small student to reproduce the teacher's logit *range* as well as the
    order and relative gaps of its classes; standardised, it is asked for the latter only, and each row
    gets its own effective temperature :math:`T\,\sigma(z)`."""
    z = z - z.mean(dim=1, keepdim=True)
    return z / (z.pow(2).mean(dim=1, keepdim=True).sqrt() + eps)


def _logit_pair(inputs: LossInputs, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) logits as float32, standardised per row when asked."""
    s, t = inputs.student_logits.float(), inputs.teacher_logits.float()
    return (standardized(s), standardized(t)) if standardize else (s, t)


def _soft_kl(s: torch.Tensor, t: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    r""":math:`T^2 \cdot` the batch mean of KL(softmax(t/T) || softmax(s/T))."""
    log_p_student = F.log_softmax(s / temperature, dim=1)
    log_p_teacher = F.log_softmax(t / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature * temperature)


class CrossEntropy:
    r"""Cross-entropy on the target rows (optionally label-smoothed).

    Cross-entropy against the (possibly soft) target rows, with optional label smoothing:

    .. math:: \mathcal{L} = -\frac{1}{B}\sum_i \sum_k \tilde y_{ik} \log \mathrm{softmax}(z_i)_k,
       \quad \tilde y = (1-\varepsilon)\, y + \varepsilon / K

    Label smoothing: Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016.
    """

    requires_teacher = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = number("label_smoothing", label_smoothing, 0, 1, high_open=True)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        targets = inputs.targets
        if self.label_smoothing:
            targets = (1 - self.label_smoothing) * targets + self.label_smoothing / targets.shape[1]
        logp = F.log_softmax(inputs.student_logits.float(), dim=1)
        return -(targets * logp).sum(dim=1).mean()


class KnowledgeDistillation:
    r"""Hinton et al. 2015 soft-target KL at temperature T, scaled by T^2 (optionally on standardised logits).

    Soft-target distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
    Network", 2015):

    .. math:: \mathcal{L} = T^2 \cdot \frac{1}{B}\sum_i \mathrm{KL}\big(\mathrm{softmax}(t_i/T)\,\|\,
       \mathrm{softmax}(s_i/T)\big)

    The :math:`T^2` factor keeps the gradient scale independent of the temperature, so the weight of
    this term relative to a hard-label term need not change when T does. With ``standardize: true``
    both rows are first standardised, :math:`s_i \to \mathcal{Z}(s_i)`, :math:`t_i \to \mathcal{Z}(t_i)`
    (see :func:`standardized`; Sun et al., CVPR 2024), and T is the temperature of the standardised
    logits (their paper uses about 2 where plain KD uses 4).
    """

    requires_teacher = True
    uses_labels = False  # reads the teacher's outputs only, so it also learns from unlabelled images

    def __init__(self, temperature: float = 4.0, standardize: bool = False) -> None:
        self.temperature = number("temperature", temperature, 0, low_open=True)
        self.standardize = flag("standardize", standardize)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "kd")
        return _soft_kl(*_logit_pair(inputs, self.standardize), self.temperature)


class LogitMSE:
    r"""Mean squared error between student and teacher logits (logit matching).

    Logit matching (Ba and Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014):

    .. math:: \mathcal{L} = \frac{1}{BK}\sum_{i,k} (s_{ik} - t_{ik})^2
    """

    requires_teacher = True
    uses_labels = False  # reads the teacher's outputs only, so it also learns from unlabelled images

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "mse_logits")
        return F.mse_loss(inputs.student_logits.float(), inputs.teacher_logits.float())


class PseudoLabel:
    r"""Cross-entropy on the teacher's argmax, optionally only where the teacher is confident.

    Hard pseudo-labels, e.g. for unlabelled data (Lee, "Pseudo-Label", ICML 2013 workshop; the
    teacher-student form of Xie et al. 2020):

    .. math:: \mathcal{L} = -\frac{1}{B}\sum_i \log \mathrm{softmax}(s_i)_{\hat y_i},\quad
       \hat y_i = \arg\max_k t_{ik}

    With ``threshold`` > 0 only rows whose teacher confidence reaches it count.
    """

    requires_teacher = True
    uses_labels = False  # reads the teacher's outputs only, so it also learns from unlabelled images

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = number("threshold", threshold, 0, 1, high_open=True)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "pseudo_label")
        probs = F.softmax(inputs.teacher_logits.float(), dim=1)
        conf, target = probs.max(dim=1)
        per_row = F.cross_entropy(inputs.student_logits.float(), target, reduction="none")
        mask = (conf >= self.threshold).float()
        return (per_row * mask).sum() / mask.sum().clamp_min(1.0)


class DecoupledKD:
    r"""Decoupled KD (Zhao et al. 2022): target-class and non-target-class terms weighted apart.

    Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022):
    KD split into a target-class term (TCKD: binary KL on [p_target, 1 - p_target]) and a non-target
    term (NCKD: KL between the distributions over the other classes), weighted separately:

    .. math:: \mathcal{L} = T^2\,(\alpha\,\mathrm{KL}(b^t \| b^s) + \beta\,\mathrm{KL}(\hat p^t \| \hat p^s))

    With ``standardize: true`` both logit rows are standardised first (see :func:`standardized`).
    """

    requires_teacher = True

    def __init__(
        self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, standardize: bool = False
    ) -> None:
        self.alpha, self.beta = _term_weights(("alpha", alpha), ("beta", beta))
        self.temperature = number("temperature", temperature, 0, low_open=True)
        self.standardize = flag("standardize", standardize)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "dkd")
        t = self.temperature
        s_logits, t_logits = _logit_pair(inputs, self.standardize)
        s_logits, t_logits = s_logits / t, t_logits / t
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


class NormalizedKD:
    r"""NKD (Yang et al. 2023): a teacher-weighted target term plus KD on the normalised non-target classes.

    Normalised knowledge distillation (Yang et al., "From Knowledge Distillation to Self-Knowledge
    Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels", ICCV 2023). KD's
    loss splits into a target term and a non-target term whose size depends on how much probability
    the target class leaves over; NKD renormalises the non-target probabilities to sum to 1, so that
    the student matches the teacher's *shape* over the wrong classes however confident either is:

    .. math:: \mathcal{L} = -\frac{1}{B}\sum_i p^t_{i y_i}\log p^s_{i y_i}
       \;-\; \gamma\,T^2\,\frac{1}{B}\sum_i\sum_{k \ne y_i} q^t_{ik} \log q^s_{ik}

    with :math:`p = \mathrm{softmax}(z)` and :math:`q_{ik} = \exp(z_{ik}/T) / \sum_{j \ne y_i}
    \exp(z_{ij}/T)` (the non-target probabilities at temperature T, renormalised). The first term is a
    cross-entropy on the label weighted by the teacher's confidence; the paper trains with NKD plus the
    usual cross-entropy, with :math:`\gamma = 1.5` and :math:`T = 1` on ImageNet.
    """

    requires_teacher = True

    def __init__(self, temperature: float = 1.0, gamma: float = 1.5) -> None:
        self.temperature = number("temperature", temperature, 0, low_open=True)
        self.gamma = number("gamma", gamma, 0)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "nkd")
        s, t = inputs.student_logits.float(), inputs.teacher_logits.float()
        label = inputs.labels[:, None]
        log_p_s = F.log_softmax(s, dim=1).gather(1, label).squeeze(1)
        p_t = F.softmax(t, dim=1).gather(1, label).squeeze(1)
        target = -(p_t * log_p_s).mean()
        if not self.gamma:
            return target
        # the target class removed from each row: softmax over the other K - 1 logits
        keep = torch.ones_like(s, dtype=torch.bool).scatter_(1, label, False)
        rows, k = s.shape
        s_rest, t_rest = s[keep].view(rows, k - 1), t[keep].view(rows, k - 1)
        temp = self.temperature
        log_q_s = F.log_softmax(s_rest / temp, dim=1)
        q_t = F.softmax(t_rest / temp, dim=1)
        non_target = -(q_t * log_q_s).sum(dim=1).mean()
        return target + self.gamma * temp * temp * non_target


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``-scale`` on the way back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


class LearnedTemperatureKD(nn.Module):
    r"""CTKD-style KD (Li et al. 2023): a learned temperature, trained against the student on a curriculum.

    Curriculum temperature KD (Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI
    2023): plain KD (:math:`T^2`-scaled KL of the softened outputs, optionally on standardised logits)
    whose temperature is learned. The student minimises the loss; the temperature *maximises* it,
    through a gradient-reversal layer that multiplies its gradient by :math:`-\lambda`, so the task gets
    harder as the student gets better. :math:`\lambda` rises from 0 to ``reversal`` along a half cosine
    over the first ``ramp_steps`` training steps (the curriculum), then stays there:

    .. math:: T = T_{min} + (T_{max} - T_{min})\,\sigma(\theta),\qquad
       \lambda_n = \lambda_{max}\,\tfrac{1}{2}\big(1 - \cos(\pi \min(n / N, 1))\big)

    :math:`\theta` starts where :math:`T` equals ``temperature`` and is trained by the stage's optimiser
    with the student (same learning rate); it and the step count :math:`n` are saved with the student
    (``loss_weights.pt``) and in checkpoints, so a resumed run continues the curriculum. The learned
    temperature is logged each epoch as ``ctkd_temperature``.
    """

    requires_teacher = True
    uses_labels = False  # reads the teacher's outputs only, so it also learns from unlabelled images

    def __init__(
        self,
        temperature: float = 4.0,
        min_temperature: float = 1.0,
        max_temperature: float = 16.0,
        reversal: float = 1.0,
        ramp_steps: int = 4000,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        low = number("min_temperature", min_temperature, 0, low_open=True)
        high = number("max_temperature", max_temperature, 0, low_open=True)
        if high <= low:
            raise ValueError(f"max_temperature must be > min_temperature, got {high} <= {low}")
        start = number("temperature", temperature, low, high, low_open=True, high_open=True)
        self.low, self.high = low, high
        self.reversal = number("reversal", reversal, 0)
        self.ramp_steps = integer("ramp_steps", ramp_steps, 0)
        self.standardize = flag("standardize", standardize)
        share = (start - low) / (high - low)
        self.theta = nn.Parameter(torch.tensor(math.log(share / (1 - share))))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def temperature(self) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(self.theta)

    def strength(self) -> float:
        r""":math:`\lambda` at the current step."""
        n = int(self.steps)
        if self.ramp_steps == 0 or n >= self.ramp_steps:
            return self.reversal
        return self.reversal * 0.5 * (1 - math.cos(math.pi * n / self.ramp_steps))

    def metrics(self) -> dict[str, float]:
        return {"temperature": float(self.temperature().detach())}

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        _require_teacher(inputs, "ctkd")
        temp = _ReverseGradient.apply(self.temperature(), self.strength())
        if torch.is_grad_enabled():  # a training step (not a check or an evaluation)
            self.steps += 1
        return _soft_kl(*_logit_pair(inputs, self.standardize), temp)


class DIST:
    r"""DIST (Huang et al. 2022): inter- and intra-class correlation matching.

    DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022): match the
    Pearson correlation of predictions between student and teacher, per sample (inter-class) and per
    class across the batch (intra-class), instead of their exact values.

    .. math:: \mathcal{L} = T^2\big(\beta\,(1 - \overline{\rho}(p^s_{i\cdot}, p^t_{i\cdot}))
       + \gamma\,(1 - \overline{\rho}(p^s_{\cdot k}, p^t_{\cdot k}))\big)
    """

    requires_teacher = True
    uses_labels = False  # reads the teacher's outputs only, so it also learns from unlabelled images

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        self.beta, self.gamma = _term_weights(("beta", beta), ("gamma", gamma))
        self.temperature = number("temperature", temperature, 0, low_open=True)

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


# --- feature-based distillation ------------------------------------------------------------------------
# These losses tap intermediate outputs: ``student_layer`` / ``teacher_layer`` are module names as in
# ``named_modules()`` (the built-in models name their last feature map ``features``, the default). Features
# are cast to float32 and the teacher's are detached, so the losses are stable under mixed precision.

FEATURES = "features"


def _feature_pair(inputs: LossInputs, loss: FeatureLoss) -> tuple[torch.Tensor, torch.Tensor]:
    """The tapped (student, teacher) outputs as float32, the teacher's detached."""
    name = loss.name
    s = inputs.student_features.get(loss.student_layer)
    t = inputs.teacher_features.get(loss.teacher_layer)
    if s is None or t is None:
        which = "student" if s is None else "teacher"
        layer = loss.student_layer if s is None else loss.teacher_layer
        raise ValueError(
            f"{name} needs the {which} feature '{layer}', which was not tapped "
            f"(student features: {sorted(inputs.student_features)}, "
            f"teacher features: {sorted(inputs.teacher_features)})"
        )
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"{name}: student and teacher batch sizes differ: {tuple(s.shape)} vs {tuple(t.shape)}"
        )
    return s.float(), t.detach().float()


def _pool_to_common(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool two [B, C, H, W] maps to the smaller height and the smaller width."""
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    if tuple(s.shape[2:]) != size:
        s = F.adaptive_avg_pool2d(s, size)
    if tuple(t.shape[2:]) != size:
        t = F.adaptive_avg_pool2d(t, size)
    return s, t


def _shape(x: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in x.shape) + "]"


class FeatureLoss:
    """Shared set-up of the feature losses: which modules to tap."""

    requires_teacher = True
    uses_labels = False  # reads the teacher's outputs only, so it also learns from unlabelled images
    name = "feature loss"

    def __init__(self, student_layer: str, teacher_layer: str) -> None:
        for key, value in (("student_layer", student_layer), ("teacher_layer", teacher_layer)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key} must be a module name (as in named_modules()), got {value!r}")
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_taps = (student_layer,)
        self.teacher_taps = (teacher_layer,)


class HintRegressor(LazyModuleMixin, nn.Module):
    """The FitNets regressor: a convolution (for [B, C, H, W] hints) or a linear map (for [B, D]) from
    the student's channels to the teacher's. Both channel counts are inferred at the first call
    ``regressor(student, teacher)``, so its parameters are lazy until then (or until a state dict is
    loaded into it)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = UninitializedParameter()
        self.bias = UninitializedParameter()

    def initialize_parameters(self, s: torch.Tensor, t: torch.Tensor) -> None:
        if not self.has_uninitialized_params():
            return
        with torch.no_grad():
            if s.dim() == 4:
                self.weight.materialize((t.shape[1], s.shape[1], self.kernel_size, self.kernel_size))
            else:
                self.weight.materialize((t.shape[1], s.shape[1]))
            self.bias.materialize((t.shape[1],))
            # the default initialisation of nn.Conv2d / nn.Linear
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            fan_in = self.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() != s.dim() or self.weight.shape[1] != s.shape[1]:
            raise ValueError(
                f"fitnets regressor of weight shape {tuple(self.weight.shape)} (from an earlier batch or a "
                f"checkpoint) does not fit student features {_shape(s)}"
            )
        if s.dim() == 4:
            return F.conv2d(s, self.weight, self.bias, padding=self.kernel_size // 2)
        return F.linear(s, self.weight, self.bias)


class FitNets(FeatureLoss, nn.Module):
    r"""FitNets hints (Romero et al. 2015): MSE between the regressed student map and the teacher's.

    FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015): the student's
    hint layer, mapped by a trainable regressor :math:`r`, regresses the teacher's guided layer.

    .. math:: \mathcal{L} = \frac{1}{N}\,\big\| \mathrm{P}(r(u_s)) - \mathrm{P}(u_t) \big\|_2^2

    the mean over all N elements. :math:`r` is a ``kernel_size`` x ``kernel_size`` convolution (with
    bias, padding keeping the size) for [B, C, H, W] features and a linear layer for [B, D]; it is trained
    with the student and saved with it. The paper picks the regressor's kernel so that the spatial sizes
    agree; here :math:`\mathrm{P}` instead adaptive-average-pools both maps to the smaller height and
    width (e.g. lenet5's 5x5 and resnet8's 7x7 become 5x5). When one side is a map and the other a vector,
    the map is global-average-pooled to [B, C] and the regressor is linear.
    """

    name = "fitnets"

    def __init__(
        self, student_layer: str = FEATURES, teacher_layer: str = FEATURES, kernel_size: int = 1
    ) -> None:
        nn.Module.__init__(self)
        FeatureLoss.__init__(self, student_layer, teacher_layer)
        kernel_size = integer("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.regressor = HintRegressor(kernel_size)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        s, t = _feature_pair(inputs, self)
        if s.dim() not in (2, 4) or t.dim() not in (2, 4):
            raise ValueError(
                f"fitnets needs [B, C, H, W] or [B, D] features; got student '{self.student_layer}' "
                f"{_shape(s)} and teacher '{self.teacher_layer}' {_shape(t)}. Choose student_layer / "
                f"teacher_layer with such outputs, or use rkd / pkt, which flatten any shape."
            )
        if s.dim() != t.dim():  # one map, one vector: compare channel vectors
            s = s.mean(dim=(2, 3)) if s.dim() == 4 else s
            t = t.mean(dim=(2, 3)) if t.dim() == 4 else t
        hint = self.regressor(s, t)
        if hint.dim() == 4:
            hint, t = _pool_to_common(hint, t)
        return F.mse_loss(hint, t)


class AttentionTransfer(FeatureLoss):
    r"""Attention transfer (Zagoruyko and Komodakis 2017): match normalised spatial attention maps.

    Attention transfer (Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR 2017).
    The attention map of a [B, C, H, W] activation is :math:`Q = \mathrm{vec}\big(\frac{1}{C}
    \sum_c |A_c|^p\big)`, normalised to unit L2 norm per sample; then

    .. math:: \mathcal{L} = \frac{\beta}{2}\cdot\frac{1}{B\,HW}\sum_i \Big\| \frac{Q^s_i}{\|Q^s_i\|_2}
       - \frac{Q^t_i}{\|Q^t_i\|_2} \Big\|_2^2

    This is the form of the authors' code (mean of the squared difference, times :math:`\beta/2`
    with :math:`\beta = 1000`); the paper writes it as :math:`\beta/2` times a (non-squared) norm with
    :math:`\beta = 10^3` divided by the map size and batch size. The channel mean instead of the paper's
    sum changes nothing after normalisation. If the spatial sizes differ, both maps are
    adaptive-average-pooled to the smaller height and width (on the activations, before the
    attention map is taken).
    """

    name = "at"

    def __init__(
        self,
        student_layer: str = FEATURES,
        teacher_layer: str = FEATURES,
        p: float = 2.0,
        beta: float = 1000.0,
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.p = number("p", p, 0, low_open=True)
        self.beta = number("beta", beta, 0, low_open=True)  # 0 would make the loss always 0

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, H*W], unit L2 norm per row."""
        q = f.abs().pow(self.p).mean(dim=1).flatten(1)
        return F.normalize(q, p=2.0, dim=1, eps=1e-12)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        s, t = _feature_pair(inputs, self)
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(
                f"at needs [B, C, H, W] feature maps (attention is a spatial map); got student "
                f"'{self.student_layer}' {_shape(s)} and teacher '{self.teacher_layer}' {_shape(t)}. "
                f"Choose convolutional layers for student_layer / teacher_layer, or use rkd / pkt for "
                f"flat features."
            )
        s, t = _pool_to_common(s, t)
        return (self.beta / 2.0) * (self.attention(s) - self.attention(t)).pow(2).mean()


def _centred_gram(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For [B, D] embeddings: the Gram matrix of the batch-centred rows and the pairwise squared
    Euclidean distances (distances and angles do not change under the centring, which reduces
    cancellation in float32)."""
    e = e - e.mean(dim=0, keepdim=True)
    gram = e @ e.t()
    sq = gram.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
    return gram, d2


class RelationalKD(FeatureLoss):
    r"""Relational KD (Park et al. 2019): match pairwise distances and triplet angles within the batch.

    Relational knowledge distillation (Park et al., "Relational Knowledge Distillation", CVPR 2019):
    match the structure of the batch rather than the features themselves, so the student and teacher
    feature sizes may differ. Features are flattened to [B, D].

    Distance term, with :math:`\psi_D(t_i, t_j) = \|t_i - t_j\|_2 / \mu` and :math:`\mu` the mean
    distance over the pairs :math:`i \ne j` of the batch:

    .. math:: \mathcal{L}_D = \frac{1}{B(B-1)}\sum_{i \ne j} \ell_\delta\big(\psi_D(t_i,t_j),
       \psi_D(s_i,s_j)\big)

    Angle term, with :math:`\psi_A(t_i,t_j,t_k) = \cos\angle t_i t_j t_k = \langle e^{ij}, e^{kj}
    \rangle`, :math:`e^{ij} = (t_i - t_j)/\|t_i - t_j\|_2`, over the triplets with :math:`i \ne j`,
    :math:`k \ne j`:

    .. math:: \mathcal{L}_A = \mathrm{mean}_{(i,j,k)}\ \ell_\delta\big(\psi_A(t_i,t_j,t_k),
       \psi_A(s_i,s_j,s_k)\big)

    :math:`\ell_\delta` is the Huber loss with :math:`\delta = 1` (smooth L1), and
    :math:`\mathcal{L} = \lambda_D \mathcal{L}_D + \lambda_A \mathcal{L}_A` with the paper's
    :math:`\lambda_D = 25`, :math:`\lambda_A = 50`. Distances and angles are computed from the Gram
    matrix of the batch ([B, B], then [B, B, B] cosines) rather than from [B, B, D] differences, so the
    memory does not grow with the feature size.
    """

    name = "rkd"
    eps = 1e-12

    def __init__(
        self,
        student_layer: str = FEATURES,
        teacher_layer: str = FEATURES,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.distance_weight, self.angle_weight = _term_weights(
            ("distance_weight", distance_weight), ("angle_weight", angle_weight)
        )

    @classmethod
    def distances(cls, e: torch.Tensor) -> torch.Tensor:
        """Pairwise distances [B, B] divided by their mean over i != j (zero diagonal)."""
        _, d2 = _centred_gram(e)
        off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
        d = torch.where(off, d2.clamp_min(cls.eps).sqrt(), torch.zeros_like(d2))
        mean = d[off].mean() if len(e) > 1 else d.new_ones(())
        return d / mean.clamp_min(cls.eps)

    @classmethod
    def angles(cls, e: torch.Tensor) -> torch.Tensor:
        """cos of the angle at j of the triangle (i, j, k), as [B, B, B] indexed [j, i, k]; 0 where it is
        undefined (i == j or k == j)."""
        gram, d2 = _centred_gram(e)
        off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
        inv = torch.where(off, d2.clamp_min(cls.eps).rsqrt(), torch.zeros_like(d2))  # a_ji = 1/|e_i - e_j|
        # <e_i - e_j, e_k - e_j> = G_ik - h_ji - h_jk with h_ji = G_ij - G_jj / 2, so
        # cos_jik = a_ji a_jk G_ik - (a_ji h_ji) a_jk - a_ji (a_jk h_jk): one outer product per j and a
        # rank-2 correction, without the [B, B, D] differences
        h = gram - gram.diagonal()[:, None] / 2.0
        ah = inv * h
        left = torch.stack([ah, inv], dim=2)  # [B, B, 2]
        right = torch.stack([inv, ah], dim=1)  # [B, 2, B]
        cos = torch.baddbmm(inv[:, :, None] * inv[:, None, :] * gram[None], left, right, alpha=-1.0)
        return cos.clamp(-1.0, 1.0)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        s, t = _feature_pair(inputs, self)
        s, t = s.flatten(1), t.flatten(1)
        b = len(s)
        total = s.new_zeros(())
        if b < 2:
            return total + 0.0 * s.sum()  # no pairs: nothing to match, but keep the graph
        if self.distance_weight:
            off = ~torch.eye(b, dtype=torch.bool, device=s.device)
            d_s, d_t = self.distances(s), self.distances(t)
            total = total + self.distance_weight * F.smooth_l1_loss(d_s[off], d_t[off])
        if self.angle_weight and b > 2:
            # undefined angles are 0 on both sides, so they add nothing to the sum
            diff = F.smooth_l1_loss(self.angles(s), self.angles(t), reduction="sum")
            total = total + self.angle_weight * diff / (b * (b - 1) ** 2)
        return total


class ProbabilisticKT(FeatureLoss):
    r"""Probabilistic knowledge transfer (Passalis and Tefas 2018): KL between cosine-kernel distributions.

    Probabilistic knowledge transfer (Passalis and Tefas, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", ECCV 2018): match the conditional probability distributions
    that a cosine-similarity kernel induces over the batch. Features are flattened to [B, D] (the sizes
    may differ between student and teacher) and L2-normalised; with :math:`K_{ij} = (1 + \cos(x_i,
    x_j))/2`,

    .. math:: p_{j|i} = \frac{K_{ij}}{\sum_k K_{ik}},\qquad
       \mathcal{L} = \frac{1}{B}\sum_i \sum_j p^t_{j|i}\,\log\frac{p^t_{j|i} + \epsilon}{p^s_{j|i} + \epsilon}

    i.e. the batch mean of :math:`\mathrm{KL}(p^t_{\cdot|i} \,\|\, p^s_{\cdot|i})`. The authors' code
    averages over all :math:`B^2` entries instead, which is this divided by B.
    """

    name = "pkt"

    def __init__(
        self, student_layer: str = FEATURES, teacher_layer: str = FEATURES, eps: float = 1e-7
    ) -> None:
        super().__init__(student_layer, teacher_layer)
        self.eps = number("eps", eps, 0, low_open=True)

    def probabilities(self, e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e.flatten(1), p=2.0, dim=1, eps=self.eps)
        k = (e @ e.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True).clamp_min(self.eps)

    def __call__(self, inputs: LossInputs) -> torch.Tensor:
        s, t = _feature_pair(inputs, self)
        p_s, p_t = self.probabilities(s), self.probabilities(t)
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).sum(dim=1).mean()
