"""The map from a network's output to the image: the data's scale and the prior knowledge of the image."""

from __future__ import annotations

from torch import Tensor

from invprior.core.constraints import ImageConstraints
from invprior.core.interfaces import Generator
from invprior.core.problem import InverseProblem

__all__ = ["OutputMap", "LEAK"]

#: The fraction of a value's excess beyond a bound that the output map keeps (see ``OutputMap``).
LEAK = 0.05


class OutputMap(Generator):
    """``x = P(s G(z))``: the network ``G`` works in normalised units, ``s`` is the data scale and ``P`` the
    projection onto the image constraints (bounds, support), if any.

    ``P`` multiplies by the support and, beyond a bound, keeps ``LEAK`` (5 %) of the excess: a pixel past
    a bound keeps a gradient, so the fit cannot freeze with every pixel at a bound (as it can with an
    exact clamp, whose gradient is zero there), while the excess it shows is a twentieth of the
    network's. (Passing the whole gradient through an exact clamp instead lets the network's output
    drift past the bounds and the fit oscillate.)

    ``P(s u) = s P_s(u)`` with ``P_s`` the projection onto the constraints divided by ``s``, so a network
    fitted to the normalised problem with ``scale = 1`` and the normalised constraints gives the same
    images as ``OutputMap(network, s, constraints)``. Its parameters are the network's (prefix ``network.``).
    """

    def __init__(self, network: Generator, scale: float = 1.0, constraints: ImageConstraints | None = None) -> None:
        super().__init__()
        self.network = network
        self.scale = float(scale)
        self.constraints = constraints if constraints is not None and constraints.active else None
        self.output_shape = getattr(network, "output_shape", None)

    def forward(self, z: Tensor) -> Tensor:
        x = self.network(z)
        if self.scale != 1.0:
            x = self.scale * x
        return x if self.constraints is None else self.constraints.project(x, LEAK)

    def make_input(self, problem: InverseProblem, seed: int = 0) -> Tensor:
        return self.network.make_input(problem, seed)

    def rescaled(self, scale: float, constraints: ImageConstraints | None) -> OutputMap:
        """This map (same network, shared) with another scale and constraints."""
        return OutputMap(self.network, scale, constraints)
