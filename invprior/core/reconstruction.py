"""The ``Reconstruction`` result every method returns, and the fitted network behind a network method's."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from invprior.core.interfaces import Generator, Method


@dataclass(frozen=True)
class FittedNetwork:
    """The network behind one reconstructed image: ``x = G_state(z)`` with ``G`` = ``generator`` (its
    architecture and output map), ``state`` the kept weights and ``z`` = ``input`` ``(1, ...)``."""

    generator: Generator
    state: dict[str, Tensor]
    input: Tensor

    def kept(self) -> Generator:
        """A copy of the generator with the kept weights loaded (the original is left as it is)."""
        network = copy.deepcopy(self.generator)
        network.load_state_dict(self.state)
        return network


@dataclass
class Reconstruction:
    """A reconstructed image batch and how it was obtained.

    ``trace`` maps a quantity name (``"iteration"``, ``"loss"``, ``"residual"``, ``"psnr"`` ...)
    to its values per logged iteration; ``stop_reason`` says why an iterative method stopped.
    A network method also fills ``networks`` (one ``FittedNetwork`` per image) and ``fitted_by`` (the method
    object, for posteriors that refit, e.g. a deep ensemble); ``extras`` holds method-specific diagnostics.
    """

    image: Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    trace: dict[str, list[float]] = field(default_factory=dict)
    iterations: int = 0
    stop_reason: str = ""
    wall_time: float = 0.0
    networks: list[FittedNetwork] = field(default_factory=list)
    fitted_by: Method | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def log(self, **values: float) -> None:
        """Append one value per named quantity to the trace."""
        for key, value in values.items():
            self.trace.setdefault(key, []).append(float(value))
