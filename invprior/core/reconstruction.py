"""The ``Reconstruction`` result every method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Reconstruction:
    """A reconstructed image batch and how it was obtained.

    ``trace`` maps a quantity name (``"iteration"``, ``"loss"``, ``"residual"``, ``"psnr"`` ...)
    to its values per logged iteration; ``stop_reason`` says why an iterative method stopped.
    """

    image: Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, list[float]] = field(default_factory=dict)
    iterations: int = 0
    stop_reason: str = ""
    wall_time: float = 0.0
    generator_state: dict[str, Tensor] | None = None
    generator_input: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def log(self, **values: float) -> None:
        """Append one value per named quantity to the trace."""
        for key, value in values.items():
            self.trace.setdefault(key, []).append(float(value))
