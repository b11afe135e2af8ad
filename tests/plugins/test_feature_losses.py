"""Formula tests for the feature-based losses (fitnets, at, rkd, pkt) and their feature taps."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import plugin_checks, registry
from pipeline.errors import PluginError
from pipeline.params import PluginSpec
from pipeline.protocols import LossInputs, requires_teacher, student_taps, teacher_taps
from pipeline.selection import create
from pipeline.training import feature_taps
from plugins.models import MLP, LeNet5, ResNet8

FEATURE_LOSSES = ("fitnets", "at", "rkd", "pkt")


def loss(name: str, **kwargs):
    return create("losses", PluginSpec(name, kwargs))[0]


def feats(s: torch.Tensor, t: torch.Tensor, s_name: str = "features", t_name: str = "features") -> LossInputs:
    b = s.shape[0]
    return LossInputs(
        torch.zeros(b, 10),
        torch.zeros(b, 10),
        torch.zeros(b, 10),
        torch.zeros(b, dtype=torch.long),
        {s_name: s},
        {t_name: t},
    )


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- shared behaviour ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FEATURE_LOSSES)
def test_feature_losses_declare_their_taps(name):
    fn = loss(name)
    assert requires_teacher(fn) is True
    assert student_taps(fn) == ("features",) and teacher_taps(fn) == ("features",)
    other = loss(name, student_layer="features.3", teacher_layer="features.0")
    assert student_taps(other) == ("features.3",) and teacher_taps(other) == ("features.0",)


@pytest.mark.parametrize("name", FEATURE_LOSSES)
def test_feature_losses_run_on_the_builtin_pair_and_reach_the_student(name):
    torch.manual_seed(0)
    student, teacher = LeNet5(10, 1), ResNet8(10, 1).eval()
    fn = loss(name)
    x = torch.rand(6, 1, 28, 28)
    with feature_taps(student, student_taps(fn)) as sf, feature_taps(teacher, teacher_taps(fn)) as tf:
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = student(x)
        value = fn(
            LossInputs(s_logits, t_logits, torch.zeros(6, 10), torch.zeros(6, dtype=torch.long), sf, tf)
        )
    assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    conv = student.features[0].weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("name", ["at", "rkd", "pkt"])
def test_identical_features_give_zero_and_different_give_more(name):
    t = rand(8, 4, 5, 5).relu()
    fn = loss(name)
    assert fn(feats(t.clone(), t)).item() == pytest.approx(0.0, abs=1e-6)
    assert fn(feats(rand(8, 4, 5, 5, seed=1).relu(), t)).item() > 1e-3


@pytest.mark.parametrize("name", FEATURE_LOSSES)
def test_teacher_features_get_no_gradient(name):
    s = rand(8, 4, 5, 5).requires_grad_()
    t = rand(8, 4, 5, 5, seed=1).requires_grad_()
    loss(name)(feats(s, t)).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", FEATURE_LOSSES)
def test_half_precision_features_give_a_float32_loss(name):
    s, t = rand(8, 4, 5, 5).half(), rand(8, 4, 5, 5, seed=1).half()
    value = loss(name)(feats(s, t))
    assert value.dtype == torch.float32 and torch.isfinite(value)


def test_missing_feature_is_named():
    with pytest.raises(ValueError, match="teacher feature 'features'"):
        loss("pkt")(feats(rand(4, 3), rand(4, 3), t_name="other"))


def test_a_bad_layer_name_lists_the_module_names():
    fn = loss("at", student_layer="nope")
    with pytest.raises(PluginError) as exc, feature_taps(LeNet5(10, 1), student_taps(fn)):
        pass
    assert "['nope']" in str(exc.value)
    assert "features" in str(exc.value) and "classifier" in str(exc.value) and "fc" in str(exc.value)


@pytest.mark.parametrize("name", FEATURE_LOSSES)
def test_bad_keywords_are_rejected(name):
    with pytest.raises(PluginError, match="student_layer must be a module name"):
        loss(name, student_layer="")


def test_contract_check_passes_for_the_feature_losses():
    for name in FEATURE_LOSSES:
        assert plugin_checks.check_plugin(registry.find("losses")[name]) == [], name


def test_contract_catches_a_loss_whose_gradient_skips_the_tapped_features(fake_dist):
    fake_dist(
        "acme-detached",
        "0.1",
        {"distillops.losses": {"detached": "acme_detached:detached"}},
        {
            "acme_detached.py": """
        def detached():
            def loss(inputs):
                s = inputs.student_features["features"].detach()
                return (s - s.mean()).pow(2).mean() + 0.0 * inputs.student_logits.sum()
            loss.student_taps = ("features",)
            loss.teacher_taps = ("features",)
            return loss
    """
        },
    )
    problems = plugin_checks.check_plugin(registry.find("losses")["detached"])
    assert any("no gradient reaches the student's tapped features" in p for p in problems)


# --- at ------------------------------------------------------------------------------------------------


def test_at_matches_a_hand_computation():
    # one sample, two channels, 1x2 map: attention = channel mean of squares
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # mean of squares: [5, 2]
    t = torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]])  # [0, 1]
    q_s = torch.tensor([5.0, 2.0]) / math.sqrt(29.0)
    q_t = torch.tensor([0.0, 1.0])
    expected = (1000.0 / 2) * ((q_s - q_t) ** 2).mean()
    assert loss("at")(feats(s, t)).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss("at", beta=2.0)(feats(s, t)).item() == pytest.approx(
        ((q_s - q_t) ** 2).mean().item(), rel=1e-6
    )
    # p = 1: channel mean of |f|
    q1 = torch.tensor([2.0, 1.0]) / math.sqrt(5.0)
    expected_p1 = ((q1 - q_t) ** 2).mean()
    assert loss("at", p=1.0, beta=2.0)(feats(s, t)).item() == pytest.approx(expected_p1.item(), rel=1e-6)


def test_at_ignores_channel_count_and_scale_and_pools_to_the_smaller_size():
    t = rand(4, 64, 7, 7).relu()
    s = rand(4, 16, 5, 5, seed=1).relu()
    fn = loss("at")
    pooled = F.adaptive_avg_pool2d(t, (5, 5))
    assert fn(feats(s, t)).item() == pytest.approx(fn(feats(s, pooled)).item(), rel=1e-5)
    # attention is per-sample normalised: scaling the student changes nothing
    assert fn(feats(3.0 * s, t)).item() == pytest.approx(fn(feats(s, t)).item(), rel=1e-5)
    # a teacher map with twice the channels, repeated, has the same attention
    assert fn(feats(t.repeat(1, 2, 1, 1), t)).item() == pytest.approx(0.0, abs=1e-6)


def test_at_rejects_flat_features_clearly():
    with pytest.raises(ValueError, match=r"at needs \[B, C, H, W\].*\[4, 128\].*rkd / pkt"):
        loss("at")(feats(rand(4, 128), rand(4, 64, 7, 7)))


# --- rkd -----------------------------------------------------------------------------------------------


def test_rkd_distance_term_matches_a_direct_computation():
    s, t = rand(6, 5), rand(6, 9, seed=1)

    def psi(e):
        d = torch.cdist(e.double(), e.double())
        off = ~torch.eye(6, dtype=torch.bool)
        return (d / d[off].mean())[off]

    expected = 25.0 * F.smooth_l1_loss(psi(s), psi(t))
    got = loss("rkd", angle_weight=0.0)(feats(s, t))
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_rkd_angle_term_matches_a_direct_computation():
    s, t = rand(5, 4), rand(5, 7, seed=1)

    def psi(e):
        e = e.double()
        out = []
        for i in range(5):
            for j in range(5):
                for k in range(5):
                    if i != j and k != j:
                        out.append(F.cosine_similarity(e[i] - e[j], e[k] - e[j], dim=0))
        return torch.stack(out)

    expected = 50.0 * F.smooth_l1_loss(psi(s), psi(t))
    got = loss("rkd", distance_weight=0.0)(feats(s, t))
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_rkd_terms_are_zero_for_identical_features_and_invariant_to_scale():
    s, t = rand(8, 16, 5, 5), rand(8, 64, 7, 7, seed=1)
    for kwargs in ({"angle_weight": 0.0}, {"distance_weight": 0.0}):
        fn = loss("rkd", **kwargs)
        assert fn(feats(t.clone(), t)).item() == pytest.approx(0.0, abs=1e-6)
        base = fn(feats(s, t)).item()
        assert base > 1e-3
        # distances are divided by their mean and angles do not depend on scale or translation
        assert fn(feats(7.0 * s + 3.0, t)).item() == pytest.approx(base, rel=1e-3)


def test_rkd_total_is_the_weighted_sum_of_its_terms():
    s, t = rand(8, 10), rand(8, 12, seed=1)
    d = loss("rkd", distance_weight=1.0, angle_weight=0.0)(feats(s, t))
    a = loss("rkd", distance_weight=0.0, angle_weight=1.0)(feats(s, t))
    assert loss("rkd")(feats(s, t)).item() == pytest.approx((25 * d + 50 * a).item(), rel=1e-5)


def test_rkd_survives_duplicate_samples_and_tiny_batches():
    s = rand(4, 6).repeat(2, 1).requires_grad_()  # every sample twice: zero distances off the diagonal
    value = loss("rkd")(feats(s, rand(8, 6, seed=1)))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
    one = rand(1, 6).requires_grad_()
    assert loss("rkd")(feats(one, rand(1, 6))).item() == 0.0


# --- pkt -----------------------------------------------------------------------------------------------


def test_pkt_matches_a_hand_computation():
    s, t = rand(5, 3), rand(5, 8, seed=1)

    def probs(e):
        e = e.double()
        k = (F.cosine_similarity(e[:, None], e[None, :], dim=2) + 1) / 2
        return k / k.sum(1, keepdim=True)

    p_s, p_t = probs(s), probs(t)
    expected = (p_t * (p_t / p_s).log()).sum(1).mean()
    assert loss("pkt")(feats(s, t)).item() == pytest.approx(expected.item(), rel=1e-4)


def test_pkt_is_scale_invariant_and_works_across_shapes():
    s, t = rand(8, 16, 5, 5), rand(8, 64, 7, 7, seed=1)
    fn = loss("pkt")
    base = fn(feats(s, t)).item()
    assert base > 0
    assert fn(feats(5.0 * s, t)).item() == pytest.approx(base, rel=1e-4)
    assert fn(feats(rand(8, 128), t)).item() > 0


# --- fitnets -------------------------------------------------------------------------------------------


def test_fitnets_is_a_module_with_lazy_parameters_that_materialise_at_the_first_call():
    fn = loss("fitnets")
    assert isinstance(fn, nn.Module)
    assert fn.regressor.has_uninitialized_params()
    fn(feats(rand(4, 16, 5, 5), rand(4, 64, 7, 7)))
    assert not fn.regressor.has_uninitialized_params()
    assert fn.regressor.weight.shape == (64, 16, 1, 1) and fn.regressor.bias.shape == (64,)
    k3 = loss("fitnets", kernel_size=3)
    k3(feats(rand(4, 16, 5, 5), rand(4, 64, 7, 7)))
    assert k3.regressor.weight.shape == (64, 16, 3, 3)


def test_fitnets_with_an_identity_regressor_is_exactly_mse():
    s, t = rand(4, 8, 5, 5), rand(4, 8, 5, 5, seed=1)
    fn = loss("fitnets")
    fn(feats(s, t))  # materialise
    with torch.no_grad():
        fn.regressor.weight.copy_(torch.eye(8)[:, :, None, None])
        fn.regressor.bias.zero_()
    assert fn(feats(s, t)).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6)
    assert fn(feats(t.clone(), t)).item() == 0.0
    # a larger teacher map is average-pooled to the student's size
    big = rand(4, 8, 7, 7, seed=2)
    expected = F.mse_loss(s, F.adaptive_avg_pool2d(big, (5, 5)))
    assert fn(feats(s, big)).item() == pytest.approx(expected.item(), rel=1e-6)
    # 3x3 identity: the centre tap
    k3 = loss("fitnets", kernel_size=3)
    k3(feats(s, t))
    with torch.no_grad():
        k3.regressor.weight.zero_()
        k3.regressor.weight[:, :, 1, 1] = torch.eye(8)
        k3.regressor.bias.zero_()
    assert k3(feats(s, t)).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6)


def test_fitnets_flat_features_use_a_linear_regressor():
    s, t = rand(4, 6), rand(4, 6, seed=1)
    fn = loss("fitnets")
    fn(feats(s, t))
    assert fn.regressor.weight.shape == (6, 6)
    with torch.no_grad():
        fn.regressor.weight.copy_(torch.eye(6))
        fn.regressor.bias.zero_()
    assert fn(feats(s, t)).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6)


def test_fitnets_map_against_vector_compares_pooled_channels():
    s, t = rand(4, 16, 5, 5), rand(4, 128, seed=1)
    fn = loss("fitnets")
    fn(feats(s, t))
    assert fn.regressor.weight.shape == (128, 16)
    expected = F.mse_loss(F.linear(s.mean(dim=(2, 3)), fn.regressor.weight, fn.regressor.bias), t)
    assert fn(feats(s, t)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_fitnets_rejects_other_ranks_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\[4, 3, 6\].*\[4, 64, 7, 7\].*student_layer"):
        loss("fitnets")(feats(rand(4, 3, 6), rand(4, 64, 7, 7)))


def test_fitnets_regressor_and_student_get_gradients():
    s = rand(4, 16, 5, 5).requires_grad_()
    fn = loss("fitnets")
    fn(feats(s, rand(4, 64, 7, 7, seed=1))).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert fn.regressor.weight.grad.abs().sum() > 0 and fn.regressor.bias.grad.abs().sum() > 0


def test_fitnets_state_dict_round_trip_into_a_fresh_loss():
    s, t = rand(4, 16, 5, 5), rand(4, 64, 7, 7, seed=1)
    trained = loss("fitnets", kernel_size=3)
    before = trained(feats(s, t))
    buf = io.BytesIO()
    torch.save(nn.ModuleList([trained]).state_dict(), buf)
    buf.seek(0)
    fresh = loss("fitnets", kernel_size=3)
    assert fresh.regressor.has_uninitialized_params()
    nn.ModuleList([fresh]).load_state_dict(torch.load(buf, weights_only=True))
    assert not fresh.regressor.has_uninitialized_params()
    assert torch.equal(fresh.regressor.weight, trained.regressor.weight)
    assert fresh(feats(s, t)).item() == before.item()
    # the weights loaded must not be re-initialised by the first call
    assert torch.equal(fresh.regressor.weight, trained.regressor.weight)


def test_fitnets_regressor_that_no_longer_fits_is_a_clear_error():
    fn = loss("fitnets")
    fn(feats(rand(4, 16, 5, 5), rand(4, 64, 7, 7)))
    with pytest.raises(ValueError, match=r"does not fit student features \[4, 8, 5, 5\]"):
        fn(feats(rand(4, 8, 5, 5), rand(4, 64, 7, 7)))


def test_fitnets_trains_an_mlp_student_against_a_conv_teacher():
    torch.manual_seed(0)
    student, teacher = MLP(10, 1), ResNet8(10, 1).eval()
    fn = loss("fitnets")
    x = torch.rand(8, 1, 28, 28)
    with feature_taps(student, ("features",)) as sf, feature_taps(teacher, ("features",)) as tf:
        with torch.no_grad():
            teacher(x)
        student(x)
        first = fn(feats(sf["features"], tf["features"]))
    opt = torch.optim.SGD([*student.parameters(), *fn.parameters()], lr=0.05)
    for _ in range(30):
        with feature_taps(student, ("features",)) as sf, feature_taps(teacher, ("features",)) as tf:
            with torch.no_grad():
                teacher(x)
            student(x)
            value = fn(feats(sf["features"], tf["features"]))
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.item() < first.item()
