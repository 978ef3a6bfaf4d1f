"""Additive white Gaussian noise, given as an absolute std or relative to the clean data."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from invprior.errors import ConfigError
from invprior.validation import real


@dataclass(frozen=True)
class GaussianNoise:
    """``eta ~ N(0, s^2 I)`` with ``s = std``, or ``s = relative * mean|A x|`` per image.

    Exactly one of ``std`` and ``relative`` is given; both must be finite and >= 0.
    """

    std: float | None = None
    relative: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.std, self.relative) if v is not None]
        if len(given) != 1:
            raise ConfigError("noise: give exactly one of 'std' (absolute) and 'relative' (fraction of mean |Ax|)")
        key, value = ("std", self.std) if self.std is not None else ("relative", self.relative)
        object.__setattr__(self, key, real(value, f"noise.{key}", minimum=0.0))

    def std_for(self, clean: Tensor) -> Tensor:
        """Per-image noise std, shape ``(B,)``."""
        if self.std is not None:
            return torch.full((clean.shape[0],), float(self.std), dtype=clean.dtype, device=clean.device)
        assert self.relative is not None  # exactly one of std and relative is set (__post_init__)
        return float(self.relative) * clean.abs().flatten(1).mean(dim=1)

    def sample(self, clean: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """Return ``(eta, std)``: a seeded noise draw shaped like ``clean`` and the per-image std."""
        std = self.std_for(clean)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        # drawn in float64 on the CPU: the same realisation for every dtype and device
        white = torch.randn(clean.shape, generator=gen, dtype=torch.float64).to(device=clean.device, dtype=clean.dtype)
        return white * std.view(-1, *([1] * (clean.ndim - 1))), std


#: Order of the finite differences ``estimate_noise_std`` takes along the measurement's axes.
DIFFERENCE_ORDER = 3


def _along(y: Tensor, order: int, dim: int) -> Tensor:
    """``1.4826 MAD(d) / sqrt(C(2k, k))`` of the ``order``-th differences ``d`` of ``y`` along ``dim``, per image."""
    d = y.double()
    for _ in range(order):
        d = d.diff(dim=dim)
    d = d.flatten(1)
    deviation = (d - d.median(dim=1, keepdim=True).values).abs().median(dim=1).values
    return 1.4826 * deviation / math.sqrt(math.comb(2 * order, order))


def estimate_noise_std(y: Tensor, order: int = DIFFERENCE_ORDER) -> Tensor:
    """The std of white noise in ``y`` (shape ``(B, ...)``), per image, from ``y`` alone.

    ``d`` = the ``order``-th finite differences of ``y`` along one axis: white noise of std ``s``
    gives ``var(d) = C(2k, k) s^2`` while a signal that is smooth along that axis adds little, so
    ``s ~ 1.4826 MAD(d) / sqrt(C(2k, k))`` (the median absolute deviation is robust to the few large
    differences at edges). Both of the last two axes are tried (a sinogram's detector and angle
    axes, an image's rows and columns, where each has more than ``order`` entries) and the smaller
    estimate is kept: a signal only ever adds to it. The estimate is biased upwards where the
    signal's own high frequencies rival the noise (very low noise, sharp edges on a coarse grid).
    """
    axes = [dim for dim in (-1, -2) if y.ndim + dim >= 1 and y.shape[dim] > order]
    if y.ndim < 2 or -1 not in axes:
        raise ConfigError(f"estimate_noise_std needs a batch (B, ..., n) with n > {order} entries along the last "
                          f"axis, got shape {tuple(y.shape)}")
    estimates = torch.stack([_along(y, order, dim) for dim in axes])
    return estimates.min(dim=0).values.to(y.dtype)
