"""Blur kernels: normalised to sum 1, odd-sized, float64."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invprior.errors import ConfigError

__all__ = ["gaussian_kernel", "motion_kernel", "check_kernel"]


def gaussian_kernel(sigma: float, size: int | None = None) -> Tensor:
    """``exp(-(i^2 + j^2) / (2 sigma^2))`` on a ``size x size`` grid (default ``2 ceil(3 sigma) + 1``), summing to 1."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"blur: sigma must be a positive number, got {sigma!r}")
    size = 2 * math.ceil(3 * sigma) + 1 if size is None else int(size)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma ** 2))
    return check_kernel(kernel)


def motion_kernel(length: float, angle: float = 0.0, samples: int = 200) -> Tensor:
    """A straight motion of ``length`` pixels at ``angle`` degrees (from the first image axis), by
    sampling the segment and bilinear splatting; sums to 1."""
    if not (isinstance(length, (int, float)) and math.isfinite(length) and length >= 1):
        raise ConfigError(f"blur: motion length must be a number >= 1 (pixels), got {length!r}")
    half = math.ceil(length / 2) + 1
    size = 2 * half + 1
    kernel = torch.zeros(size, size, dtype=torch.float64)
    t = torch.linspace(-length / 2, length / 2, samples, dtype=torch.float64)
    rad = math.radians(angle)
    rows, cols = half + t * math.cos(rad), half + t * math.sin(rad)
    r0, c0 = rows.floor().long(), cols.floor().long()
    fr, fc = rows - r0, cols - c0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            kernel.index_put_((r0 + dr, c0 + dc), wr * wc, accumulate=True)
    return check_kernel(kernel)


def check_kernel(kernel: Tensor) -> Tensor:
    """A finite, non-negative 2-D kernel with odd sides and a positive sum, normalised to sum 1."""
    kernel = torch.as_tensor(kernel, dtype=torch.float64)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ConfigError(f"blur: a kernel must be a 2-D array with odd sides, got shape {tuple(kernel.shape)}")
    if not torch.isfinite(kernel).all() or (kernel < 0).any() or float(kernel.sum()) <= 0:
        raise ConfigError("blur: a kernel must be finite and non-negative with a positive sum")
    return kernel / kernel.sum()
