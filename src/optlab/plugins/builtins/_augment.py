"""Batched, on-device augmentation kernels (imported by workers)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor, gen) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=like.device, generator=gen)


def flip(x: torch.Tensor, p: float, gen) -> torch.Tensor:
    mask = torch.rand(x.shape[0], device=x.device, generator=gen) < p
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def crop(x: torch.Tensor, pad: int, gen) -> torch.Tensor:
    """Random crop of the original size after zero padding: one gather for the batch."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    idx = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx, chan, rows, cols]


def _perspective(n: int, scale: float, p: float, like: torch.Tensor, gen) -> torch.Tensor:
    """Per-image 3x3 homographies (normalised coordinates) that move each corner inwards
    by up to ``scale`` of the half-size, as torchvision's RandomPerspective does."""
    eye = torch.eye(3, device=like.device).expand(n, 3, 3).clone()
    if scale == 0 or p == 0:
        return eye
    corners = torch.tensor(
        [[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], device=like.device
    ).expand(n, 4, 2)
    inward = -corners * scale * torch.rand(n, 4, 2, device=like.device, generator=gen)
    moved = corners + inward
    # Solve for H with H(moved) = corners: the output pixel at a corner samples the input
    # at the moved corner's inverse, i.e. the sampling grid maps output -> input.
    a = torch.zeros(n, 8, 8, device=like.device)
    b = torch.zeros(n, 8, device=like.device)
    for i in range(4):
        (x, y), (u, v) = corners[:, i].unbind(-1), moved[:, i].unbind(-1)
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        a[:, 2 * i] = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
        a[:, 2 * i + 1] = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
        b[:, 2 * i], b[:, 2 * i + 1] = u, v
    h = torch.cat([torch.linalg.solve(a, b), torch.ones(n, 1, device=like.device)], 1)
    h = h.view(n, 3, 3)
    apply = torch.rand(n, device=like.device, generator=gen) < p
    return torch.where(apply[:, None, None], h, eye)


def geometry(
    x: torch.Tensor, degrees: float, translate: float, perspective: float, perspective_p: float, gen
) -> torch.Tensor:
    """Rotation, translation and perspective composed into one bilinear resampling."""
    n, _, h, w = x.shape
    angle = _uniform(n, -degrees, degrees, x, gen) * math.pi / 180
    tx = _uniform(n, -translate, translate, x, gen) * 2
    ty = _uniform(n, -translate, translate, x, gen) * 2
    cos, sin = angle.cos(), angle.sin()
    affine = torch.zeros(n, 3, 3, device=x.device)
    affine[:, 0, 0], affine[:, 0, 1], affine[:, 0, 2] = cos, -sin, tx
    affine[:, 1, 0], affine[:, 1, 1], affine[:, 1, 2] = sin, cos, ty
    affine[:, 2, 2] = 1
    m = affine @ _perspective(n, perspective, perspective_p, x, gen)
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, h, device=x.device),
        torch.linspace(-1, 1, w, device=x.device),
        indexing="ij",
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3)
    mapped = points @ m.transpose(1, 2)
    grid = (mapped[..., :2] / mapped[..., 2:].clamp_min(1e-6)).view(n, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in [0, 1] by ``shift`` (fractions of a turn)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = (
        torch.where(
            maxc == r,
            ((g - b) / safe) % 6,
            torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4),
        )
        / 6
    )
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    h = (h + shift[:, None, None]) % 1.0
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    v = maxc
    k = lambda n: (n + h * 6) % 6  # noqa: E731 - the standard HSV -> RGB construction
    f = lambda n: v - v * s * torch.clamp(torch.minimum(k(n), 4 - k(n)), 0, 1)  # noqa: E731
    return torch.stack([f(5), f(3), f(1)], 1)


def color_jitter(x: torch.Tensor, p: Any, gen) -> torch.Tensor:
    """Brightness, contrast, saturation, hue, each with a per-image random factor, on
    images in [0, 1]."""
    n = x.shape[0]

    def factor(amount: float) -> torch.Tensor:
        return _uniform(n, max(0.0, 1 - amount), 1 + amount, x, gen)[:, None, None, None]

    if p.brightness:
        x = (x * factor(p.brightness)).clamp(0, 1)
    if p.contrast:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * factor(p.contrast) + mean).clamp(0, 1)
    if p.saturation and x.shape[1] == 3:
        gray = _gray(x)
        x = ((x - gray) * factor(p.saturation) + gray).clamp(0, 1)
    if p.hue and x.shape[1] == 3:
        x = _hue_shift(x, _uniform(n, -p.hue, p.hue, x, gen)).clamp(0, 1)
    return x


def build_flip_crop(params: Any, **_: Any):
    def augment(x, generator):
        if params.flip:
            x = flip(x, 0.5, generator)
        if params.pad:
            x = crop(x, params.pad, generator)
        return x

    return augment


def build_pipeline(params: Any, *, mean: Any = None, std: Any = None, **_: Any):
    jitter = params.brightness or params.contrast or params.saturation or params.hue
    warp = params.rotation or params.translate or params.perspective

    def augment(x, generator):
        if params.flip:
            x = flip(x, params.flip, generator)
        if warp:
            x = geometry(
                x,
                params.rotation,
                params.translate,
                params.perspective,
                params.perspective_p,
                generator,
            )
        if params.pad:
            x = crop(x, params.pad, generator)
        if jitter:
            m, s = _stats(x, mean, std)
            x = (color_jitter(x * s + m, params, generator) - m) / s
        return x

    return augment


def _stats(x: torch.Tensor, mean: Any, std: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset's normalisation, to jitter colours on the un-normalised image."""
    c = x.shape[1]
    m = torch.tensor(mean if mean is not None else [0.0] * c, device=x.device)
    s = torch.tensor(std if std is not None else [1.0] * c, device=x.device)
    return m.view(1, -1, 1, 1), s.view(1, -1, 1, 1)
