"""Compressed sensing: dense Gaussian measurements and a fast subsampled orthogonal transform."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.errors import ConfigError
from invprior.operators._image import image_shape
from invprior.operators.dct import dct2, idct2
from invprior.validation import fraction


def _num_measurements(n: int, m: int | None, ratio: float | None) -> int:
    if m is not None and ratio is not None:
        raise ConfigError("give either m (number of measurements) or ratio (m / n), not both")
    if m is None:
        m = round(fraction(0.25 if ratio is None else ratio, "ratio") * n)
    if not isinstance(m, int) or not 1 <= m <= n:
        raise ConfigError(f"m must be an int in [1, {n}] (the number of unknowns), got {m!r}")
    return m


class GaussianCS(ForwardOperator):
    """``A x = M vec(x)`` with a seeded dense ``M`` of i.i.d. ``N(0, 1/m)`` entries, range ``(m,)``.

    Storage and cost are ``O(m n)``; use ``SubsampledDCT`` for large images.
    """

    is_linear = True

    def __init__(self, size: int | tuple[int, int] = 32, channels: int = 1, m: int | None = None,
                 ratio: float | None = None, seed: int = 0) -> None:
        shape = image_shape(size, channels)
        n = math.prod(shape)
        m = _num_measurements(n, m, ratio)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.matrix = torch.randn(m, n, generator=gen, dtype=torch.float64) / math.sqrt(m)
        self._pinv: Tensor | None = None
        super().__init__(shape, (m,))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self._cast("matrix", self.matrix, x).T

    def _adjoint(self, y: Tensor) -> Tensor:
        return (y @ self._cast("matrix", self.matrix, y)).view(y.shape[0], *self.domain_shape)

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        """Minimum-norm least-squares solution ``M^+ y`` (pseudo-inverse computed once, float64)."""
        if self._pinv is None:
            self._pinv = torch.linalg.pinv(self.matrix)
        return (y @ self._cast("pinv", self._pinv, y).T).view(y.shape[0], *self.domain_shape)


class SubsampledDCT(ForwardOperator):
    """``A x = P C D x``: random signs ``D``, orthonormal 2D DCT ``C``, ``m`` random coefficients ``P``.

    Costs ``O(n log n)`` and stores ``O(n)`` numbers, so it runs at 256x256 and beyond. Its rows
    are orthonormal (``A A^T = I``), hence ``A^+ = A^T``.
    """

    is_linear = True

    def __init__(self, size: int | tuple[int, int] = 64, channels: int = 1, m: int | None = None,
                 ratio: float | None = None, seed: int = 0) -> None:
        shape = image_shape(size, channels)
        n = math.prod(shape)
        m = _num_measurements(n, m, ratio)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.signs = (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(torch.float64)
        self.index = torch.randperm(n, generator=gen)[:m].sort().values
        super().__init__(shape, (m,))

    def forward(self, x: Tensor) -> Tensor:
        coefficients = dct2(x * self._cast("signs", self.signs, x)).flatten(1)
        return coefficients[:, self._cast("index", self.index, x)]

    def _adjoint(self, y: Tensor) -> Tensor:
        full = y.new_zeros(y.shape[0], math.prod(self.domain_shape))
        full[:, self._cast("index", self.index, y)] = y
        return idct2(full.view(y.shape[0], *self.domain_shape)) * self._cast("signs", self.signs, y)

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        return self._adjoint(y)
