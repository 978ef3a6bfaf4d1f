"""Linearised Laplace around a DIP reconstruction (lin-DIP), exact path for small problems.

Model: ``y | theta ~ N(A h(theta), s^2 I)`` with ``h(theta) = x* + J (theta - theta*)`` and the
zero-mean prior ``theta ~ N(0, Sigma)`` (:class:`MaternBlockPrior`). Then
``y ~ N(A (x* - J theta*), K)`` with ``K = (A J) Sigma (A J)^T + s^2 I``; the hyperparameters of ``Sigma`` and ``s^2`` maximise
``log p(y)`` (type-II maximum likelihood), and the predictive over images is Gaussian with mean
``x*`` and covariance ``J Sigma J^T - J Sigma (A J)^T K^{-1} (A J) Sigma J^T``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invprior.core.interfaces import PosteriorApproximation
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError, ShapeError
from invprior.posterior.fitted import kept_network
from invprior.posterior.linearization import Linearization
from invprior.posterior.prior import MaternBlockPrior
from invprior.validation import positive_int, real


def dense_operator(problem: InverseProblem) -> Tensor:
    """The matrix of a linear operator, ``(m, n)``, from its action on the standard basis (float64)."""
    op = problem.operator
    n = math.prod(op.domain_shape)
    basis = torch.eye(n, dtype=torch.float64, device=problem.y.device).view(n, *op.domain_shape)
    return op(basis).reshape(n, -1).T


class LinearizedLaplace(PosteriorApproximation):
    """lin-DIP with exact linear algebra (dense ``J``, Cholesky of ``K``): for images up to ~32x32.

    ``fit`` needs a DIP :class:`Reconstruction` (its ``extras["generator"]``, ``generator_state`` and
    ``generator_input``) and the problem; Adam with ``lr`` runs ``iterations`` steps on the negative
    log marginal likelihood.
    """

    def __init__(self, iterations: int = 200, lr: float = 0.01, variance: float = 1.0, lengthscale: float = 0.1,
                 max_pixels: int = 1024) -> None:
        self.iterations = positive_int(iterations, "LinearizedLaplace: iterations")
        self.lr = real(lr, "LinearizedLaplace: lr", minimum=0.0, strict=True)
        self.variance, self.lengthscale = variance, lengthscale
        self.max_pixels = positive_int(max_pixels, "LinearizedLaplace: max_pixels")
        self._covariance: Tensor | None = None
        self.history: list[float] = []

    # -- fitting ------------------------------------------------------------------------
    def fit(self, reconstruction: Reconstruction, problem: InverseProblem) -> LinearizedLaplace:
        if problem.batch_size != 1:
            raise ShapeError("LinearizedLaplace: fit one image at a time (problem.select(b))")
        if not problem.operator.is_linear:
            raise ConfigError("LinearizedLaplace (exact path): the operator must be linear")
        n = math.prod(problem.operator.domain_shape)
        if n > self.max_pixels:
            raise ConfigError(f"LinearizedLaplace: the exact path forms dense n x n matrices; n = {n} exceeds "
                              f"max_pixels = {self.max_pixels}")
        network, z = kept_network(reconstruction, "LinearizedLaplace")
        lin = Linearization(network.double(), z[:1].double())
        jacobian = lin.jacobian()  # (n, P)
        a = dense_operator(problem.to(dtype=torch.float64))
        aj = a @ jacobian
        theta_star = torch.cat([t.reshape(-1) for t in lin.theta])
        # zero-mean weight prior: y - A h(0) = y - A x* + A J theta*
        residual = problem.y.double().flatten() - a @ lin.output.flatten() + aj @ theta_star
        prior = MaternBlockPrior(lin.shapes, self.variance, self.lengthscale)
        noise_std = float(problem.noise_std[0]) if problem.noise_std is not None else float(residual.std())
        log_noise = torch.tensor(2 * math.log(max(noise_std, 1e-12)), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.Adam([*prior.parameters(), log_noise], lr=self.lr)
        for _ in range(self.iterations):
            optimizer.zero_grad()
            loss = -self.log_marginal_likelihood(aj, residual, prior, log_noise)
            loss.backward()
            optimizer.step()
            self.history.append(-float(loss.detach()))
        with torch.no_grad():
            sigma_jt = prior.apply(jacobian).T                       # Sigma J^T, (P, n)
            sigma_ajt = prior.apply(aj).T                            # Sigma (A J)^T, (P, m)
            k = aj @ sigma_ajt + log_noise.exp() * torch.eye(aj.shape[0], dtype=torch.float64)
            cross = jacobian @ sigma_ajt                             # J Sigma (A J)^T, (n, m)
            cov = jacobian @ sigma_jt - cross @ torch.linalg.solve(k, cross.T)
        self._covariance = 0.5 * (cov + cov.T)
        self._mean = lin.output.detach()
        self.prior, self.noise_variance = prior, float(log_noise.detach().exp())
        return self

    @staticmethod
    def log_marginal_likelihood(aj: Tensor, residual: Tensor, prior: MaternBlockPrior, log_noise: Tensor) -> Tensor:
        """``log N(r; 0, (A J) Sigma (A J)^T + s^2 I)`` with ``s^2 = exp(log_noise)``."""
        m = aj.shape[0]
        k = aj @ prior.apply(aj).T + log_noise.exp() * torch.eye(m, dtype=aj.dtype)
        factor = torch.linalg.cholesky(k)
        alpha = torch.cholesky_solve(residual.view(-1, 1), factor)
        return -0.5 * (residual @ alpha.flatten()) - torch.log(torch.diagonal(factor)).sum() - 0.5 * m * math.log(2 * math.pi)

    # -- predictive -----------------------------------------------------------------------
    def _fitted(self) -> Tensor:
        if self._covariance is None:
            raise ConfigError("LinearizedLaplace: call fit(reconstruction, problem) first")
        return self._covariance

    @property
    def covariance(self) -> Tensor:
        """Predictive covariance over the pixels, ``(n, n)``."""
        return self._fitted()

    @property
    def mean(self) -> Tensor:
        self._fitted()
        return self._mean

    @property
    def std(self) -> Tensor:
        return self._fitted().diagonal().clamp_min(0).sqrt().view_as(self._mean)

    def sample(self, n: int, seed: int = 0) -> Tensor:
        cov = self._fitted()
        jitter = 1e-10 * cov.diagonal().mean()
        factor = torch.linalg.cholesky(cov + jitter * torch.eye(cov.shape[0], dtype=cov.dtype))
        white = torch.randn(n, cov.shape[0], generator=torch.Generator().manual_seed(seed), dtype=cov.dtype)
        return (self._mean.flatten() + white @ factor.T).view(n, *self._mean.shape)

    def log_likelihood(self, x_true: Tensor) -> Tensor:
        from invprior.analysis.calibration import gaussian_log_likelihood

        return gaussian_log_likelihood(x_true.double(), self.mean, self._fitted())
