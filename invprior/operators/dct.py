"""Orthonormal DCT-II and its inverse along one axis, through the FFT (differentiable).

``X_k = s_k sum_n x_n cos(pi k (2n + 1) / (2N))`` with ``s_0 = sqrt(1/N)``, ``s_k = sqrt(2/N)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _phase(n: int, like: Tensor) -> Tensor:
    k = torch.arange(n, device=like.device, dtype=like.dtype)
    return torch.polar(torch.ones_like(k), -math.pi * k / (2 * n))


def _scale(n: int, like: Tensor) -> Tensor:
    s = torch.full((n,), math.sqrt(2.0 / n), device=like.device, dtype=like.dtype)
    s[0] = math.sqrt(1.0 / n)
    return s


def dct(x: Tensor, dim: int = -1) -> Tensor:
    """Orthonormal DCT-II of ``x`` along ``dim`` (equals ``scipy.fft.dct(x, norm='ortho')``)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    out = (torch.fft.fft(v, dim=-1) * _phase(n, x)).real * _scale(n, x)
    return out.movedim(-1, dim)


def idct(coefficients: Tensor, dim: int = -1) -> Tensor:
    """Inverse (= transpose) of ``dct`` along ``dim``."""
    c = coefficients.movedim(dim, -1)
    n = c.shape[-1]
    c = c / _scale(n, c)
    # Rebuild the FFT of the reordered signal from its real part: V_k = (C_k - i C_{N-k}) e^{i pi k / 2N}.
    reversed_ = torch.cat([torch.zeros_like(c[..., :1]), c[..., 1:].flip(-1)], dim=-1)
    spectrum = torch.complex(c, -reversed_) * _phase(n, c).conj()
    v = torch.fft.ifft(spectrum, dim=-1).real
    x = torch.empty_like(v)
    half = (n + 1) // 2
    x[..., ::2] = v[..., :half]
    x[..., 1::2] = v[..., half:].flip(-1)
    return x.movedim(-1, dim)


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2D DCT-II over the last two axes."""
    return dct(dct(x, -1), -2)


def idct2(c: Tensor) -> Tensor:
    """Inverse of ``dct2``."""
    return idct(idct(c, -2), -1)
