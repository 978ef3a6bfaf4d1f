"""The predictive of a Gaussian over images: its mean, and either its dense covariance (exact path) or
samples from it (scalable path); ``std_i = sqrt(C_ii)`` or ``std_i^2 = 1/S sum_s (x_s - mean)_i^2``."""

from __future__ import annotations

from torch import Tensor

from invprior.core.interfaces import PosteriorApproximation
from invprior.errors import ConfigError


class GaussianPredictive(PosteriorApproximation):
    """Holds ``_mean`` ``(1, *image)`` and one of ``_covariance`` ``(n, n)`` or ``_samples`` ``(S, 1, *image)``,
    all set by the subclass's ``fit``; ``_owner`` names the class in errors."""

    _owner: str = "GaussianPredictive"
    _mean: Tensor | None = None
    _covariance: Tensor | None = None
    _samples: Tensor | None = None

    def _fitted(self) -> Tensor:
        if self._mean is None:
            raise ConfigError(f"{self._owner}: call fit(reconstruction, problem) first")
        return self._mean

    @property
    def covariance(self) -> Tensor:
        """Predictive covariance over the pixels, ``(n, n)`` (exact path only)."""
        self._fitted()
        if self._covariance is None:
            raise ConfigError(f"{self._owner}: the scalable path forms no dense covariance; use .samples "
                              "(e.g. for patch log-likelihoods)")
        return self._covariance

    @property
    def samples(self) -> Tensor:
        """Posterior samples drawn during fit (scalable path), ``(S, 1, *image)``."""
        self._fitted()
        if self._samples is None:
            raise ConfigError(f"{self._owner}: the exact path keeps no samples; use .covariance or sample(n)")
        return self._samples

    @property
    def std(self) -> Tensor:
        mean = self._fitted()
        if self._covariance is not None:
            return self._covariance.diagonal().clamp_min(0).sqrt().view_as(mean)
        return (self._samples - mean).pow(2).mean(dim=0).sqrt()
