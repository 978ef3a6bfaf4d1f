"""The two-layer convolutional generator of Heckel & Soltanolkotabi (ICML 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from invprior.core.interfaces import Generator
from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError
from invprior.operators._image import image_shape


def circular_convolution(u: Tensor, c: Tensor) -> Tensor:
    """``U c`` for the circulant matrix ``U`` with first column ``u``, applied to each column of ``c`` (n, k)."""
    return torch.fft.ifft(torch.fft.fft(u).unsqueeze(-1) * torch.fft.fft(c, dim=0), dim=0).real


def gaussian_kernel(n: int, width: float) -> Tensor:
    """A periodic Gaussian bump of std ``width`` samples centred at index 0, with ``||u|| = 1``."""
    d = torch.arange(n, dtype=torch.float64)
    d = torch.minimum(d, n - d)
    u = torch.exp(-0.5 * (d / width) ** 2)
    return u / u.norm()


class TwoLayerGenerator(Generator):
    """``G(C) = ReLU(U C) v`` on signals of length ``n = out_channels * H * W`` (images flattened).

    ``U`` is the fixed circulant convolution with kernel ``u`` (default: a periodic Gaussian of
    std ``kernel_width`` samples, ``||u|| = 1``), ``v = [1, ..., 1, -1, ..., -1] / sqrt(k)`` fixed,
    and ``C in R^{n x k}`` the trained weights, initialised i.i.d. ``N(0, init_scale^2)``
    (seeded). The network has no input: ``make_input`` returns an empty tensor.
    """

    output_shape: tuple[int, ...]  # fixed by size and out_channels
    kernel: Tensor  # buffers, registered in __init__
    v: Tensor

    def __init__(self, size: int | tuple[int, int] = 32, out_channels: int = 1, width: int = 128,
                 kernel_width: float = 2.0, kernel: Tensor | None = None, init_scale: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__()
        self.output_shape = image_shape(size, out_channels)
        n = math.prod(self.output_shape)
        if not isinstance(width, int) or width < 2 or width % 2:
            raise ConfigError(f"{type(self).__name__}: width k must be an even int >= 2, got {width!r}")
        if kernel is None:
            if not kernel_width > 0:
                raise ConfigError(f"{type(self).__name__}: kernel_width must be > 0, got {kernel_width!r}")
            u = gaussian_kernel(n, float(kernel_width))
        else:
            u = torch.as_tensor(kernel, dtype=torch.float64).flatten()
            if u.numel() > n or not torch.isfinite(u).all() or u.norm() == 0:
                raise ConfigError(f"{type(self).__name__}: kernel must be a finite, nonzero vector of length <= {n}")
            u = torch.cat([u, u.new_zeros(n - u.numel())])
        v = torch.cat([torch.ones(width // 2), -torch.ones(width // 2)]).double() / math.sqrt(width)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self.register_buffer("kernel", u.float())
        self.register_buffer("v", v.float())
        self.weights = nn.Parameter((init_scale * torch.randn(n, width, generator=gen, dtype=torch.float64)).float())

    def forward(self, z: Tensor) -> Tensor:
        x = torch.relu(circular_convolution(self.kernel, self.weights)) @ self.v
        return x.view(1, *self.output_shape).expand(z.shape[0], *self.output_shape)

    def make_input(self, problem: InverseProblem, seed: int = 0) -> Tensor:
        return problem.y.new_zeros(problem.batch_size, 0)
