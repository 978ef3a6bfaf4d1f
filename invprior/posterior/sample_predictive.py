"""The predictive of a stack of sample images ``x_1..x_S`` (MC dropout, deep ensembles).

``mean = 1/S sum_s x_s``, ``std^2 = 1/(S-1) sum_s (x_s - mean)^2``, ``log p(x) = mean_pixels log N(x; mean, std^2)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from invprior.core.interfaces import PosteriorApproximation
from invprior.errors import ConfigError, NotFittedError


class SamplePredictive(PosteriorApproximation):
    """Moments, covariance, samples and log-likelihood from samples ``(S, B, *image)`` stored by ``fit``.

    Subclasses implement ``fit``, which sets ``_samples``, and name themselves in the messages
    through ``_owner`` (the class name), ``_drawn`` (how the samples came about) and ``_more`` (the
    parameter that gives more of them). ``log_likelihood`` uses independent Gaussians per pixel
    with the sample moments (std clamped at ``1e-12``); ``covariance`` is the sample covariance
    (plus ``1e-10`` times its mean variance on the diagonal) for patch log-likelihoods on small images.
    """

    _drawn: str = "samples were drawn in fit"
    _more: str = "num_samples"
    _samples: Tensor | None = None

    def _fitted(self) -> Tensor:
        if self._samples is None:
            raise NotFittedError(f"{self._owner}: call fit(reconstruction, problem) first")
        return self._samples

    @property
    def mean(self) -> Tensor:
        return self._fitted().mean(dim=0)

    @property
    def std(self) -> Tensor:
        return self._fitted().std(dim=0)

    @property
    def samples(self) -> Tensor:
        """All stored samples, ``(S, B, *image)``."""
        return self._fitted()

    @property
    def covariance(self) -> Tensor:
        samples = self._fitted().flatten(1).double()
        centred = samples - samples.mean(dim=0)
        cov = centred.T @ centred / (samples.shape[0] - 1)
        return cov + 1e-10 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """The first ``n`` stored samples (``seed`` is unused: the samples were drawn in ``fit``)."""
        samples = self._fitted()
        if n > samples.shape[0]:
            raise ConfigError(f"{self._owner}: {samples.shape[0]} {self._drawn}; ask for at most that many "
                              f"or raise {self._more}")
        return samples[:n]
