"""The logit losses that go beyond Hinton KD: logit standardisation (kd, dkd, ctkd), NKD and the learned
temperature of ctkd. Formulas are checked against hand computations in plain Python floats (no torch op
shared with the implementation), and the trainable temperature through a real training run on cached
teacher logits, a saved state and a resumed one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.loss_set import LossSet
from pipeline.params import LossSpec, PluginSpec
from pipeline.protocols import LossInputs
from pipeline.selection import create
from tests.unit.test_training import student, toy_split, trainer


def loss(name: str, **kwargs):
    return create("losses", PluginSpec(name, kwargs))[0]


def inputs(s, t, labels) -> LossInputs:
    s, t = torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    labels = torch.tensor(labels)
    return LossInputs(s, t, F.one_hot(labels, s.shape[1]).float(), labels)


# --- plain-Python references --------------------------------------------------------------------------
def softmax(z: list[float], temperature: float = 1.0) -> list[float]:
    e = [math.exp(v / temperature) for v in z]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def standardise(z: list[float]) -> list[float]:
    mean = sum(z) / len(z)
    std = math.sqrt(sum((v - mean) ** 2 for v in z) / len(z))
    return [(v - mean) / std for v in z]


S = [[1.0, 2.0, 4.0, -1.0], [0.5, -2.0, 0.0, 3.0]]
T = [[0.0, 3.0, 3.5, 1.0], [2.0, -1.0, 1.0, 6.0]]
Y = [2, 3]


def test_standardized_kd_matches_a_hand_computation():
    temp = 2.0
    expected = sum(
        kl(softmax(standardise(t), temp), softmax(standardise(s), temp)) for s, t in zip(S, T, strict=True)
    )
    expected = expected / len(S) * temp * temp
    got = loss("kd", temperature=temp, standardize=True)(inputs(S, T, Y))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    plain = loss("kd", temperature=temp)(inputs(S, T, Y))
    assert plain.item() != pytest.approx(expected, rel=1e-3)  # the option changes the loss


def test_standardization_ignores_the_teachers_logit_scale_and_offset():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    labels = torch.arange(8)
    rescaled = 3.7 * t - 1.25
    for name in ("kd", "dkd", "ctkd"):
        fn = loss(name, standardize=True)
        a = fn(LossInputs(s, t, F.one_hot(labels, 10).float(), labels))
        b = fn(LossInputs(s, rescaled, F.one_hot(labels, 10).float(), labels))
        assert a.item() == pytest.approx(b.item(), rel=1e-4), name
        plain = loss(name)
        c = plain(LossInputs(s, t, F.one_hot(labels, 10).float(), labels))
        d = plain(LossInputs(s, rescaled, F.one_hot(labels, 10).float(), labels))
        assert c.item() != pytest.approx(d.item(), rel=1e-2), name  # without it, scale matters


def test_standardized_dkd_matches_a_hand_computation():
    temp, alpha, beta = 2.0, 1.0, 3.0
    total = 0.0
    for s, t, y in zip(S, T, Y, strict=True):
        ps, pt = softmax(standardise(s), temp), softmax(standardise(t), temp)
        tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest = [k for k in range(len(s)) if k != y]
        qs = softmax([standardise(s)[k] for k in rest], temp)
        qt = softmax([standardise(t)[k] for k in rest], temp)
        total += alpha * tckd + beta * kl(qt, qs)
    expected = total / len(S) * temp * temp
    got = loss("dkd", alpha=alpha, beta=beta, temperature=temp, standardize=True)(inputs(S, T, Y))
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_nkd_matches_a_hand_computation():
    temp, gamma = 2.0, 1.5
    total = 0.0
    for s, t, y in zip(S, T, Y, strict=True):
        target = -softmax(t)[y] * math.log(softmax(s)[y])
        rest = [k for k in range(len(s)) if k != y]
        qs, qt = softmax([s[k] for k in rest], temp), softmax([t[k] for k in rest], temp)
        non_target = -sum(a * math.log(b) for a, b in zip(qt, qs, strict=True))
        total += target + gamma * temp * temp * non_target
    got = loss("nkd", temperature=temp, gamma=gamma)(inputs(S, T, Y))
    assert got.item() == pytest.approx(total / len(S), rel=1e-5)
    # gamma 0: the label's cross-entropy weighted by the teacher's confidence in the label
    only_target = sum(-softmax(t)[y] * math.log(softmax(s)[y]) for s, t, y in zip(S, T, Y, strict=True))
    got = loss("nkd", gamma=0.0)(inputs(S, T, Y))
    assert got.item() == pytest.approx(only_target / len(S), rel=1e-5)


def test_nkd_non_target_term_depends_on_the_shape_not_on_the_target_mass():
    """Renormalised, the non-target part is the same whether the target class takes most of the mass or
    little of it: only the teacher's target term changes."""
    s = [[0.0, 1.0, 2.0, 3.0]]
    confident, unsure = [[9.0, 1.0, 2.0, 0.0]], [[-3.0, 1.0, 2.0, 0.0]]
    fn = loss("nkd", gamma=1.0)
    a, b = fn(inputs(s, confident, [0])).item(), fn(inputs(s, unsure, [0])).item()
    log_ps0 = math.log(softmax(s[0])[0])
    assert a - b == pytest.approx(-(softmax(confident[0])[0] - softmax(unsure[0])[0]) * log_ps0, rel=1e-5)


def test_ctkd_starts_at_its_temperature_and_equals_kd_there():
    fn = loss("ctkd", temperature=4.0, min_temperature=1.0, max_temperature=16.0)
    assert float(fn.temperature().detach()) == pytest.approx(4.0, rel=1e-6)
    assert fn(inputs(S, T, Y)).item() == pytest.approx(
        loss("kd", temperature=4.0)(inputs(S, T, Y)).item(), rel=1e-5
    )
    std = loss("ctkd", temperature=2.0, standardize=True)
    kd_std = loss("kd", temperature=2.0, standardize=True)
    assert std(inputs(S, T, Y)).item() == pytest.approx(kd_std(inputs(S, T, Y)).item(), rel=1e-5)


def test_ctkd_temperature_ascends_the_loss_scaled_by_the_curriculum():
    """The temperature's gradient is the loss's gradient reversed and scaled by lambda: 0 at the first step,
    half of ``reversal`` half-way through the ramp, ``reversal`` after it. Checked against a finite
    difference of the loss in the temperature's parameter."""
    fn = loss("ctkd", temperature=3.0, reversal=2.0, ramp_steps=10)
    batch = inputs(S, T, Y)
    eps = 1e-3

    def value_at(theta: float) -> float:
        with torch.no_grad():
            old = fn.theta.item()
            fn.theta.fill_(theta)
            v = fn(batch).item()  # no_grad: not a training step, the step count stays
            fn.theta.fill_(old)
            return v

    theta = fn.theta.item()
    slope = (value_at(theta + eps) - value_at(theta - eps)) / (2 * eps)
    assert abs(slope) > 1e-3  # the loss does depend on the temperature here
    for steps, lam in ((0, 0.0), (5, 1.0), (10, 2.0), (50, 2.0)):
        fn.steps.fill_(steps)
        fn.theta.grad = None
        fn(batch).backward()
        assert int(fn.steps) == steps + 1
        assert fn.theta.grad.item() == pytest.approx(-lam * slope, rel=2e-2, abs=1e-6), steps


def test_ctkd_state_is_saved_and_restored():
    fn = loss("ctkd", temperature=5.0)
    with torch.no_grad():
        fn.theta.add_(0.7)
    fn.steps.fill_(123)
    other = loss("ctkd", temperature=5.0)
    other.load_state_dict(fn.state_dict())
    assert float(other.temperature().detach()) == pytest.approx(float(fn.temperature().detach()))
    assert int(other.steps) == 123 and other.strength() == fn.strength()
    assert set(fn.state_dict()) == {"theta", "steps"}


@pytest.mark.parametrize(
    ("name", "kwargs", "key"),
    [
        ("kd", {"standardize": "yes"}, "standardize"),
        ("dkd", {"standardize": 1}, "standardize"),
        ("nkd", {"gamma": -1}, "gamma"),
        ("nkd", {"temperature": 0}, "temperature"),
        ("ctkd", {"temperature": 20.0}, "temperature"),
        ("ctkd", {"min_temperature": 5.0, "max_temperature": 2.0}, "max_temperature"),
        ("ctkd", {"ramp_steps": -3}, "ramp_steps"),
        ("ctkd", {"reversal": float("nan")}, "reversal"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(name, kwargs, key):
    with pytest.raises(Exception, match=key):
        loss(name, **kwargs)


def test_learned_temperature_trains_on_cached_logits_and_is_logged_and_resumed(tmp_path):
    """A distillation run without augmentation caches the teacher's logits (one teacher pass); ctkd's
    temperature moves during it, is logged each epoch, and a checkpoint restores it."""
    teacher = student(1).eval()
    specs = [LossSpec("ctkd", {"temperature": 4.0, "ramp_steps": 4}, 0.5), LossSpec("ce", {}, 0.5)]
    losses = LossSet.from_specs(specs, "distill")
    run = trainer(student(), losses, augs=[], teacher=teacher, checkpoint=tmp_path / "c.pt")
    result = run.fit(toy_split(128, 0), toy_split(32, 1))
    assert run.teacher_passes == 1
    temps = [row["ctkd_temperature"] for row in result.history]
    assert len(temps) == 2 and all(1.0 < t < 16.0 for t in temps)
    assert temps[-1] != pytest.approx(4.0, abs=1e-3)  # learned, not fixed
    ctkd = losses.terms[0].plugin.obj
    assert int(ctkd.steps) == 2 * 4  # 128 rows, batch 32: 4 steps per epoch, 2 epochs
    assert float(ctkd.temperature().detach()) == pytest.approx(temps[-1], rel=1e-6)
    # a second fit with the same settings resumes from the finished checkpoint: state comes back
    again = LossSet.from_specs(specs, "distill")
    trainer(student(), again, augs=[], teacher=teacher, checkpoint=tmp_path / "c.pt").fit(
        toy_split(128, 0), toy_split(32, 1)
    )
    assert float(again.terms[0].plugin.obj.temperature().detach()) == pytest.approx(temps[-1], rel=1e-6)
