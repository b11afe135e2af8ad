"""Built-in augmenters: batched, on the input's device, all randomness drawn from the generator ``g``.

Each class is its plugin's factory (the entry point names it): built with the keywords of params.yaml, its
instances are callables ``aug(x, y, g) -> (x, y)`` (see the plugin contract). The first paragraph of a class
docstring is the plugin's summary in ``distillops plugins list`` and the README. All but mixup and cutmix
are label-preserving, so ``y`` comes back unchanged.

torchvision v2 and hand-written parts: ``equalize`` and ``autocontrast`` are
``torchvision.transforms.v2.functional`` calls, as are the "degenerate" images that sharpness and saturation
blend towards (``adjust_sharpness(x, 0)``, the blurred image; ``rgb_to_grayscale``) and the uint8 conversion
for posterize (``to_dtype``); these run on a whole ``[B, C, H, W]`` batch and treat each image on its own.
v2 takes one Python number for the whole batch, so everything whose parameter differs per image is
hand-written: the geometric ops (rotate, shear, translate, zoom, resized crop) are one ``affine_grid`` /
``grid_sample`` call with a matrix per image (``_affine_warp``), the blends with per-image factors
(brightness, contrast, saturation, sharpness), solarize thresholds, posterize bit masks and hue (a rotation
of the chroma plane in YIQ space, close to but not the same as v2's HSV ``adjust_hue``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from plugins._checks import integer, is_number, number


def _tf():  # noqa: ANN202 - torchvision.transforms.v2.functional
    """torchvision's image functions, imported at first use: importing torchvision costs every stage
    about 2 s, and most augmenters never need it."""
    from torchvision.transforms.v2 import functional

    return functional


def _check_p(p: float) -> float:
    return number("p", p, 0, 1)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _check_range(value: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    """A (min, max) pair of finite numbers with low <= min <= max <= high (low excluded when it is 0:
    strictly positive)."""
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(is_number(v) for v in value)
        and low <= value[0] <= value[1] <= high
    )
    if not ok or (low == 0 and value[0] <= 0):
        raise ValueError(f"{name} must be a pair (min, max) with {low} < min <= max <= {high}, got {value!r}")
    return float(value[0]), float(value[1])


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t[:, None, None, None]


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample each image through its own [2, 3] matrix (output -> input, in [-1, 1] coordinates)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _mat2(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)


def _affine_warp(
    x: torch.Tensor,
    *,
    angle: torch.Tensor | None = None,
    shear_x: torch.Tensor | None = None,
    shear_y: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    tx: torch.Tensor | None = None,
    ty: torch.Tensor | None = None,
) -> torch.Tensor:
    """Warp each image about its centre by its own map: zoom ``scale``, shear x then y (``shear_*`` are
    tangents), rotate by ``angle`` (radians, counter-clockwise as seen), then shift by ``tx``/``ty``
    (fractions of width/height, right/down). All [B] tensors; None leaves that part out. Bilinear,
    zero fill."""
    b, _, h, w = x.shape
    zero, one = x.new_zeros(b), x.new_ones(b)
    angle, shear_x, shear_y, tx, ty = (zero if v is None else v for v in (angle, shear_x, shear_y, tx, ty))
    scale = one if scale is None else scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    # inverse of the forward map R(angle) Shear_y Shear_x scale, in pixel units centred on the image
    inv = _mat2(one, -shear_x, zero, one) @ _mat2(one, zero, -shear_y, one) @ _mat2(cos, -sin, sin, cos)
    inv = inv / scale[:, None, None]
    half = x.new_tensor([w / 2, h / 2])  # pixel units per [-1, 1] unit, x then y
    lin = inv * (half[None, :] / half[:, None])
    offset = -(lin @ torch.stack([2 * tx, 2 * ty], -1)[..., None])
    return _warp(x, torch.cat([lin, offset], -1))


class Flip:
    """Random horizontal (or vertical) flip with probability p.

    Mirrors each image with probability ``p``, horizontally or (``direction: vertical``) vertically.
    """

    def __init__(self, p: float = 0.5, direction: str = "horizontal") -> None:
        if direction not in ("horizontal", "vertical"):
            raise ValueError(f"direction must be 'horizontal' or 'vertical', got {direction!r}")
        self.p = _check_p(p)
        self.dim = -1 if direction == "horizontal" else -2

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.rand(x.shape[0], generator=g, device=x.device) < self.p
        return torch.where(mask[:, None, None, None], x.flip(self.dim), x), y


class PadCrop:
    """Random pad-and-crop: shifts each image by up to `padding` pixels.

    Zero-pads each image by ``padding`` pixels, then cuts a random window of the original size (with
    probability ``p``; the other images keep the centre window, i.e. stay unchanged).
    """

    def __init__(self, padding: int = 2, p: float = 1.0) -> None:
        self.padding = integer("padding", padding, 0)
        self.p = _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.padding == 0:
            return x, y
        b, c, h, w = x.shape
        pad = self.padding
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=g, device=x.device)
        keep = torch.rand(b, generator=g, device=x.device) >= self.p
        offsets = torch.where(keep, torch.full_like(offsets, pad), offsets)  # unchanged images: centre crop
        rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(
            b, c, h, w + 2 * pad
        )
        out = padded.gather(2, rows)
        cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
        return out.gather(3, cols), y


class Rotation:
    """Random rotation by up to +-degrees.

    Rotates each image (with probability ``p``) by an angle drawn uniformly from [-degrees, degrees]
    (bilinear, zero fill).
    """

    def __init__(self, degrees: float = 15.0, p: float = 1.0) -> None:
        self.degrees = number("degrees", degrees, 0, unit="degrees")
        self.p = _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        angle = _uniform(b, -self.degrees, self.degrees, g, x.device) * (math.pi / 180.0)
        angle = torch.where(
            torch.rand(b, generator=g, device=x.device) < self.p, angle, torch.zeros_like(angle)
        )
        return _affine_warp(x, angle=angle), y


def _beta(n: int, alpha: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha), derived from ``g`` (torch has no seeded Beta sampler)."""
    import numpy as np

    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=n)).float().to(device)


def _box_mask(shape: torch.Size, area: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A [B, 1, H, W] mask with one square per image covering about ``area`` (fraction) of it."""
    b, _, h, w = shape
    side_h = (area.sqrt() * h).round().long().clamp(0, h)
    side_w = (area.sqrt() * w).round().long().clamp(0, w)
    top = (torch.rand(b, generator=g, device=area.device) * (h - side_h + 1)).long()
    left = (torch.rand(b, generator=g, device=area.device) * (w - side_w + 1)).long()
    rows = torch.arange(h, device=area.device)[None, :]
    cols = torch.arange(w, device=area.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + side_h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + side_w)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(torch.float32)


class GaussianNoise:
    """Gaussian pixel noise with standard deviation std.

    Adds N(0, std^2) noise to each pixel (probability ``p`` per image), clamped to [0, 1].
    """

    def __init__(self, std: float = 0.05, p: float = 1.0) -> None:
        self.std, self.p = number("std", std, 0), _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * self.std
        apply = (torch.rand(x.shape[0], generator=g, device=x.device) < self.p).to(x.dtype)[
            :, None, None, None
        ]
        return (x + noise * apply).clamp(0.0, 1.0), y


class SaltPepper:
    """Salt-and-pepper noise on a fraction `amount` of pixels.

    Sets a fraction ``amount`` of the pixels of each image (probability ``p`` per image) to 0 or 1, half
    each on average.
    """

    def __init__(self, amount: float = 0.02, p: float = 1.0) -> None:
        self.amount, self.p = number("amount", amount, 0, 1), _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(x.shape, generator=g, device=x.device)
        apply = (torch.rand(x.shape[0], generator=g, device=x.device) < self.p)[:, None, None, None]
        salt = (u < self.amount / 2) & apply
        pepper = (u >= self.amount / 2) & (u < self.amount) & apply
        return x.masked_fill(salt, 1.0).masked_fill(pepper, 0.0), y


class Erasing:
    """Random erasing / cutout of one square per image.

    Random erasing / cutout (Zhong et al. 2020; DeVries and Taylor 2017): with probability ``p``, fill a
    square covering a fraction of the image drawn from [min_area, max_area] with ``value``.
    """

    def __init__(
        self, p: float = 0.5, min_area: float = 0.02, max_area: float = 0.2, value: float = 0.0
    ) -> None:
        self.p = _check_p(p)
        self.min_area = number("min_area", min_area, 0, 1)
        self.max_area = number("max_area", max_area, 0, 1)
        if self.min_area > self.max_area:
            raise ValueError(f"min_area must be <= max_area, got {min_area} > {max_area}")
        self.value = number("value", value, 0, 1)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        area = _uniform(b, self.min_area, self.max_area, g, x.device)
        area = torch.where(torch.rand(b, generator=g, device=x.device) < self.p, area, torch.zeros_like(area))
        mask = _box_mask(x.shape, area, g).to(x.dtype)
        return x * (1 - mask) + self.value * mask, y


class _PairMixer:
    """Shared by the label-mixing augmenters: pairs each image with another of the batch and draws a
    per-image weight from Beta(alpha, alpha)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = number("alpha", alpha, 0, low_open=True)

    def _pairs(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lam = _beta(x.shape[0], self.alpha, g, x.device)
        return lam, torch.randperm(x.shape[0], generator=g, device=x.device)


class Mixup(_PairMixer):
    """mixup: convex combinations of image pairs and their label rows.

    mixup (Zhang et al., ICLR 2018): each image and its label row are mixed with those of another image of
    the batch, with a weight drawn from Beta(alpha, alpha).
    """

    def __init__(self, alpha: float = 0.2) -> None:
        super().__init__(alpha)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lam, perm = self._pairs(x, g)
        lx = lam.to(x.dtype)[:, None, None, None]
        ly = lam.to(y.dtype)[:, None]
        return lx * x + (1 - lx) * x[perm], ly * y + (1 - ly) * y[perm]


class CutMix(_PairMixer):
    """CutMix: paste a square from another image; labels mixed by area.

    CutMix (Yun et al., ICCV 2019): paste a square from another image of the batch, its area drawn from
    Beta(alpha, alpha); label rows are mixed by the area actually pasted.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(alpha)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, h, w = x.shape
        lam, perm = self._pairs(x, g)
        mask = _box_mask(x.shape, 1 - lam, g).to(x.dtype)
        pasted = mask.sum(dim=(1, 2, 3)) / (h * w)  # the area actually pasted
        ly = (1 - pasted).to(y.dtype)[:, None]
        return x * (1 - mask) + x[perm] * mask, ly * y + (1 - ly) * y[perm]


class Affine:
    """Random affine per image: zoom, shift, shear (and rotation), bilinear.

    A random affine map per image (like torchvision's RandomAffine): zoom drawn from ``scale``, shift up to
    ``translate`` of the width/height each way, x and y shear each in [-shear, shear] degrees, rotation in
    [-degrees, degrees]; bilinear, zero fill, each image transformed with probability ``p``.
    """

    def __init__(
        self,
        degrees: float = 0.0,
        translate: float = 0.1,
        scale: Sequence[float] = (0.9, 1.1),
        shear: float = 10.0,
        p: float = 1.0,
    ) -> None:
        self.degrees = number("degrees", degrees, 0, unit="degrees")
        self.translate = number("translate", translate, 0, 1, unit="fraction of the image size")
        self.shear = number("shear", shear, 0, 90, high_open=True, unit="degrees")
        self.scale = _check_range(scale, "scale", 0.0, math.inf)
        self.p = _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, dev = x.shape[0], x.device
        zoom = _uniform(b, *self.scale, g, dev)
        tx, ty = (_uniform(b, -self.translate, self.translate, g, dev) for _ in range(2))
        sx, sy = (torch.tan(_uniform(b, -self.shear, self.shear, g, dev).deg2rad()) for _ in range(2))
        angle = _uniform(b, -self.degrees, self.degrees, g, dev).deg2rad()
        skip = torch.rand(b, generator=g, device=dev) >= self.p  # these images get identity parameters
        tx, ty, sx, sy, angle = (v.masked_fill(skip, 0.0) for v in (tx, ty, sx, sy, angle))
        zoom = zoom.masked_fill(skip, 1.0)
        return _affine_warp(x, angle=angle, shear_x=sx, shear_y=sy, scale=zoom, tx=tx, ty=ty), y


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per image ``degenerate + factor * (x - degenerate)`` (0: degenerate, 1: x), clamped to [0, 1]."""
    return (degenerate + _per_image(factor.to(x.dtype)) * (x - degenerate)).clamp(0.0, 1.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return _tf().rgb_to_grayscale(x) if x.shape[1] == 3 else x.mean(1, keepdim=True)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, x.new_zeros(()), factor)  # towards black


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _grey(x).mean((1, 2, 3), keepdim=True), factor)  # towards the image's mean grey


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _tf().rgb_to_grayscale(x, 3), factor) if x.shape[1] == 3 else x  # towards greyscale


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _tf().adjust_sharpness(x, 0.0), factor)  # towards the blurred image


_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_INV = torch.linalg.inv(_YIQ)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma (I, Q plane of YIQ) by ``shift`` turns, keeping luma; RGB only (C == 3)."""
    if x.shape[1] != 3:
        return x
    turn = shift.to(torch.float64) * (2 * math.pi)
    rot = torch.zeros(x.shape[0], 3, 3, dtype=torch.float64, device=x.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1:, 1:] = _mat2(turn.cos(), -turn.sin(), turn.sin(), turn.cos())
    m = (_YIQ_INV.to(x.device) @ rot @ _YIQ.to(x.device)).to(x.dtype)
    return torch.einsum("bij,bjhw->bihw", m, x).clamp(0.0, 1.0)


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= _per_image(threshold.to(x.dtype)), 1.0 - x, x)


def _posterize(x: torch.Tensor, bits_removed: torch.Tensor) -> torch.Tensor:
    """Zero the ``bits_removed`` (rounded) lowest bits of each image's 8-bit values."""
    mask = (256 - 2 ** bits_removed.round().long()).to(torch.uint8)
    u8 = _tf().to_dtype(x, torch.uint8, scale=True) & _per_image(mask)
    return _tf().to_dtype(u8, x.dtype, scale=True)


class ColorJitter:
    """Random brightness/contrast per image (saturation/hue too on RGB).

    Colour jitter (like torchvision's ColorJitter; e.g. SimCLR, Chen et al. 2020) with factors drawn per
    image, applied in the order brightness, contrast, saturation, hue: brightness ``b`` scales by a factor
    in [1 - b, 1 + b] (blend with black), contrast blends with the image's mean grey, saturation with its
    greyscale version, and hue rotates the chroma by up to ``hue`` turns each way (YIQ space). Saturation
    and hue apply only to RGB images (C == 3) and are no-ops otherwise. Each image is changed with
    probability ``p``.
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.05,
        p: float = 1.0,
    ) -> None:
        self.factors = tuple(
            number(name, value, 0)
            for name, value in (
                ("brightness", brightness),
                ("contrast", contrast),
                ("saturation", saturation),
            )
        )
        self.hue, self.p = number("hue", hue, 0, 0.5, unit="turns"), _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, dev = x.shape[0], x.device
        bf, cf, sf = (_uniform(b, max(0.0, 1.0 - s), 1.0 + s, g, dev) for s in self.factors)
        hf = _uniform(b, -self.hue, self.hue, g, dev)
        apply = torch.rand(b, generator=g, device=dev) < self.p
        bf, cf, sf = (torch.where(apply, f, 1.0) for f in (bf, cf, sf))
        hf = torch.where(apply, hf, 0.0)
        return _hue(_saturation(_contrast(_brightness(x, bf), cf), sf), hf), y


class ResizedCrop:
    """Random resized crop (area fraction `scale`, aspect `ratio`), resized back.

    Random resized crop (the Inception crop, Szegedy et al. 2015; torchvision's RandomResizedCrop): per
    image a window covering a fraction ``scale`` of the area, with aspect ratio (width / height) log-uniform
    in ``ratio``, is resized back to the input size (bilinear). Ten candidate windows are drawn per image at
    once and the first that fits inside the image is used; an image where none fits keeps the whole image.
    """

    TRIES = 10

    def __init__(self, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        self.scale = _check_range(scale, "scale", 0.0, 1.0)
        self.ratio = _check_range(ratio, "ratio", 0.0, math.inf)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        dev, n = x.device, b * self.TRIES
        area = _uniform(n, *self.scale, g, dev).view(b, -1)
        ratio = _uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), g, dev).exp().view(b, -1)
        cw, ch = (area * ratio * h / w).sqrt(), (area / ratio * w / h).sqrt()  # fractions of width, height
        fits = (cw <= 1) & (ch <= 1)
        first = fits.int().argmax(1, keepdim=True)  # index of the first candidate that fits
        cw = torch.where(fits.any(1), cw.gather(1, first)[:, 0], 1.0)
        ch = torch.where(fits.any(1), ch.gather(1, first)[:, 0], 1.0)
        cx, cy = ((2 * torch.rand(b, generator=g, device=dev) - 1) * (1 - s) for s in (cw, ch))  # centres
        zero = torch.zeros_like(cw)
        theta = torch.stack([torch.stack([cw, zero, cx], 1), torch.stack([zero, ch, cy], 1)], 1)
        return _warp(x, theta, padding="border"), y  # edge samples fall within half a pixel of the image


class PolicyOp(NamedTuple):
    """One op of the augmentation policies: ``fn(x, v)`` with a [B] tensor of per-image values ``v``; a
    magnitude level m in [0, 30] gives ``v = m / 30 * standard`` (RandAugment) or ``* wide``
    (TrivialAugment's wide ranges), negated for half the images when ``signed``."""

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    standard: float
    wide: float
    signed: bool


# Ranges follow torchvision's RandAugment / TrivialAugmentWide. Shear values are tangents, translations
# fractions of the image size (wide: 32 px on 32-px images), posterize counts the low bits dropped, solarize
# inverts pixels >= (1 - v) * 256/255 (PIL's 256..0 thresholds: level 0 changes nothing), blend ops use 1 + v.
POLICY_OPS: dict[str, PolicyOp] = {
    "identity": PolicyOp(lambda x, v: x, 0.0, 0.0, False),
    "rotate": PolicyOp(lambda x, v: _affine_warp(x, angle=v.deg2rad()), 30.0, 135.0, True),
    "shear_x": PolicyOp(lambda x, v: _affine_warp(x, shear_x=v), 0.3, 0.99, True),
    "shear_y": PolicyOp(lambda x, v: _affine_warp(x, shear_y=v), 0.3, 0.99, True),
    "translate_x": PolicyOp(lambda x, v: _affine_warp(x, tx=v), 150 / 331, 1.0, True),
    "translate_y": PolicyOp(lambda x, v: _affine_warp(x, ty=v), 150 / 331, 1.0, True),
    "brightness": PolicyOp(lambda x, v: _brightness(x, 1 + v), 0.9, 0.99, True),
    "contrast": PolicyOp(lambda x, v: _contrast(x, 1 + v), 0.9, 0.99, True),
    "color": PolicyOp(lambda x, v: _saturation(x, 1 + v), 0.9, 0.99, True),
    "sharpness": PolicyOp(lambda x, v: _sharpness(x, 1 + v), 0.9, 0.99, True),
    "posterize": PolicyOp(_posterize, 4.0, 6.0, False),
    "solarize": PolicyOp(lambda x, v: _solarize(x, (1 - v) * 256 / 255), 1.0, 1.0, False),
    "autocontrast": PolicyOp(lambda x, v: _tf().autocontrast(x), 0.0, 0.0, False),
    "equalize": PolicyOp(lambda x, v: _tf().equalize(x), 0.0, 0.0, False),
}
_RGB_ONLY = frozenset({"color"})
LEVELS = 30  # magnitude levels 0..30, as torchvision's 31 bins


class _Policy:
    """Shared by RandAugment and TrivialAugment: each image gets its own op from ``ops`` and its own
    magnitude; each op runs once on the images that chose it. RGB-only ops are left out when C != 3."""

    def __init__(self, ops: Sequence[str] | str | None, ranges: str) -> None:
        ops = ops.split(",") if isinstance(ops, str) else list(POLICY_OPS) if ops is None else ops
        if not isinstance(ops, list | tuple) or not all(isinstance(op, str) for op in ops):
            raise ValueError(f"ops must be a non-empty list of {sorted(POLICY_OPS)}, got {ops!r}")
        ops = [op.strip() for op in ops]
        unknown = [op for op in ops if op not in POLICY_OPS]
        if not ops or unknown:
            raise ValueError(f"ops must be a non-empty list of {sorted(POLICY_OPS)}, got unknown {unknown}")
        if ranges not in ("standard", "wide"):
            raise ValueError(f"ranges must be 'standard' or 'wide', got {ranges!r}")
        self.ops, self.wide = ops, ranges == "wide"

    def _apply(self, x: torch.Tensor, level: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One op per image, at magnitude ``level`` ([B], in [0, LEVELS]) with a random sign."""
        names = [op for op in self.ops if x.shape[1] == 3 or op not in _RGB_ONLY]
        b, dev = x.shape[0], x.device
        choice = torch.randint(max(len(names), 1), (b,), generator=g, device=dev)
        sign = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0)
        out = x.clone()
        for i, name in enumerate(names):
            idx = (choice == i).nonzero()[:, 0]
            if name == "identity" or idx.numel() == 0:
                continue
            op = POLICY_OPS[name]
            v = level[idx] / LEVELS * (op.wide if self.wide else op.standard)
            out[idx] = op.fn(out[idx], v * sign[idx] if op.signed else v)
        return out


class RandAugment(_Policy):
    """RandAugment: num_ops random ops per image at a fixed magnitude (0-30).

    RandAugment (Cubuk et al., 2020): ``num_ops`` times in a row, each image gets an op drawn uniformly
    from ``ops`` at the fixed ``magnitude`` (level 0..30 of the op's range, torchvision's scale; default
    9), signed ops with a random sign. Images with 1 or 3 channels.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9,
        ops: Sequence[str] | None = None,
        ranges: str = "standard",
    ) -> None:
        super().__init__(ops, ranges)
        self.num_ops = integer("num_ops", num_ops, 0)
        self.magnitude = number("magnitude", magnitude, 0, LEVELS)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        level = torch.full((x.shape[0],), self.magnitude, device=x.device)
        for _ in range(self.num_ops):
            x = self._apply(x, level, g)
        return x, y


class TrivialAugment(_Policy):
    """TrivialAugment: one random op per image at a random magnitude (0-30).

    TrivialAugment (Müller and Hutter, ICCV 2021): each image gets one op drawn uniformly from ``ops``
    at a magnitude level drawn uniformly from 0..30 per image, signed ops with a random sign, over the
    "wide" ranges by default. Images with 1 or 3 channels.
    """

    def __init__(self, ops: Sequence[str] | None = None, ranges: str = "wide") -> None:
        super().__init__(ops, ranges)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        level = torch.randint(LEVELS + 1, (x.shape[0],), generator=g, device=x.device).float()
        return self._apply(x, level, g), y
