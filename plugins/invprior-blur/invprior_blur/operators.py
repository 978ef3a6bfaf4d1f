"""Blur and super-resolution as invprior operators.

``Blur``: circular convolution ``A x = k * x`` computed as ``F^-1 (F k . F x)``; the adjoint is the
correlation ``F^-1 (conj(F k) . F y)``, exact to rounding. ``SuperResolution``: blur, then keep every
``factor``-th pixel along both axes; its adjoint puts ``y`` back on the fine grid (zeros in
between) and correlates with the kernel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from invprior import ForwardOperator
from invprior.core.operator import linear_apply
from invprior.errors import ConfigError
from invprior.validation import positive_int
from invprior_blur.kernels import check_kernel, gaussian_kernel, motion_kernel

__all__ = ["KERNELS", "Blur", "SuperResolution"]

KERNELS = ("gaussian", "motion", "custom")


def make_kernel(kernel: str, sigma: float, length: float, angle: float, weights: Any) -> Tensor:
    if kernel == "gaussian":
        return gaussian_kernel(sigma)
    if kernel == "motion":
        return motion_kernel(length, angle)
    if kernel == "custom":
        if weights is None:
            raise ConfigError("blur: kernel='custom' needs 'weights' (a 2-D array with odd sides)")
        return check_kernel(torch.as_tensor(weights))
    raise ConfigError(f"blur: kernel must be one of {KERNELS}, got {kernel!r}")


class Blur(ForwardOperator):
    """Circular convolution of ``(B, C, n, n)`` images with a ``gaussian`` (``sigma``), ``motion``
    (``length`` pixels at ``angle`` degrees) or ``custom`` (``weights``) kernel."""

    is_linear = True

    def __init__(self, size: int = 64, kernel: str = "gaussian", sigma: float = 1.5, length: float = 9.0,
                 angle: float = 0.0, weights: Any = None, channels: int = 1) -> None:
        size, channels = positive_int(size, "blur: size"), positive_int(channels, "blur: channels")
        self.kernel = make_kernel(kernel, sigma, length, angle, weights)
        if max(self.kernel.shape) > size:
            raise ConfigError(f"blur: the kernel {tuple(self.kernel.shape)} is larger than the {size}x{size} image")
        # the kernel centred at pixel (0, 0) of an n x n grid, wrapping around
        padded = torch.zeros(size, size, dtype=torch.float64)
        kh, kw = self.kernel.shape
        padded[:kh, :kw] = self.kernel
        self._padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
        super().__init__((channels, size, size), (channels, size, size))

    def _transfer(self, like: Tensor) -> Tensor:
        return torch.fft.rfft2(self._cast("kernel", self._padded, like))

    def _convolve(self, x: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * self._transfer(x), s=x.shape[-2:])

    def _correlate(self, y: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(y) * self._transfer(y).conj(), s=y.shape[-2:])

    def forward(self, x: Tensor) -> Tensor:
        return linear_apply(x, self._convolve, self._correlate)

    def _adjoint(self, y: Tensor) -> Tensor:
        return linear_apply(y, self._correlate, self._convolve)


class SuperResolution(ForwardOperator):
    """Blur (as :class:`Blur`) then keep every ``factor``-th pixel: ``(B, C, n, n) -> (B, C, n/f, n/f)``."""

    is_linear = True

    def __init__(self, size: int = 64, factor: int = 2, kernel: str = "gaussian", sigma: float = 1.0,
                 length: float = 9.0, angle: float = 0.0, weights: Any = None, channels: int = 1) -> None:
        size = positive_int(size, "super_resolution: size")
        self.factor = positive_int(factor, "super_resolution: factor")
        if size % self.factor:
            raise ConfigError(f"super_resolution: size {size} is not a multiple of factor {self.factor}")
        self.blur = Blur(size, kernel, sigma, length, angle, weights, channels)
        low = size // self.factor
        super().__init__((channels, size, size), (channels, low, low))

    def _down(self, x: Tensor) -> Tensor:
        return self.blur._convolve(x)[..., ::self.factor, ::self.factor]

    def _up(self, y: Tensor) -> Tensor:
        fine = y.new_zeros(*y.shape[:-2], *self.domain_shape[-2:])
        fine[..., ::self.factor, ::self.factor] = y
        return self.blur._correlate(fine)

    def forward(self, x: Tensor) -> Tensor:
        return linear_apply(x, self._down, self._up)

    def _adjoint(self, y: Tensor) -> Tensor:
        return linear_apply(y, self._up, self._down)
