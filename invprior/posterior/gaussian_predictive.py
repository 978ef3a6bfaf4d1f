"""The predictive of a Gaussian over images: its mean, and one of its dense covariance (exact path), samples
from it (scalable path) or a low-rank factor plus a pixel-wise variance, ``C = F F^T + diag(d)`` (subspace path);
``std_i = sqrt(C_ii)``, ``std_i^2 = 1/S sum_s (x_s - mean)_i^2`` or ``std_i^2 = sum_j F_ij^2 + d_i``."""

from __future__ import annotations

import torch
from torch import Tensor

from invprior.core.interfaces import PosteriorApproximation
from invprior.errors import ConfigError, NotFittedError

#: Largest image whose dense covariance ``covariance`` forms from a low-rank factor (``n^2`` numbers).
MAX_DENSE_PIXELS = 16384


class GaussianPredictive(PosteriorApproximation):
    """Holds ``_mean`` ``(1, *image)`` and one of ``_covariance`` ``(n, n)``, ``_samples`` ``(S, 1, *image)`` or
    ``_factor`` ``(n, r)`` (with ``_pixel_variance``, ``d``, ``(n,)``), all set by the subclass's ``fit``; ``_owner``
    names the class in errors."""

    _mean: Tensor | None = None
    _covariance: Tensor | None = None
    _samples: Tensor | None = None
    _factor: Tensor | None = None
    _pixel_variance: Tensor | None = None

    def _fitted(self) -> Tensor:
        if self._mean is None:
            raise NotFittedError(f"{self._owner}: call fit(reconstruction, problem) first")
        return self._mean

    @property
    def covariance(self) -> Tensor:
        """Predictive covariance over the pixels, ``(n, n)`` (exact path only)."""
        self._fitted()
        if self._factor is not None:
            n = self._factor.shape[0]
            if n > MAX_DENSE_PIXELS:
                raise ConfigError(f"{self._owner}: a dense covariance of {n} pixels needs "
                                  f"{n * n * 8 / 2 ** 30:.1f} GiB; "
                                  f"formed up to {MAX_DENSE_PIXELS} pixels (use .std or sample(n))")
            return self._factor @ self._factor.T + torch.diag(self._low_rank_remainder())
        if self._covariance is None:
            raise ConfigError(f"{self._owner}: the scalable path forms no dense covariance; use .samples "
                              "(e.g. for patch log-likelihoods)")
        return self._covariance

    @property
    def low_rank_factor(self) -> Tensor | None:
        """``F`` ``(n, r)`` of ``C = F F^T + diag(d)`` on the subspace path; ``None`` on the others."""
        self._fitted()
        return self._factor

    @property
    def samples(self) -> Tensor:
        """Posterior samples drawn during fit (scalable path), ``(S, 1, *image)``."""
        self._fitted()
        if self._samples is None:
            raise ConfigError(f"{self._owner}: the {'subspace' if self._factor is not None else 'exact'} path keeps "
                              "no samples; use .covariance or sample(n)")
        return self._samples

    @property
    def std(self) -> Tensor:
        mean = self._fitted()
        if self._covariance is not None:
            return self._covariance.diagonal().clamp_min(0).sqrt().view_as(mean)
        if self._factor is not None:
            variance = self._factor.pow(2).sum(dim=1) + self._low_rank_remainder()
            return variance.clamp_min(0).sqrt().view_as(mean).to(mean)
        return (self.samples - mean).pow(2).mean(dim=0).sqrt()

    def _low_rank_remainder(self) -> Tensor:
        """``d`` of ``C = F F^T + diag(d)``, in ``F``'s dtype (set with ``_factor``)."""
        assert self._factor is not None and self._pixel_variance is not None
        return self._pixel_variance.to(self._factor)
