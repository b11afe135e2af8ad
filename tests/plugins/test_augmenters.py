"""Behaviour of the geometric, colour and policy augmenters (affine, color_jitter, resized_crop, randaugment,
trivialaugment) beyond the generic contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.params import PluginSpec
from pipeline.selection import create
from plugins.augmenters import POLICY_OPS

NEW = ("affine", "color_jitter", "resized_crop", "randaugment", "trivialaugment")


def aug(name: str, **kwargs):
    return create("augmenters", PluginSpec(name, kwargs))[0]


def run(augmenter, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    y = F.one_hot(torch.arange(x.shape[0]) % 10, 10).float()
    out, y2 = augmenter(x, y, torch.Generator(device=x.device).manual_seed(seed))
    assert torch.equal(y2, y)  # label-preserving
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1
    return out


def images(b: int = 8, c: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def point(b: int, row: int = 14, col: int = 14, size: int = 28) -> torch.Tensor:
    x = torch.zeros(b, 1, size, size)
    x[:, :, row, col] = 1.0
    return x


def centroid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = x.sum(1)  # [B, H, W]
    rows, cols = torch.arange(w.shape[1]).float(), torch.arange(w.shape[2]).float()
    mass = w.sum((1, 2))
    return (w.sum(2) * rows).sum(1) / mass, (w.sum(1) * cols).sum(1) / mass


def test_affine_identity_parameters_or_p0_give_back_the_input():
    x = images(c=3)
    same = aug("affine", degrees=0.0, translate=0.0, scale=(1.0, 1.0), shear=0.0)
    assert torch.allclose(run(same, x), x, atol=1e-5)
    assert torch.allclose(run(aug("affine", degrees=40.0, translate=0.3, shear=20.0, p=0.0), x), x, atol=1e-5)
    assert not torch.allclose(run(aug("affine", degrees=40.0), x), x, atol=1e-2)


def test_affine_translate_moves_each_image_by_its_own_bounded_shift():
    x = point(64)
    out = run(aug("affine", translate=0.25, scale=(1.0, 1.0), shear=0.0), x, seed=3)
    assert torch.allclose(out.sum((1, 2, 3)), torch.ones(64), atol=1e-4)  # the point stays inside, whole
    rows, cols = centroid(out)
    assert ((rows - 14).abs() <= 7 + 1e-3).all() and ((cols - 14).abs() <= 7 + 1e-3).all()  # 0.25 * 28
    assert cols.std() > 2 and rows.std() > 2  # images got different shifts, in both directions
    assert (cols < 12).any() and (cols > 16).any()


def test_translate_op_shifts_a_pattern_by_exact_pixels():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 10:14, 8:11] = torch.rand(4, 3)  # an asymmetric patch away from the border
    out = POLICY_OPS["translate_x"].fn(x, torch.tensor([3 / 28, -5 / 28]))
    assert torch.allclose(out[0], x[0].roll(3, -1), atol=1e-5)  # right by 3
    assert torch.allclose(out[1], x[1].roll(-5, -1), atol=1e-5)  # left by 5
    down = POLICY_OPS["translate_y"].fn(x, torch.tensor([2 / 28, 0.0]))
    assert torch.allclose(down[0], x[0].roll(2, -2), atol=1e-5) and torch.allclose(down[1], x[1], atol=1e-5)


def test_rotate_op_by_90_degrees_is_rot90_counter_clockwise():
    x = images(2, size=16)
    out = POLICY_OPS["rotate"].fn(x, torch.tensor([90.0, -90.0]))
    assert torch.allclose(out[0], x[0].rot90(1, (-2, -1)), atol=1e-5)
    assert torch.allclose(out[1], x[1].rot90(-1, (-2, -1)), atol=1e-5)


def test_shear_x_moves_rows_sideways_in_proportion_to_their_height():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 4, 14] = x[0, 0, 24, 14] = 1.0  # two points 10 rows above / below the centre (13.5)
    out = POLICY_OPS["shear_x"].fn(x, torch.tensor([0.3]))
    top, bottom = centroid(out[:, :, :14])[1], centroid(out[:, :, 14:])[1]
    assert top.item() == pytest.approx(14 - 0.3 * 9.5, abs=1e-3)
    assert bottom.item() == pytest.approx(14 + 0.3 * 10.5, abs=1e-3)


def test_brightness_factor_stays_in_range_and_differs_per_image():
    x = torch.full((64, 1, 8, 8), 0.5)
    out = run(aug("color_jitter", brightness=0.2, contrast=0.0, saturation=0.0, hue=0.0), x)
    ratio = out / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio))  # one factor per image
    assert ratio.min() >= 0.8 - 1e-6 and ratio.max() <= 1.2 + 1e-6
    assert ratio.min() < 0.85 and ratio.max() > 1.15  # the whole range is used


def test_contrast_keeps_each_image_mean_and_scales_its_spread():
    x = 0.3 + 0.4 * images(32, size=12)  # in [0.3, 0.7]: factors up to 1.5 do not clip
    out = run(aug("color_jitter", brightness=0.0, contrast=0.5, saturation=0.0, hue=0.0), x)
    assert torch.allclose(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5)
    spread = out.std((1, 2, 3)) / x.std((1, 2, 3))
    assert spread.min() >= 0.5 - 1e-4 and spread.max() <= 1.5 + 1e-4 and spread.std() > 0.1


def test_saturation_and_hue_change_colour_images_only():
    grey = images(8)
    strong = aug("color_jitter", brightness=0.0, contrast=0.0, saturation=0.8, hue=0.4)
    assert torch.allclose(run(strong, grey), grey, atol=1e-6)  # documented no-op on one-channel images
    rgb_grey = grey.expand(8, 3, 28, 28)  # colourless RGB: both keep it (v2's grey weights add to 0.9999)
    assert torch.allclose(run(strong, rgb_grey), rgb_grey, atol=2e-4)
    colour = 0.2 + 0.6 * images(8, c=3)
    out = run(strong, colour)
    assert not torch.allclose(out, colour, atol=1e-2)
    luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    pale = 0.4 + 0.2 * images(8, c=3)  # pale enough that no hue rotation clips
    hue_only = run(aug("color_jitter", brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5), pale)
    assert torch.allclose((hue_only * luma).sum(1), (pale * luma).sum(1), atol=1e-5)  # hue keeps luma
    assert not torch.allclose(hue_only, pale, atol=1e-2)
    zero = aug("color_jitter", brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    assert torch.allclose(run(zero, colour), colour, atol=1e-5)


def test_resized_crop_full_area_square_is_identity():
    x = images(c=3)
    assert torch.allclose(run(aug("resized_crop", scale=(1.0, 1.0), ratio=(1.0, 1.0)), x), x, atol=1e-5)


def test_resized_crop_zooms_a_ramp_by_the_crop_side_at_per_image_offsets():
    ramp = (torch.arange(28.0) / 27).expand(32, 1, 28, 28)  # value = column / 27
    out = run(aug("resized_crop", scale=(0.25, 0.25), ratio=(1.0, 1.0)), ramp.clone(), seed=1)
    slope = (out[..., 23] - out[..., 4]) / (19 / 27)  # a half-width crop: half the slope
    assert torch.allclose(slope, torch.full_like(slope, 0.5), atol=1e-4)
    left = out[:, 0, 0, 0]
    assert left.min() >= 0 and left.max() <= 13.75 / 27 + 1e-4 and left.std() > 0.05  # different windows
    assert out[:, 0, 0, 0].min() == 0 and out[:, 0, 0, -1].max() == 1  # edges not darkened by padding
    wide = run(aug("resized_crop", scale=(0.25, 0.25), ratio=(4.0, 4.0)), ramp.clone())
    assert torch.allclose(wide, ramp, atol=1e-5)  # full width, a quarter of the height of a ramp


@pytest.mark.parametrize("name", ["randaugment", "trivialaugment"])
def test_policies_with_only_the_identity_op_give_back_the_input(name):
    x = images(c=3)
    assert torch.equal(run(aug(name, ops=["identity"]), x), x)
    assert torch.equal(run(aug(name, ops="color"), images()), images())  # RGB-only op left out on grey


def test_randaugment_uses_the_fixed_magnitude_with_random_signs():
    x = torch.full((64, 1, 8, 8), 0.5)
    out = run(aug("randaugment", num_ops=1, magnitude=9, ops=["brightness"]), x)
    factors = out[:, 0, 0, 0] / 0.5
    assert torch.allclose(factors.unique(), torch.tensor([0.73, 1.27]))  # 1 -+ 9/30 * 0.9
    assert torch.equal(run(aug("randaugment", magnitude=0, ops=["brightness", "contrast", "rotate"]), x), x)


def test_trivialaugment_draws_a_magnitude_and_an_op_per_image():
    x = torch.full((128, 1, 8, 8), 0.5)
    factors = run(aug("trivialaugment", ops=["brightness"]), x)[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.01 - 1e-6 and factors.max() <= 1.99 + 1e-6
    assert len(set(factors.round(decimals=4).tolist())) > 20  # many of the 61 signed levels
    mixed = run(aug("trivialaugment", ops=["identity", "solarize"]), x * 0.5)[:, 0, 0, 0]
    assert (mixed == 0.25).any() and (mixed == 0.75).any()  # some images solarized, some not


@pytest.mark.parametrize("channels", [1, 3])
def test_policy_ops_treat_each_image_on_its_own(channels):
    x = images(6, c=channels, size=16)
    x[2] *= 0.3  # images with different ranges
    v = torch.linspace(0.1, 0.9, 6)
    for name, op in POLICY_OPS.items():
        if channels == 1 and name == "color":
            continue
        batched = op.fn(x, v * op.standard)
        alone = torch.cat([op.fn(x[i : i + 1], v[i : i + 1] * op.standard) for i in range(6)])
        assert torch.allclose(batched, alone, atol=1e-6), name
        assert batched.min() >= 0 and batched.max() <= 1, name


def test_solarize_and_posterize_ops_use_per_image_values():
    x = torch.linspace(0, 1, 256).reshape(16, 16).expand(2, 1, 16, 16)
    sol = POLICY_OPS["solarize"].fn(x, torch.tensor([0.0, 1.0]))  # level 0: nothing, level 30: all inverted
    assert torch.equal(sol[0], x[0]) and torch.equal(sol[1], 1 - x[1])
    half = POLICY_OPS["solarize"].fn(x, torch.tensor([0.5, 0.5]))[0]  # threshold about 0.5
    changed = half != x[0]
    assert torch.equal(half[changed], 1 - x[0][changed]) and changed.sum() == 127
    post = POLICY_OPS["posterize"].fn(x, torch.tensor([4.0, 1.0]))  # keep 4 bits / 7 bits
    assert post[0].unique().numel() == 16 and post[1].unique().numel() == 128


def test_policies_do_not_modify_the_input_and_depend_on_the_seed():
    x = images(c=3)
    before = x.clone()
    for name in NEW:
        a, b = run(aug(name), x, seed=0), run(aug(name), x, seed=1)
        assert torch.equal(x, before), name
        assert not torch.equal(a, b), name


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("affine", {"translate": 1.5}),
        ("affine", {"scale": (1.2, 0.8)}),
        ("affine", {"shear": 90}),
        ("affine", {"p": -0.1}),
        ("color_jitter", {"brightness": -0.1}),
        ("color_jitter", {"hue": 0.6}),
        ("resized_crop", {"scale": (0.0, 1.0)}),
        ("resized_crop", {"ratio": 1.0}),
        ("resized_crop", {"ratio": (2.0, 1.0)}),
        ("randaugment", {"magnitude": 31}),
        ("randaugment", {"num_ops": -1}),
        ("randaugment", {"ops": ["rotate", "warp"]}),
        ("trivialaugment", {"ops": []}),
        ("trivialaugment", {"ranges": "huge"}),
    ],
)
def test_factories_reject_bad_values(name, kwargs):
    with pytest.raises(Exception, match="must"):
        aug(name, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NEW)
def test_runs_on_cuda_with_a_cuda_generator(name):
    x = images(c=3).cuda()
    out = run(aug(name), x)
    assert out.is_cuda and math.isfinite(float(out.sum()))
