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
