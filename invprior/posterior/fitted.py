"""The network of a DIP reconstruction at its kept weights, for posterior approximations."""

from __future__ import annotations

from torch import Tensor

from invprior.core.interfaces import Generator
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError


def kept_network(reconstruction: Reconstruction, owner: str) -> tuple[Generator, Tensor]:
    """A copy of the first image's fitted generator with its kept weights loaded, and its input ``z``."""
    if not reconstruction.networks:
        raise ConfigError(f"{owner}: the reconstruction ({reconstruction.method}) carries no fitted network; "
                          "fit a DIP first")
    fitted = reconstruction.networks[0]
    return fitted.kept(), fitted.input
