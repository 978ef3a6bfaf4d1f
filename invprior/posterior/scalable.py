"""Matrix-free linear algebra of the linearised model, for images too large for dense matrices.

``K u = A J Sigma J^T A^T u + s^2 u`` is applied with one vjp and one jvp per vector. The
gradient of ``log p(y) = -1/2 r^T K^{-1} r - 1/2 log det K`` is estimated with Hutchinson probes:
``d/dphi log det K = tr(K^{-1} dK/dphi) ~ mean_i (K^{-1} z_i)^T (dK/dphi) z_i``, with every
``K^{-1}`` applied by conjugate gradients preconditioned with a randomised Nystrom
approximation ``A J Sigma J^T A^T ~ U diag(lambda) U^T`` (non-convergence is reported, never silent).
Posterior samples follow Matheron's rule:
``x_s = x* + J theta_s - J Sigma (A J)^T K^{-1} (A J theta_s + eps_s)``, the last term accumulated from
CG's own products.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.errors import ConvergenceWarning
from invprior.linalg import CGInfo, conjugate_gradient
from invprior.posterior.linearization import Linearization
from invprior.posterior.prior import MaternBlockPrior


def chunked(apply: Callable[[Tensor], Tensor], v: Tensor, chunk: int) -> Tensor:
    """``apply`` over chunks of rows of ``v``, written into one output allocated up front (collecting the chunks'
    outputs and concatenating them leaves them scattered between the products' temporaries, which kept about
    1.8 GiB of freed memory resident during a 128x128 sketch)."""
    if v.shape[0] <= chunk:
        return apply(v)
    parts = v.split(chunk)
    first = apply(parts[0])
    out = first.new_empty((v.shape[0], *first.shape[1:]))
    out[:first.shape[0]] = first
    start = first.shape[0]
    for part in parts[1:]:
        out[start:start + part.shape[0]] = apply(part)
        start += part.shape[0]
    return out


def orthonormal_test_matrix(size: int, rank: int, generator: torch.Generator,
                            device: torch.device | str = "cpu", against: Tensor | None = None) -> Tensor:
    """A random ``(size, min(rank, size))`` matrix with orthonormal columns (QR of a Gaussian), float64;
    with ``against`` (orthonormal columns) also orthogonal to those (``rank <= size - against.shape[1]``)."""
    omega = torch.randn(size, min(rank, size), generator=generator, dtype=torch.float64).to(device)
    if against is not None:
        for _ in range(2):  # twice is enough (Kahan): one pass leaves O(eps kappa) of ``against`` behind
            omega = omega - against @ (against.T @ omega)
    return torch.linalg.qr(omega).Q


@torch.no_grad()
def nystrom_from_sketch(q: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Randomised Nystrom approximation ``M ~ U diag(lam) U^T`` from a test matrix ``q`` with orthonormal
    columns ``(size, r)`` and its image ``y = M q`` (float64).

    Stabilised with a small shift (Tropp et al. 2017): ``C = q^T (y + nu q) = V D V^T``,
    ``B = (y + nu q) V D^{-1/2}`` over the positive part of ``D``, ``U S W^T = B``, ``lam = max(S^2 - nu, 0)``.
    ``nu`` is float64-sized whatever dtype ``y`` was computed in (a float32-sized shift would distort every
    eigenvalue below ``~ sqrt(size) eps_32 ||y||``, i.e. the tail that matters for preconditioning); rounding
    noise in ``y`` is absorbed by dropping non-positive ``D``. Returns ``U`` as ``(r', size)`` rows and ``lam``.
    """
    size = q.shape[0]
    nu = math.sqrt(size) * torch.finfo(torch.float64).eps * float(y.norm())
    y_nu = y + nu * q
    core = q.T @ y_nu
    d, v = torch.linalg.eigh(0.5 * (core + core.T))
    keep = d > nu
    b = (y_nu @ v[:, keep]) / d[keep].sqrt()
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    return u.T.contiguous(), (s ** 2 - nu).clamp_min(0.0)


class LinearModel:
    """``A J`` and ``K`` of the linearised model as matrix-free maps on batches of vectors.

    ``operator`` must be linear (pass ``A.linearized(x*)`` for a nonlinear ``A``); ``chunk`` bounds how
    many vectors go through the network at once (memory). ``sketch`` is an optional cheaper (e.g. float32)
    linearisation of the same network used only for the Nystrom preconditioner: it sets CG's speed, never
    its result.
    """

    def __init__(self, lin: Linearization, operator: ForwardOperator, prior: MaternBlockPrior, log_noise: Tensor,
                 cg_iterations: int = 200, cg_rtol: float = 1e-8, chunk: int = 1024,
                 sketch: Linearization | None = None) -> None:
        self.lin, self.operator, self.prior, self.log_noise = lin, operator, prior, log_noise
        self.sketch = lin if sketch is None else sketch
        self.cg_iterations, self.cg_rtol, self.chunk = cg_iterations, cg_rtol, chunk
        self.reports: list[CGInfo] = []
        self._basis: Tensor | None = None
        self._eigenvalues: Tensor | None = None
        self._test: Tensor | None = None
        self._pulled: list[Tensor] = []   # Z = J^T A^T Q in blocks of rows, one per refresh that added columns

    @property
    def size(self) -> int:
        """Number of measurements ``m``."""
        return math.prod(self.operator.range_shape)

    def images(self, theta: Tensor, lin: Linearization | None = None) -> Tensor:
        """``J theta`` for weight vectors ``(b, P)`` -> ``(b, *image)`` (``lin``'s products, default the model's)."""
        lin = self.lin if lin is None else lin
        return chunked(lin.jvps, theta.to(lin.output), self.chunk)

    def forward(self, theta: Tensor, lin: Linearization | None = None) -> Tensor:
        """``A J theta`` for weight vectors ``(b, P)`` -> ``(b, m)``."""
        return self.operator(self.images(theta, lin).to(self.lin.output)).flatten(1)

    def transpose(self, u: Tensor, lin: Linearization | None = None) -> Tensor:
        """``J^T A^T u`` for measurement vectors ``(b, m)`` -> ``(b, P)``."""
        lin = self.lin if lin is None else lin
        images = self.operator.adjoint(u.view(-1, *self.operator.range_shape).to(self.lin.output)).to(lin.output)
        return chunked(lin.vjps, images, self.chunk)

    def k_apply(self, u: Tensor) -> Tensor:
        """``K u`` in the dtype of ``u`` (the network products run in the linearisation's dtype, so float32
        products can feed float64 CG); differentiable in the prior hyperparameters and ``log_noise``."""
        return self._k_and_images(u)[0]

    def _k_and_images(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``K u`` and the images ``J Sigma J^T A^T u`` it is made from."""
        images = self.images(self.prior.covariance_apply(self.transpose(u)))
        return self.operator(images.to(self.lin.output)).flatten(1).to(u.dtype) + self.log_noise.exp() * u, images

    # -- preconditioned solves ---------------------------------------------------------
    def refresh_preconditioner(self, rank: int, generator: torch.Generator, keep: bool = False) -> None:
        """Recompute the rank-``rank`` Nystrom approximation of ``A J Sigma J^T A^T`` at the current
        hyperparameters, with the products of ``sketch``.

        ``Z = J^T A^T Q`` of the random test matrix ``Q`` does not depend on the hyperparameters. With ``keep``
        it is kept (``rank x P`` numbers) and the next refresh reuses ``Q`` and ``Z``: one jvp per column instead
        of a vjp and a jvp. A next refresh at a higher rank pulls back only the new columns (drawn from
        ``generator`` orthogonal to ``Q``), one at a lower rank starts afresh. Without ``keep`` ``Q`` and ``Z``
        are freed once this sketch is made."""
        sketch, rank = self.sketch, min(rank, self.size)
        with torch.no_grad():
            if self._test is not None and self._test.shape[1] > rank:   # a lower rank starts afresh
                self._test, self._pulled = None, []
            kept = 0 if self._test is None else self._test.shape[1]
            if kept < rank:
                extra = orthonormal_test_matrix(self.size, rank - kept, generator, sketch.output.device,
                                                against=self._test)
                self._test = extra if self._test is None else torch.cat([self._test, extra], dim=1)
                self._pulled.append(self.transpose(extra.T.to(sketch.output.dtype), sketch))
            y = torch.cat([chunked(lambda part: self.forward(self.prior.covariance_apply(part), sketch), pulled,
                                   self.chunk) for pulled in self._pulled])
            assert self._test is not None  # kept columns or new ones: rank >= 1
            self._basis, self._eigenvalues = nystrom_from_sketch(self._test, y.double().T)
        if not keep:
            self._test, self._pulled = None, []

    def precondition(self, v: Tensor) -> Tensor:
        """``P^{-1} v`` with ``P = U (diag(lam) + s^2) U^T + s^2 (I - U U^T)``, up to a scalar factor."""
        if self._basis is None or self._eigenvalues is None:
            return v
        basis, lam = self._basis.to(v), self._eigenvalues.to(v)
        noise = self.log_noise.detach().exp().to(v)
        coefficients = v @ basis.T
        return v + (coefficients * (noise / (lam + noise) - 1.0)) @ basis

    def solve(self, b: Tensor, rtol: float | None = None) -> Tensor:
        """``K^{-1} b`` by batched preconditioned CG (to ``rtol``, default ``cg_rtol``); every outcome is kept
        in ``reports`` and summarised by ``take_reports``."""
        return self._solve(b, rtol, companion=False)[0]

    def _solve(self, b: Tensor, rtol: float | None, companion: bool) -> tuple[Tensor, Tensor | None]:
        """``solve``, and with ``companion`` also ``J Sigma J^T A^T K^{-1} b`` accumulated from CG's products."""
        with torch.no_grad():
            x, info = conjugate_gradient(self._k_and_images if companion else self.k_apply,  # type: ignore[arg-type]
                                         b,  # (companion=True takes a map returning (M p, L p))
                                         max_iterations=self.cg_iterations,
                                         rtol=self.cg_rtol if rtol is None else rtol, preconditioner=self.precondition,
                                         companion=companion)
        self.reports.append(info)
        return x, info.companion

    def take_reports(self, what: str) -> dict[str, float]:
        """Summarise the CG solves since the last call (``solves``, ``mean_iterations``, ``max_iterations``,
        ``max_relative_residual``), warn (``ConvergenceWarning``) when any missed its tolerance, and forget them."""
        reports, self.reports = self.reports, []
        if not reports:
            return {"solves": 0}
        failed = [info for info in reports if not bool(info.converged.all())]
        worst = max(float(info.relative_residual.max()) for info in reports)
        if failed:
            warnings.warn(f"{what}: {len(failed)} of {len(reports)} CG solves stopped at {self.cg_iterations} "
                          f"iterations before reaching their tolerance (largest relative residual {worst:.2e}); "
                          "raise cg_iterations or preconditioner_rank", ConvergenceWarning, stacklevel=3)
        iterations = [info.iterations for info in reports]
        return {"solves": len(reports), "mean_iterations": sum(iterations) / len(reports),
                "max_iterations": max(iterations), "max_relative_residual": worst}

    # -- marginal likelihood and samples -------------------------------------------------
    def mll_surrogate(self, residual: Tensor, probes: Tensor) -> tuple[Tensor, float]:
        """A scalar whose gradient in the hyperparameters is the Hutchinson estimate of ``d log p(y)``,
        and the data-fit term ``-1/2 r^T K^{-1} r``.

        ``0.5 alpha^T K alpha - 0.5 mean_i w_i^T K z_i`` with ``alpha = K^{-1} r`` and ``w_i = K^{-1} z_i``
        held fixed; only ``Sigma`` and ``s^2`` carry gradients, so ``u^T K v = (J^T A^T u)^T Sigma (J^T A^T v) +
        s^2 u^T v`` needs no differentiation through the network.
        """
        residual = residual.to(probes)
        solved = self.solve(torch.cat([residual.view(1, -1), probes]))
        with torch.no_grad():
            pulled = self.transpose(torch.cat([solved, probes]))          # J^T A^T of alpha, w_i, z_i
        count = probes.shape[0]
        left = torch.cat([pulled[:1], pulled[1:1 + count]])               # alpha, w_i
        right = torch.cat([pulled[:1], pulled[1 + count:]])               # alpha, z_i
        noise = self.log_noise.exp()
        quadratic = (left * self.prior.covariance_apply(right)).sum(dim=1) + noise * (
            solved * torch.cat([solved[:1], probes])).sum(dim=1)
        surrogate = 0.5 * quadratic[0] - 0.5 * quadratic[1:].sum() / count
        return surrogate, -0.5 * float((residual.view(1, -1) * solved[:1]).sum())

    def matheron_samples(self, n: int, generator: torch.Generator, rtol: float | None = None) -> Tensor:
        """``n`` posterior samples of ``J (theta - theta*)`` (add ``x*``), as ``(n, *image)``.

        The correction ``J Sigma (A J)^T K^{-1} v`` is accumulated from the products CG computes anyway,
        so a batch costs one jvp for the prior draw plus CG's products."""
        with torch.no_grad():
            dtype = self.lin.output.dtype
            theta = self.prior.sample(n, generator, dtype=dtype).to(self.lin.output.device)
            noise = torch.randn(n, self.size, generator=generator, dtype=torch.float64).to(theta.device)
            prior_images = self.images(theta)
            data = self.operator(prior_images).flatten(1).double() + noise * self.log_noise.exp().sqrt()
            _, correction = self._solve(data, rtol, companion=True)
            assert correction is not None  # accumulated with companion=True
            return prior_images - correction.to(dtype)
