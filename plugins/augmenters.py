"""Built-in augmenters: batched, on the input's device, all randomness drawn from the generator ``g``.

Each factory returns a callable ``aug(x, y, g) -> (x, y)`` (see the plugin contract). These three are
label-preserving, so ``y`` comes back unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return float(p)


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


class Flip:
    """Mirror each image with probability ``p`` (horizontally, or vertically)."""

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
    """Zero-pad each image by ``padding`` pixels, then cut a random window of the original size."""

    def __init__(self, padding: int = 2, p: float = 1.0) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)
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
    """Rotate each image by an angle drawn uniformly from [-degrees, degrees] (bilinear, zero fill)."""

    def __init__(self, degrees: float = 15.0, p: float = 1.0) -> None:
        if degrees < 0:
            raise ValueError(f"degrees must be >= 0, got {degrees}")
        self.degrees = float(degrees)
        self.p = _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        angle = _uniform(b, -self.degrees, self.degrees, g, x.device) * (math.pi / 180.0)
        angle = torch.where(
            torch.rand(b, generator=g, device=x.device) < self.p, angle, torch.zeros_like(angle)
        )
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False), y


def flip(p: float = 0.5, direction: str = "horizontal") -> Flip:
    """Random horizontal (or vertical) flip with probability p."""
    return Flip(p=p, direction=direction)


def crop(padding: int = 2, p: float = 1.0) -> PadCrop:
    """Random pad-and-crop: shifts each image by up to `padding` pixels."""
    return PadCrop(padding=padding, p=p)


def rotation(degrees: float = 15.0, p: float = 1.0) -> Rotation:
    """Random rotation by up to +-degrees."""
    return Rotation(degrees=degrees, p=p)


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
    """Add N(0, std^2) noise to each pixel (probability ``p`` per image), clamped to [0, 1]."""

    def __init__(self, std: float = 0.05, p: float = 1.0) -> None:
        if std < 0:
            raise ValueError(f"std must be >= 0, got {std}")
        self.std, self.p = float(std), _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * self.std
        apply = (torch.rand(x.shape[0], generator=g, device=x.device) < self.p).to(x.dtype)[
            :, None, None, None
        ]
        return (x + noise * apply).clamp(0.0, 1.0), y


class SaltPepper:
    """Set a fraction ``amount`` of pixels to 0 or 1 (half each on average)."""

    def __init__(self, amount: float = 0.02, p: float = 1.0) -> None:
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"amount must be in [0, 1], got {amount}")
        self.amount, self.p = float(amount), _check_p(p)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(x.shape, generator=g, device=x.device)
        apply = (torch.rand(x.shape[0], generator=g, device=x.device) < self.p)[:, None, None, None]
        salt = (u < self.amount / 2) & apply
        pepper = (u >= self.amount / 2) & (u < self.amount) & apply
        return x.masked_fill(salt, 1.0).masked_fill(pepper, 0.0), y


class Erasing:
    """Random erasing / cutout (Zhong et al. 2020; DeVries and Taylor 2017): with probability ``p``,
    fill a square covering a fraction of the image drawn from [min_area, max_area] with ``value``."""

    def __init__(
        self, p: float = 0.5, min_area: float = 0.02, max_area: float = 0.2, value: float = 0.0
    ) -> None:
        if not 0.0 <= min_area <= max_area <= 1.0:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"value must be in [0, 1], got {value}")
        self.p, self.min_area, self.max_area, self.value = (
            _check_p(p),
            float(min_area),
            float(max_area),
            float(value),
        )

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
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def _pairs(self, x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lam = _beta(x.shape[0], self.alpha, g, x.device)
        return lam, torch.randperm(x.shape[0], generator=g, device=x.device)


class Mixup(_PairMixer):
    """mixup (Zhang et al., ICLR 2018): each image and its label row are mixed with those of another
    image of the batch, with a weight drawn from Beta(alpha, alpha)."""

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lam, perm = self._pairs(x, g)
        lx = lam.to(x.dtype)[:, None, None, None]
        ly = lam.to(y.dtype)[:, None]
        return lx * x + (1 - lx) * x[perm], ly * y + (1 - ly) * y[perm]


class CutMix(_PairMixer):
    """CutMix (Yun et al., ICCV 2019): paste a square from another image of the batch; label rows are
    mixed by the pasted area."""

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, h, w = x.shape
        lam, perm = self._pairs(x, g)
        mask = _box_mask(x.shape, 1 - lam, g).to(x.dtype)
        pasted = mask.sum(dim=(1, 2, 3)) / (h * w)  # the area actually pasted
        ly = (1 - pasted).to(y.dtype)[:, None]
        return x * (1 - mask) + x[perm] * mask, ly * y + (1 - ly) * y[perm]


def noise(std: float = 0.05, p: float = 1.0) -> GaussianNoise:
    """Gaussian pixel noise with standard deviation std."""
    return GaussianNoise(std=std, p=p)


def salt_pepper(amount: float = 0.02, p: float = 1.0) -> SaltPepper:
    """Salt-and-pepper noise on a fraction `amount` of pixels."""
    return SaltPepper(amount=amount, p=p)


def erasing(p: float = 0.5, min_area: float = 0.02, max_area: float = 0.2, value: float = 0.0) -> Erasing:
    """Random erasing / cutout of one square per image."""
    return Erasing(p=p, min_area=min_area, max_area=max_area, value=value)


def mixup(alpha: float = 0.2) -> Mixup:
    """mixup: convex combinations of image pairs and their label rows."""
    return Mixup(alpha=alpha)


def cutmix(alpha: float = 1.0) -> CutMix:
    """CutMix: paste a square from another image; labels mixed by area."""
    return CutMix(alpha=alpha)
