"""The ``Reconstruction`` result every method returns, the fitted network behind a network method's, and the
``WarmStart`` a refit of the same object takes from it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from invprior.errors import ConfigError

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


@dataclass(frozen=True)
class WarmStart:
    """Where a refit of one image starts: an earlier fit's kept weights ``state``, its input ``z`` and the data
    ``scale`` that fit was normalised by (with the same scale the weights mean the same image in the refit)."""

    state: dict[str, Tensor]
    input: Tensor
    scale: float

    @classmethod
    def of(cls, reconstruction: Reconstruction) -> WarmStart | None:
        """The start a refit takes from ``reconstruction`` (one image); ``None`` for a method without a network."""
        networks = reconstruction.networks
        if not networks:
            return None
        if len(networks) != 1:
            raise ConfigError(f"a warm start is taken from the fit of one image, not of {len(networks)}")
        scale = float(reconstruction.extras.get("data_scale", [1.0])[0])
        return cls({k: v.detach().clone() for k, v in networks[0].state.items()},
                   networks[0].input.detach().clone(), scale)

    def payload(self) -> dict[str, Any]:
        """Tensors and a float only: ``torch.save`` it and load it with ``weights_only=True``."""
        return {"state": self.state, "input": self.input, "scale": self.scale}

    @classmethod
    def from_payload(cls, payload: Any) -> WarmStart:
        """The start ``payload()`` describes; ``ConfigError`` for anything else."""
        if (not isinstance(payload, dict) or not isinstance(payload.get("state"), dict)
                or not isinstance(payload.get("input"), Tensor) or not isinstance(payload.get("scale"), float)
                or not all(isinstance(v, Tensor) for v in payload["state"].values())):
            raise ConfigError("a warm start holds 'state' (tensors), 'input' (a tensor) and 'scale' (a float)")
        return cls(dict(payload["state"]), payload["input"], payload["scale"])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> WarmStart:
        """The same start on ``device`` in floating ``dtype``."""
        return WarmStart({k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device)
                          for k, v in self.state.items()}, self.input.to(device=device, dtype=dtype), self.scale)
