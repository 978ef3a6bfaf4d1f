"""lin-DIP around every member of a deep ensemble: an equal-weight mixture of Gaussians.

With component means ``mu_k`` and covariances ``C_k`` (``k = 1..K``) the predictive is
``1/K sum_k N(mu_k, C_k)``: mean ``mu = 1/K sum_k mu_k``, covariance
``1/K sum_k (C_k + (mu_k - mu)(mu_k - mu)^T)``. The spread of the fits covers the error of any one
early-stopped DIP fit; each lin-DIP term keeps the covariance non-singular (five fits alone span
four directions).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError
from invprior.posterior.ensemble import DeepEnsemble
from invprior.posterior.gaussian_predictive import GaussianPredictive
from invprior.posterior.linearized_laplace import LinearizedLaplace
from invprior.validation import positive_int


class LaplaceMixture(GaussianPredictive):
    """``members`` DIP fits that differ only in their seed (member 0 is the given reconstruction, the
    others as in ``DeepEnsemble``, ``seed_offset`` apart) and one ``LinearizedLaplace(**laplace)``
    around each. Costs the ensemble's ``members - 1`` DIP fits plus ``members`` lin-DIP fits.

    ``covariance`` is the mixture's dense covariance when every component has one (the exact path);
    on the scalable path ``samples`` pools every component's samples (``members * num_samples``), whose
    second moments around ``mean`` are the mixture's. ``components`` keeps the fitted lin-DIPs and
    ``wall_time`` the seconds ``fit`` (or ``fit_around``) took. ``fit_around`` takes member fits made
    elsewhere, e.g. a fitted ``DeepEnsemble``'s ``fits``, and adds only the lin-DIPs.
    """

    def __init__(self, members: int = 5, seed_offset: int = 1000, laplace: dict | None = None, seed: int = 0,
                 progress: bool = True) -> None:
        self._ensemble = DeepEnsemble(members, seed_offset, progress)
        self.seed, self.progress = int(seed), bool(progress)
        self.laplace = dict(laplace or {})
        clash = {"seed", "progress"} & set(self.laplace)
        if clash:
            raise ConfigError(f"{type(self).__name__}: set {sorted(clash)} on the mixture, not in laplace")
        self._component()  # bad lin-DIP settings fail here, before any fit
        self.components: list[LinearizedLaplace] = []
        self.wall_time = 0.0

    @property
    def members(self) -> int:
        """Number of DIP fits (and lin-DIPs) in the mixture."""
        return self._ensemble.members

    def _component(self) -> LinearizedLaplace:
        return LinearizedLaplace(**self.laplace, seed=self.seed, progress=False)

    def fit(self, reconstruction: Reconstruction, problem: InverseProblem) -> LaplaceMixture:
        start = time.perf_counter()
        self.fit_around(self._ensemble.fit_members(reconstruction, problem, owner="LaplaceMixture"), problem)
        self.wall_time = time.perf_counter() - start
        return self

    def fit_around(self, fits: list[Reconstruction], problem: InverseProblem) -> LaplaceMixture:
        """The mixture of lin-DIPs around ``fits``: ``members`` DIP reconstructions of ``problem`` (no new DIP fit)."""
        if len(fits) != self.members:
            raise ConfigError(f"{type(self).__name__}: "
                              f"fit_around needs {self.members} member fits (members), got {len(fits)}")
        start = time.perf_counter()
        self._mean = self._covariance = self._samples = None
        self.components = [self._component().fit(fit, problem)
                           for fit in tqdm(fits, desc="LaplaceMixture lin-DIP", disable=not self.progress, leave=False)]
        means = torch.stack([c.mean for c in self.components])
        self._mean = means.mean(dim=0)
        if all(c.solver_used == "exact" for c in self.components):
            spread = (means - self._mean).flatten(1)
            within = torch.stack([c.covariance for c in self.components]).mean(dim=0)
            self._covariance = within + spread.T.to(within) @ spread.to(within) / self.members
        else:
            self._samples = torch.cat([c.samples for c in self.components])
        self.wall_time = time.perf_counter() - start
        return self

    @property
    def mean(self) -> Tensor:
        """The mixture mean ``1/K sum_k mu_k``, ``(1, *image)``."""
        return self._fitted()

    def sample(self, n: int, seed: int = 0) -> Tensor:
        """``n`` samples: ``n / members`` from each component (the first ``n mod members`` one more)."""
        self._fitted()
        n = positive_int(n, "LaplaceMixture.sample: n")
        counts = [n // self.members + (k < n % self.members) for k in range(self.members)]
        return torch.cat([c.sample(count, seed + k) for k, (c, count) in enumerate(zip(self.components, counts))
                          if count > 0])
