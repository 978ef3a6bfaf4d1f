"""Regularizers R(x): anisotropic and isotropic total variation, and none."""

from invprior.regularizers.tv import AnisotropicTV, IsotropicTV
from invprior.regularizers.zero import NoRegularizer

__all__ = ["AnisotropicTV", "IsotropicTV", "NoRegularizer"]
