"""Total variation on ``(B, C, H, W)`` images, with forward differences (Neumann boundary)."""

from __future__ import annotations

import torch
from torch import Tensor

from invprior.core.interfaces import Regularizer
from invprior.errors import ConfigError, ShapeError


def gradient(x: Tensor) -> Tensor:
    """Forward differences ``(d_H x, d_W x)`` stacked on a new axis 1: ``(B, 2, C, H, W)``; zero at the far edge."""
    if x.ndim != 4:
        raise ShapeError(f"total variation expects images of shape (B, C, H, W), got {tuple(x.shape)}")
    dh = torch.zeros_like(x)
    dw = torch.zeros_like(x)
    dh[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    dw[:, :, :, :-1] = x[:, :, :, 1:] - x[:, :, :, :-1]
    return torch.stack([dh, dw], dim=1)


def divergence(p: Tensor) -> Tensor:
    """Negative adjoint of ``gradient``: ``<gradient(x), p> = -<x, divergence(p)>``."""
    ph, pw = p[:, 0], p[:, 1]
    out = torch.zeros_like(ph)
    out[:, :, :-1] += ph[:, :, :-1]
    out[:, :, 1:] -= ph[:, :, :-1]
    out[:, :, :, :-1] += pw[:, :, :, :-1]
    out[:, :, :, 1:] -= pw[:, :, :, :-1]
    return out


class AnisotropicTV(Regularizer):
    """``TV(x) = sum |d_H x| + |d_W x|`` per image."""

    def __call__(self, x: Tensor) -> Tensor:
        return gradient(x).abs().flatten(1).sum(dim=1)


class IsotropicTV(Regularizer):
    """``TV_eps(x) = sum sqrt(|d_H x|^2 + |d_W x|^2 + eps^2) - eps`` per image (smooth since ``eps > 0``)."""

    def __init__(self, eps: float = 1e-3) -> None:
        if not eps > 0:
            raise ConfigError(f"{type(self).__name__}: "
                              f"eps must be > 0 (the smoothing that keeps it differentiable), got {eps!r}")
        self.eps = float(eps)

    def __call__(self, x: Tensor) -> Tensor:
        magnitude = (gradient(x).pow(2).sum(dim=1) + self.eps**2).sqrt() - self.eps
        return magnitude.flatten(1).sum(dim=1)
