"""A Gaussian prior over convolution weights that mimics TV smoothness (lin-DIP).

One prior per convolution: the ``k x k`` filters of a block share the covariance
``variance * exp(-d / lengthscale)`` over their taps (``d`` the distance between taps, in taps);
1x1 convolutions get ``variance * I``. The covariance is block diagonal and applied matrix-free.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from invprior.errors import ConfigError, ShapeError
from invprior.validation import real


def tap_distances(kernel_size: int) -> Tensor:
    """Euclidean distances between the taps of a ``k x k`` filter, ``(k^2, k^2)``."""
    i, j = torch.meshgrid(torch.arange(kernel_size), torch.arange(kernel_size), indexing="ij")
    taps = torch.stack([i.flatten(), j.flatten()], dim=1).double()
    return torch.cdist(taps, taps)


class MaternBlockPrior(nn.Module):
    """Block-diagonal prior covariance ``Sigma`` over the flattened weights of ``shapes``.

    Hyperparameters are stored as logarithms (``log_variance`` per block, ``log_lengthscale`` per
    block with ``k > 1``), so every value the optimiser reaches is admissible.
    """

    def __init__(self, shapes: list[tuple[int, ...]], variance: float = 1.0, lengthscale: float = 0.1) -> None:
        super().__init__()
        real(variance, "MaternBlockPrior: variance", minimum=0.0, strict=True)
        real(lengthscale, "MaternBlockPrior: lengthscale", minimum=0.0, strict=True)
        if not shapes:
            raise ConfigError(f"{type(self).__name__}: no weight blocks given")
        for shape in shapes:
            if len(shape) != 4 or shape[2] != shape[3]:
                raise ShapeError(f"{type(self).__name__}: "
                                 f"expected square convolution kernels (out, in, k, k), got {shape}")
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.log_variance = nn.Parameter(torch.full((len(shapes),), math.log(variance), dtype=torch.float64))
        self.log_lengthscale = nn.Parameter(torch.full((len(shapes),), math.log(lengthscale), dtype=torch.float64))
        for k in {s[2] for s in self.shapes}:
            self.register_buffer(f"_distances_{k}", tap_distances(k))

    @property
    def num_parameters(self) -> int:
        return sum(self.sizes)

    def covariance(self, block: int) -> Tensor:
        """The ``(k^2, k^2)`` covariance shared by the filters of ``block``."""
        k = self.shapes[block][2]
        variance = self.log_variance[block].exp()
        if k == 1:
            return variance.view(1, 1)
        distances = getattr(self, f"_distances_{k}")
        return variance * torch.exp(-distances / self.log_lengthscale[block].exp())

    def covariance_apply(self, v: Tensor) -> Tensor:
        """``Sigma v`` for flat weight vectors ``v`` of shape ``(..., P)``."""
        if v.shape[-1] != self.num_parameters:
            raise ShapeError(f"{type(self).__name__}: expected vectors of {self.num_parameters} entries, "
                             f"got {tuple(v.shape)}")
        parts = []
        for block, part in enumerate(v.split(self.sizes, dim=-1)):
            k2 = self.shapes[block][2] ** 2
            cov = self.covariance(block).to(part)
            parts.append((part.reshape(*part.shape[:-1], -1, k2) @ cov).reshape(part.shape))
        return torch.cat(parts, dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` draws from ``N(0, Sigma)``, shape ``(n, P)``."""
        parts = []
        for block, size in enumerate(self.sizes):
            k2 = self.shapes[block][2] ** 2
            factor = torch.linalg.cholesky(self.covariance(block).detach())
            white = torch.randn(n, size // k2, k2, generator=generator, dtype=torch.float64).to(factor.device)
            parts.append((white @ factor.T).reshape(n, size))
        return torch.cat(parts, dim=1).to(dtype)

    def dense(self) -> Tensor:
        """``Sigma`` as a dense matrix (for tests and tiny networks)."""
        return self.covariance_apply(torch.eye(self.num_parameters, dtype=torch.float64))
