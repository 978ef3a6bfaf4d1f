"""Additive white Gaussian noise, given as an absolute std or relative to the clean data."""

from __future__ import annotations

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
        return float(self.relative) * clean.abs().flatten(1).mean(dim=1)

    def sample(self, clean: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """Return ``(eta, std)``: a seeded noise draw shaped like ``clean`` and the per-image std."""
        std = self.std_for(clean)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        # drawn in float64 on the CPU: the same realisation for every dtype and device
        white = torch.randn(clean.shape, generator=gen, dtype=torch.float64).to(device=clean.device, dtype=clean.dtype)
        return white * std.view(-1, *([1] * (clean.ndim - 1))), std
