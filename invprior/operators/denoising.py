"""Denoising: the identity operator ``A x = x``."""

from __future__ import annotations

from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.operators._image import image_shape


class Denoising(ForwardOperator):
    """``A = I`` on ``(B, C, H, W)`` images; its own adjoint and inverse."""

    is_linear = True

    def __init__(self, size: int | tuple[int, int] = 64, channels: int = 1) -> None:
        shape = image_shape(size, channels)
        super().__init__(shape, shape)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def _adjoint(self, y: Tensor) -> Tensor:
        return y

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        return y
