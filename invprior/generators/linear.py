"""The linear generator ``x = J c`` (the over-parameterised linear model of DIP theory)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from invprior.core.interfaces import Generator
from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError
from invprior.operators._image import image_shape


class LinearGenerator(Generator):
    """``x = J c`` with a fixed ``J in R^{n x N}`` and trained coefficients ``c`` (initially 0).

    ``J`` is given, or seeded i.i.d. ``N(0, 1/N)`` with ``N = num_params``. Gradient descent on
    ``||A J c - y||^2`` from ``c = 0`` converges to the minimum-norm solution
    ``c = (A J)^+ y``, so ``x = J (A J)^+ y``.
    """

    output_shape: tuple[int, ...]  # fixed by size and out_channels
    matrix: Tensor  # a buffer, registered in __init__

    def __init__(self, size: int | tuple[int, int] = 16, out_channels: int = 1, num_params: int | None = None,
                 matrix: Tensor | None = None, seed: int = 0) -> None:
        super().__init__()
        self.output_shape = image_shape(size, out_channels)
        n = math.prod(self.output_shape)
        if matrix is None:
            count = 2 * n if num_params is None else num_params
            if not isinstance(count, int) or count < 1:
                raise ConfigError(f"{type(self).__name__}: num_params must be a positive int, got {num_params!r}")
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            matrix = torch.randn(n, count, generator=gen, dtype=torch.float64) / math.sqrt(count)
        matrix = torch.as_tensor(matrix)
        if matrix.ndim != 2 or matrix.shape[0] != n or not torch.isfinite(matrix).all():
            raise ConfigError(f"{type(self).__name__}: matrix must be a finite ({n}, N) matrix, "
                              f"got shape {tuple(matrix.shape)}")
        self.register_buffer("matrix", matrix.float())
        self.coefficients = nn.Parameter(torch.zeros(matrix.shape[1]))

    def forward(self, z: Tensor) -> Tensor:
        x = self.matrix @ self.coefficients
        return x.view(1, *self.output_shape).expand(z.shape[0], *self.output_shape)

    def make_input(self, problem: InverseProblem, seed: int = 0) -> Tensor:
        return problem.y.new_zeros(problem.batch_size, 0)
