"""Behaviour of the built-in plugins beyond the generic contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.params import PluginSpec
from pipeline.protocols import LossInputs
from pipeline.selection import create


def aug(name: str, **kwargs):
    return create("augmenters", PluginSpec(name, kwargs))[0]


def loss(name: str, **kwargs):
    return create("losses", PluginSpec(name, kwargs))[0]


def batch(b: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 1, 28, 28, generator=g)
    y = F.one_hot(torch.arange(b) % 10, 10).float()
    return x, y


def test_flip_p1_mirrors_every_image_and_p0_none():
    x, y = batch()
    out, y2 = aug("flip", p=1.0)(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(out, x.flip(-1)) and torch.equal(y2, y)
    assert torch.equal(aug("flip", p=0.0)(x, y, torch.Generator())[0], x)
    assert torch.equal(aug("flip", p=1.0, direction="vertical")(x, y, torch.Generator())[0], x.flip(-2))


def test_crop_shifts_content_by_at_most_padding():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    out, _ = aug("crop", padding=2)(x, x.new_zeros(64, 10), torch.Generator().manual_seed(1))
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 28, pos % 28
    assert ((rows - 14).abs() <= 2).all() and ((cols - 14).abs() <= 2).all()
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 5  # not the same shift for all
    assert torch.allclose(out.sum((1, 2, 3)), torch.ones(64))  # nothing cut off


def test_rotation_zero_degrees_or_p0_is_identity_else_rotates():
    x, y = batch(4)
    assert torch.allclose(aug("rotation", degrees=0.0)(x, y, torch.Generator())[0], x, atol=1e-5)
    assert torch.allclose(aug("rotation", degrees=30.0, p=0.0)(x, y, torch.Generator())[0], x, atol=1e-5)
    rotated, y2 = aug("rotation", degrees=30.0)(x, y, torch.Generator().manual_seed(0))
    assert not torch.allclose(rotated, x, atol=1e-2) and torch.equal(y2, y)


def test_augmenter_factories_reject_bad_values():
    for name, kwargs in (("flip", {"p": 2}), ("crop", {"padding": -1}), ("rotation", {"degrees": -5})):
        with pytest.raises(Exception, match="must be"):
            aug(name, **kwargs)


def test_kd_matches_hinton_formula_with_t_squared():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    T = 3.0
    p_t = F.softmax(t / T, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    got = loss("kd", temperature=T)(LossInputs(s, t, torch.zeros(5, 10), torch.zeros(5, dtype=torch.long)))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    zero = loss("kd")(LossInputs(t, t, torch.zeros(5, 10), torch.zeros(5, dtype=torch.long)))
    assert zero.item() == pytest.approx(0.0, abs=1e-6)


def test_ce_on_one_hot_equals_torch_cross_entropy_and_smoothing():
    s = torch.randn(6, 10)
    labels = torch.arange(6)
    y = F.one_hot(labels, 10).float()
    inputs = LossInputs(s, None, y, labels)
    assert loss("ce")(inputs).item() == pytest.approx(F.cross_entropy(s, labels).item(), rel=1e-6)
    smoothed = loss("ce", label_smoothing=0.1)(inputs).item()
    assert smoothed == pytest.approx(F.cross_entropy(s, labels, label_smoothing=0.1).item(), rel=1e-5)
    assert loss("ce").requires_teacher is False


def test_models_have_the_advertised_size():
    lenet = create("models", PluginSpec("lenet5"), num_classes=10, in_channels=1)[0]
    resnet = create("models", PluginSpec("resnet8"), num_classes=10, in_channels=1)[0]
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 55_000 < n(lenet) < 70_000
    assert 70_000 < n(resnet) < 90_000
    with torch.no_grad():
        assert not math.isnan(float(resnet(torch.rand(2, 1, 28, 28)).sum()))


def _inputs(s, t, labels):
    return LossInputs(s, t, F.one_hot(labels, 10).float(), labels)


def test_mse_logits_is_mean_squared_logit_difference():
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    got = loss("mse_logits")(_inputs(s, t, torch.arange(4)))
    assert got.item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)


def test_pseudo_label_uses_teacher_argmax_and_threshold():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    labels = torch.zeros(6, dtype=torch.long)  # ground truth is ignored
    expected = F.cross_entropy(s, t.argmax(1))
    assert loss("pseudo_label")(_inputs(s, t, labels)).item() == pytest.approx(expected.item(), rel=1e-6)
    flat = torch.zeros(6, 10)  # teacher confidence 0.1 everywhere: nothing passes a 0.5 threshold
    assert loss("pseudo_label", threshold=0.5)(_inputs(s, flat, labels)).item() == 0.0


def test_dkd_and_dist_are_zero_when_student_matches_teacher_and_positive_otherwise():
    t = torch.randn(8, 10)
    labels = t.argmax(1)
    for name in ("dkd", "dist"):
        fn = loss(name)
        assert fn(_inputs(t.clone(), t, labels)).item() == pytest.approx(0.0, abs=1e-5), name
        assert fn(_inputs(t.flip(0), t, labels)).item() > 1e-3, name


def test_dkd_target_term_alone_matches_binary_kl():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    labels = torch.arange(5)
    got = loss("dkd", alpha=1.0, beta=0.0, temperature=1.0)(_inputs(s, t, labels))
    ps, pt = F.softmax(s, 1)[torch.arange(5), labels], F.softmax(t, 1)[torch.arange(5), labels]
    expected = (pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_cutmix_mixes_labels_by_the_pasted_area():
    b = 16
    x = (
        torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 1, 28, 28) / b
    )  # image i is flat i/b
    y = F.one_hot(torch.arange(b) % 10, 10).float()
    out, mixed = aug("cutmix", alpha=1.0)(x.clone(), y, torch.Generator().manual_seed(3))
    own = (out == x).float().mean(dim=(1, 2, 3))  # fraction of pixels still from the image itself
    weight_own = (mixed * y).sum(1)
    same_class = (mixed > 0).sum(1) == 1  # partner of the same class: weights collapse onto one class
    assert torch.allclose(weight_own[~same_class], own[~same_class], atol=1e-6)
    assert torch.allclose(mixed.sum(1), torch.ones(b))


def test_mixup_rows_are_convex_combinations_of_two_images():
    x, y = batch(8)
    out, mixed = aug("mixup", alpha=0.4)(x, y, torch.Generator().manual_seed(0))
    assert torch.allclose(mixed.sum(1), torch.ones(8)) and (mixed >= 0).all()
    assert ((mixed > 0).sum(1) <= 2).all()
    assert out.min() >= 0 and out.max() <= 1


def test_erasing_p0_is_identity_and_p1_blanks_a_square():
    x, y = batch(8)
    assert torch.equal(aug("erasing", p=0.0)(x, y, torch.Generator())[0], x)
    out, _ = aug("erasing", p=1.0, min_area=0.1, max_area=0.1)(
        x + 0.5 * (x == 0), y, torch.Generator().manual_seed(0)
    )
    zeros = (out == 0).float().mean(dim=(1, 2, 3))
    assert ((zeros > 0.05) & (zeros < 0.2)).all()
