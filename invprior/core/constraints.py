"""Prior knowledge of the image that methods enforce: bounds on its values and a support (TV exactly, DIP
through its generator's output map, ``invprior.generators.output_map``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from invprior.errors import ConfigError, ShapeError
from invprior.validation import real

__all__ = ["ImageConstraints"]


@dataclass(frozen=True)
class ImageConstraints:
    """``lower <= x <= upper`` (either bound optional) and ``x = 0`` outside ``support``.

    ``support`` is a boolean mask of the image grid, shape ``(H, W)``. ``project`` is the Euclidean
    projection onto this convex set, ``P(x) = support * clamp(x, lower, upper)`` (with ``lower <= 0``
    when a support is given, so that 0 is feasible outside it).
    """

    lower: float | None = None
    upper: float | None = None
    support: Tensor | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.lower is not None:
            set_(self, "lower", real(self.lower, "constraints.lower"))
        if self.upper is not None:
            set_(self, "upper", real(self.upper, "constraints.upper"))
        if self.lower is not None and self.upper is not None and not self.lower < self.upper:
            raise ConfigError(f"constraints: lower ({self.lower}) must be below upper ({self.upper})")
        if self.support is not None:
            mask = torch.as_tensor(self.support)
            if mask.ndim != 2:
                raise ShapeError(f"constraints.support must be a mask of shape (H, W), got {tuple(mask.shape)}")
            if not bool(mask.any()):
                raise ConfigError("constraints.support is empty: no pixel may be non-zero")
            set_(self, "support", mask.bool())
            if self.lower is not None and self.lower > 0:
                raise ConfigError(f"constraints: with a support, lower must be <= 0 (outside the support the image "
                                  f"is 0), got {self.lower}")

    @property
    def active(self) -> bool:
        """Whether any constraint is set."""
        return self.lower is not None or self.upper is not None or self.support is not None

    def check_grid(self, shape: tuple[int, ...], owner: str) -> None:
        """Refuse a support whose shape is not the image grid's ``(..., H, W)``."""
        if self.support is not None and tuple(self.support.shape) != tuple(shape[-2:]):
            raise ShapeError(f"{owner}: constraints.support has shape {tuple(self.support.shape)} but the images "
                             f"are {tuple(shape[-2:])}")

    def project(self, x: Tensor, leak: float = 0.0) -> Tensor:
        """``support * c(x)`` for images ``(B, C, H, W)``, ``c(x) = clamp(x, lower, upper) + leak * (x -
        clamp(x, lower, upper))``: the exact projection for ``leak = 0``; a small ``leak`` shrinks values beyond
        a bound towards it instead of cutting them, so that they keep a gradient."""
        if self.lower is not None or self.upper is not None:
            clamped = x.clamp(self.lower, self.upper)
            x = clamped if leak == 0 else clamped + leak * (x - clamped)
        if self.support is not None:
            x = x * self.support.to(device=x.device, dtype=x.dtype)
        return x

    def scaled(self, factor: float) -> ImageConstraints:
        """The same constraints for images multiplied by ``factor > 0``."""
        def scale(v: float | None) -> float | None:
            return None if v is None else v * factor

        return ImageConstraints(scale(self.lower), scale(self.upper), self.support)
