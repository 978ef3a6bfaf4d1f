"""The deep decoder (Heckel & Hand, ICLR 2019): 1x1 convolutions, upsampling, ReLU, channel norm."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invprior.core.interfaces import Generator
from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError
from invprior.generators.inputs import seeded_noise
from invprior.operators._image import image_shape


class DeepDecoder(Generator):
    """``B_{i+1} = cn(ReLU(U_i B_i C_i))``, ``x = B_d C_d`` (optionally through a sigmoid).

    ``C_i`` are 1x1 convolutions with ``channels`` channels, ``U_i`` bilinear upsampling by ~2,
    ``cn`` channel normalisation (per channel over pixels, learned scale and shift). The fixed
    input ``B_0`` is ``input_scale * N(0, 1)`` of size (for an output of ``size`` ``H x W``)
    ``ceil(H / 2^layers) x ceil(W / 2^layers)``.
    Without 3x3 convolutions the parameter count stays below the pixel count for modest
    ``channels``: the network is under-parameterised and needs no early stopping for denoising.
    """

    output_shape: tuple[int, ...]  # fixed by size and out_channels

    def __init__(self, size: int | tuple[int, int] = 64, channels: int = 64, layers: int = 5, out_channels: int = 1,
                 input_scale: float = 1.0, sigmoid: bool = True) -> None:
        super().__init__()
        if not (isinstance(channels, int) and channels >= 1 and isinstance(layers, int) and layers >= 1):
            raise ConfigError(f"{type(self).__name__}: "
                              f"channels and layers must be positive ints, got {channels!r}, {layers!r}")
        self.output_shape = image_shape(size, int(out_channels))
        self.channels, self.layers, self.out_channels = channels, layers, int(out_channels)
        if min(self._sizes()[0]) < 2:
            most = max(int(math.log2(min(self.output_shape[1:]) / 2)), 0)
            raise ConfigError(f"{type(self).__name__}: "
                              f"{layers} layers shrink a {self.output_shape[1]}x{self.output_shape[2]} "
                              f"image to a 1-pixel input, which carries no spatial information; use layers <= {most}")
        self.input_scale, self.sigmoid = float(input_scale), bool(sigmoid)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 1, bias=False) for _ in range(layers))
        self.norms = nn.ModuleList(nn.GroupNorm(channels, channels) for _ in range(layers))
        self.outc = nn.Conv2d(channels, self.out_channels, 1)

    def _sizes(self) -> list[tuple[int, int]]:
        _, h, w = self.output_shape
        return [(math.ceil(h / 2 ** (self.layers - j)), math.ceil(w / 2 ** (self.layers - j)))
                for j in range(self.layers + 1)]

    def forward_pre_sigmoid(self, z: Tensor) -> Tensor:
        """The output before the sigmoid."""
        sizes = self._sizes()
        b = z
        for j, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            b = F.interpolate(conv(b), size=sizes[j + 1], mode="bilinear", align_corners=False)
            b = norm(torch.relu(b))
        return self.outc(b)

    def forward(self, z: Tensor) -> Tensor:
        out = self.forward_pre_sigmoid(z)
        return torch.sigmoid(out) if self.sigmoid else out

    def make_input(self, problem: InverseProblem, seed: int = 0) -> Tensor:
        h0, w0 = self._sizes()[0]
        return seeded_noise((problem.batch_size, self.channels, h0, w0), self.input_scale, seed, problem.y)
