"""lin-DIP in the leading eigenspace of the prior's image covariance, for data too large for CG.

The linearised model's prior over images has covariance ``C = J Sigma J^T`` (``n x n``). A randomised
Nystrom approximation ``C ~ U diag(lam) U^T`` of rank ``r`` (``r`` products of ``C``, each a vjp and a jvp)
turns lin-DIP into ``r``-dimensional Bayesian linear regression with ``L = U diag(lam)^{1/2}``:

    d ~ N(A L w, s^2 I_m),   w ~ N(0, alpha I_r),

``d`` the evidence's residual and ``alpha`` a global scale of the prior. With ``(A L)^T (A L) = V diag(g) V^T``
and ``c_i = v_i^T (A L)^T d / sqrt(g_i)`` (the data's coordinates along ``A L``'s left singular vectors):

    log p(d) = -1/2 [sum_{g_i > 0} log(alpha g_i + s^2) + (m - k) log s^2 + sum_i c_i^2 / (alpha g_i + s^2)
                     + (||d||^2 - sum_i c_i^2) / s^2 + m log 2 pi]        (k = number of g_i > 0)

    w | d ~ N(V diag(alpha / (alpha g + s^2)) V^T (A L)^T d,  V diag(alpha s^2 / (alpha g + s^2)) V^T).

So the image covariance of the posterior is ``F F^T`` with ``F = L V diag(sqrt(alpha s^2 / (alpha g + s^2)))``:
its diagonal (the pixel variance) is exact for the rank-``r`` model, with no sampling and no iterative solve,
whatever the number of measurements. What the rank leaves out is the prior's remainder ``C - L L^T`` (``captured``:
the fraction of ``tr(C)`` kept). The data constrain the leading directions of ``C`` most, so the posterior variance
sits largely in that remainder: it is added back as unconstrained by the data, from draws ``(I - U U^T) J theta``,
``theta ~ N(0, alpha Sigma)`` (``remainder_draws``). Without it the std is a lower bound (a smaller prior gives a
smaller posterior); with it the std approaches the full model's as the rank grows, from above as far as the
remainder is in fact constrained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.optimize import minimize
from torch import Tensor

from invprior.posterior.scalable import nystrom_from_sketch, orthonormal_test_matrix

#: Extra test vectors of the Nystrom sketch beyond the kept rank (its last eigenpairs are the least accurate).
OVERSAMPLE = 10
#: Eigenvalues of ``(A L)^T (A L)`` below this fraction of the largest count as zero (rounding).
GRAM_TOLERANCE = 1e-12


@dataclass(frozen=True)
class PriorSubspace:
    """``C ~ basis^T diag(eigenvalues) basis`` (``basis``: ``(r, n)`` orthonormal rows, float64) and
    ``trace``, an estimate of ``tr(C)``."""

    basis: Tensor
    eigenvalues: Tensor
    trace: float

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.numel())

    @property
    def captured(self) -> float:
        """``sum(lam) / tr(C)``: the fraction of the prior's pixel variance the subspace keeps."""
        return float(self.eigenvalues.sum()) / max(self.trace, 1e-300)

    @property
    def factor(self) -> Tensor:
        """``L = U diag(lam)^{1/2}``, ``(n, r)``."""
        return self.basis.T * self.eigenvalues.sqrt()


def prior_subspace(apply_covariance: Callable[[Tensor], Tensor], pull: Callable[[Tensor], Tensor],
                   weigh: Callable[[Tensor], Tensor], size: int, rank: int, generator: torch.Generator,
                   power_iterations: int = 0, probes: int = 16, device: torch.device | str = "cpu"
                   ) -> PriorSubspace:
    """Rank-``rank`` Nystrom approximation of ``C`` (``apply_covariance``: ``(b, n) -> (b, n)``, ``C v``
    row-wise) from a test matrix of ``rank + OVERSAMPLE`` columns, optionally sharpened by ``power_iterations``
    products ``Q <- orth(C Q)`` first (one makes the leading eigenpairs of a decaying spectrum accurate to a
    few digits, at the cost of a sketch of twice the rank, which keeps more of ``tr(C)``); the ``rank`` largest
    eigenpairs are kept. ``tr(C) = sum(lam) + E z^T (C - U diag(lam) U^T) z``,
    the remainder (PSD for Nystrom) by ``probes`` Rademacher vectors ``z`` with ``z^T C z = ||Sigma^{1/2} J^T z||^2``
    (``pull``: ``J^T``, ``weigh``: ``Sigma``): its variance is that of the remainder, small when ``captured`` is
    near one."""
    test = orthonormal_test_matrix(size, min(rank + OVERSAMPLE, size), generator, device)   # (n, r + p)
    for _ in range(power_iterations):
        test = torch.linalg.qr(apply_covariance(test.T).double().T).Q
    image = apply_covariance(test.T).double().T                                # C Q
    basis, eigenvalues = nystrom_from_sketch(test, image)
    order = eigenvalues.argsort(descending=True)[:rank]
    basis, eigenvalues = basis[order], eigenvalues[order]
    z = (torch.randint(0, 2, (probes, size), generator=generator) * 2 - 1).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        pulled = pull(z).double()
        whole = (pulled * weigh(pulled)).sum(dim=1)                          # z^T C z
        kept = ((z @ basis.T).pow(2) * eigenvalues).sum(dim=1)               # z^T U diag(lam) U^T z
    return PriorSubspace(basis, eigenvalues, float(eigenvalues.sum()) + max(float((whole - kept).mean()), 0.0))


class SubspaceRegression:
    """Bayesian linear regression ``d ~ N(A L w, s^2 I)``, ``w ~ N(0, alpha I)`` in closed form (module
    docstring). ``projected`` is ``A L`` as ``(m, r)``; ``residual`` is ``d``, ``(m,)``."""

    def __init__(self, projected: Tensor, residual: Tensor) -> None:
        projected, residual = projected.double(), residual.double().flatten()
        self.measurements = residual.numel()
        self.gram_eigenvalues, self.rotation = torch.linalg.eigh(projected.T @ projected)   # g, V
        self.gram_eigenvalues = self.gram_eigenvalues.clamp_min(0.0)
        nonzero = self.gram_eigenvalues > GRAM_TOLERANCE * float(self.gram_eigenvalues.max().clamp_min(1e-300))
        self.nonzero = nonzero
        self.data_coordinates = self.rotation.T @ (projected.T @ residual)   # V^T (A L)^T d = sqrt(g) c
        coordinates = torch.zeros_like(self.data_coordinates)
        coordinates[nonzero] = self.data_coordinates[nonzero] / self.gram_eigenvalues[nonzero].sqrt()
        self.coordinates = coordinates                                        # c
        self.energy = float(residual.pow(2).sum())

    def log_evidence(self, alpha: float, noise_variance: float) -> float:
        """``log p(d)`` at prior scale ``alpha`` and noise variance ``s^2``."""
        g, c = self.gram_eigenvalues[self.nonzero], self.coordinates[self.nonzero]
        total = alpha * g + noise_variance
        k, m = int(self.nonzero.sum()), self.measurements
        log_det = float(total.log().sum()) + (m - k) * math.log(noise_variance)
        quadratic = float((c.pow(2) / total).sum()) + (self.energy - float(c.pow(2).sum())) / noise_variance
        return -0.5 * (log_det + quadratic + m * math.log(2 * math.pi))

    def fit(self, noise_variance: float, learn_noise: bool) -> tuple[float, float]:
        """``(alpha, s^2)`` maximising ``log_evidence`` (``s^2`` held at ``noise_variance`` unless ``learn_noise``),
        by L-BFGS on their logarithms from ``alpha = 1``."""
        start = [0.0, math.log(noise_variance)] if learn_noise else [0.0]

        def negative(logs):
            return -self.log_evidence(math.exp(logs[0]), math.exp(logs[1]) if learn_noise else noise_variance)

        found = minimize(negative, start, method="L-BFGS-B", bounds=[(-60.0, 60.0)] * len(start))
        return math.exp(found.x[0]), math.exp(found.x[1]) if learn_noise else noise_variance

    def posterior_weights(self, alpha: float, noise_variance: float) -> tuple[Tensor, Tensor]:
        """Mean ``(r,)`` and a covariance factor ``(r, r)`` (``cov = factor factor^T``) of ``w | d``."""
        total = alpha * self.gram_eigenvalues + noise_variance
        mean = self.rotation @ (alpha / total * self.data_coordinates)
        factor = self.rotation * (alpha * noise_variance / total).sqrt()
        return mean, factor


def remainder_draws(prior_images: Tensor, basis: Tensor) -> Tensor:
    """``(I - U U^T) v`` for prior image draws ``v = J theta`` (rows, ``(k, n)``): draws of the prior's part outside
    the subspace spanned by ``basis`` (``(r, n)``, orthonormal rows)."""
    draws = prior_images.double()
    return draws - (draws @ basis.T) @ basis
