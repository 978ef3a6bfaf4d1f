"""Matrix-free linear algebra of the linearised model, for images too large for dense matrices.

``K u = A J Sigma J^T A^T u + s^2 u`` is applied with one vjp and one jvp per vector. The
gradient of ``log p(y) = -1/2 r^T K^{-1} r - 1/2 log det K`` is estimated with Hutchinson probes:
``d/dphi log det K = tr(K^{-1} dK/dphi) ~ mean_i (K^{-1} z_i)^T (dK/dphi) z_i``, with every
``K^{-1}`` applied by conjugate gradients (non-convergence is reported, never silent).
Posterior samples follow Matheron's rule:
``x_s = x* + J theta_s - J Sigma (A J)^T K^{-1} (A J theta_s + eps_s)``.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.linalg import CGInfo, conjugate_gradient
from invprior.posterior.linearization import Linearization
from invprior.posterior.prior import MaternBlockPrior


class LinearModel:
    """``A J`` and ``K`` of the linearised model as matrix-free maps on batches of vectors."""

    def __init__(self, lin: Linearization, operator: ForwardOperator, prior: MaternBlockPrior, log_noise: Tensor,
                 cg_iterations: int = 200, cg_rtol: float = 1e-8) -> None:
        self.lin, self.operator, self.prior, self.log_noise = lin, operator, prior, log_noise
        self.cg_iterations, self.cg_rtol = cg_iterations, cg_rtol
        self.reports: list[CGInfo] = []

    def forward(self, theta: Tensor) -> Tensor:
        """``A J theta`` for weight vectors ``(b, P)`` -> ``(b, m)``."""
        images = torch.func.vmap(self.lin.jvp)(theta)                       # (b, 1, C, H, W)
        return self.operator(images.flatten(0, 1)).flatten(1)

    def transpose(self, u: Tensor) -> Tensor:
        """``J^T A^T u`` for measurement vectors ``(b, m)`` -> ``(b, P)``."""
        images = self.operator.adjoint(u.view(-1, *self.operator.range_shape))
        return torch.func.vmap(self.lin._pull)(images.unsqueeze(1))

    def k_apply(self, u: Tensor) -> Tensor:
        """``K u`` (differentiable in the prior hyperparameters and ``log_noise``)."""
        return self.forward(self.prior.apply(self.transpose(u))) + self.log_noise.exp() * u

    def solve(self, b: Tensor) -> Tensor:
        """``K^{-1} b`` by batched CG; a warning names any right-hand side that did not converge."""
        with torch.no_grad():
            x, info = conjugate_gradient(self.k_apply, b, max_iterations=self.cg_iterations, rtol=self.cg_rtol)
        self.reports.append(info)
        if not bool(info.converged.all()):
            warnings.warn(f"CG did not reach rtol {self.cg_rtol} in {info.iterations} iterations "
                          f"(relative residuals {info.relative_residual.tolist()})", RuntimeWarning, stacklevel=2)
        return x

    def mll_surrogate(self, residual: Tensor, probes: Tensor) -> Tensor:
        """A scalar whose gradient in the hyperparameters is the Hutchinson estimate of ``d log p(y)``.

        ``0.5 alpha^T K alpha - 0.5 mean_i w_i^T K z_i`` with ``alpha = K^{-1} r`` and ``w_i = K^{-1} z_i``
        held fixed.
        """
        solved = self.solve(torch.cat([residual.view(1, -1), probes]))
        alpha, w = solved[:1], solved[1:]
        k_alpha = self.k_apply(alpha)
        k_probes = self.k_apply(probes)
        return 0.5 * (alpha * k_alpha).sum() - 0.5 * (w * k_probes).sum() / probes.shape[0]

    def matheron_samples(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` posterior samples of ``J (theta - theta*)`` (add ``x*``), as ``(n, *image)``."""
        with torch.no_grad():
            theta = self.prior.sample(n, generator)
            m = math.prod(self.operator.range_shape)
            noise = torch.randn(n, m, generator=generator, dtype=torch.float64) * self.log_noise.exp().sqrt()
            correction = self.solve(self.forward(theta) + noise)
            delta = theta - self.prior.apply(self.transpose(correction))
            return torch.func.vmap(self.lin.jvp)(delta)
