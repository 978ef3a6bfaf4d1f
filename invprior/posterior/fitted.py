"""The network of a DIP reconstruction at its kept weights, for posterior approximations."""

from __future__ import annotations

import copy

from torch import Tensor

from invprior.core.interfaces import Generator
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError


def kept_network(reconstruction: Reconstruction, owner: str) -> tuple[Generator, Tensor]:
    """A copy of the reconstruction's generator with the kept weights loaded, and its input ``z``."""
    generator = reconstruction.extras.get("generator")
    if generator is None or reconstruction.generator_state is None or reconstruction.generator_input is None:
        raise ConfigError(f"{owner}: the reconstruction carries no generator; fit a DIP first")
    network = copy.deepcopy(generator)
    network.load_state_dict(reconstruction.generator_state)
    return network, reconstruction.generator_input
