"""The linear algebra of lin-DIP behind one interface, in three strategies.

Every solver works on the linearised model ``h(theta) = x* + J (theta - theta*)`` with the prior
``theta ~ N(0, Sigma)`` and the data ``y ~ N(A h(theta), s^2 I)``; the chain is
``J`` -> ``Sigma`` (parameter covariance) -> ``J Sigma J^T`` (image covariance) -> ``K = A J Sigma (A J)^T + s^2 I``
(observation covariance). A solver provides the products ``J theta``, ``A J theta`` and ``(A J)^T u``, fits the
hyperparameters of ``Sigma`` and ``s^2`` by the evidence ``log N(r; 0, K)`` and forms the predictive:

* ``ExactSolver``: dense ``J``, ``A`` and ``K`` (Cholesky), the predictive covariance in closed form;
* ``ScalableSolver``: matrix-free, Hutchinson evidence gradients and preconditioned CG, Matheron samples;
* ``SubspaceSolver``: the rank-``r`` leading eigenspace of ``J Sigma J^T``, everything in closed form there.
"""

from __future__ import annotations

import copy
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior.core.interfaces import Generator
from invprior.core.operator import ForwardOperator
from invprior.errors import ConvergenceWarning, NonFiniteError
from invprior.posterior.lin_dip_options import EvidenceOptions, PriorOptions, SamplingOptions, SolverOptions
from invprior.posterior.linearization import Linearization
from invprior.posterior.prior import MaternBlockPrior
from invprior.posterior.scalable import LinearModel, chunked
from invprior.posterior.subspace import OVERSAMPLE, PriorSubspace, SubspaceRegression, prior_subspace, remainder_draws
from invprior.posterior.tv_pred_cp import TVPredCP
from invprior.regularizers.tv import AnisotropicTV
from invprior.threads import follow_load

#: A subspace that keeps less than this fraction of the prior's pixel variance gets a ConvergenceWarning.
CAPTURED_WARNING = 0.9


def dense_operator(operator: ForwardOperator, dtype: torch.dtype = torch.float64,
                   device: torch.device | str = "cpu") -> Tensor:
    """The matrix of a linear operator, ``(m, n)``, from its action on the standard basis."""
    n = math.prod(operator.domain_shape)
    basis = torch.eye(n, dtype=dtype, device=device).view(n, *operator.domain_shape)
    return operator(basis).reshape(n, -1).T


def log_marginal_likelihood(aj: Tensor, residual: Tensor, prior: MaternBlockPrior, log_noise: Tensor) -> Tensor:
    """``log N(r; 0, (A J) Sigma (A J)^T + s^2 I)`` with ``s^2 = exp(log_noise)``."""
    m = aj.shape[0]
    k = aj @ prior.covariance_apply(aj).T + log_noise.exp() * torch.eye(m, dtype=aj.dtype, device=aj.device)
    factor = torch.linalg.cholesky(k)
    alpha = torch.cholesky_solve(residual.view(-1, 1), factor)
    log_det = 2 * torch.log(torch.diagonal(factor)).sum()
    return -0.5 * (residual @ alpha.flatten()) - 0.5 * log_det - 0.5 * m * math.log(2 * math.pi)


def with_image_noise(draws: Tensor, variance: float, generator: torch.Generator) -> Tensor:
    """``draws`` plus ``sqrt(variance)`` times white noise (unchanged when ``variance = 0``)."""
    if variance == 0:
        return draws
    white = torch.randn(draws.shape, generator=generator, dtype=draws.dtype).to(draws.device)
    return draws + math.sqrt(variance) * white


@dataclass(frozen=True)
class LinearizedNetwork:
    """The network at the DIP solution: ``lin`` (``J`` at ``theta*``, made from ``network``, ``z`` and the prior
    options' ``parameters`` and ``pre_sigmoid``), ``x_star = G(theta*)`` ``(1, *image)``, ``theta_star`` ``(1, P)``,
    the tangent operator ``A'(x*)`` and the prior ``Sigma``."""

    lin: Linearization
    network: Generator
    z: Tensor
    options: PriorOptions
    x_star: Tensor
    theta_star: Tensor
    tangent: ForwardOperator
    prior: MaternBlockPrior

    def in_float32(self) -> Linearization:
        """The same linearisation with float32 products (itself when it is float32 already)."""
        if self.lin.output.dtype == torch.float32:
            return self.lin
        parameters = None if self.options.parameters is None else list(self.options.parameters)
        return Linearization(copy.deepcopy(self.network).float(), self.z.float(), parameters, self.options.pre_sigmoid)


@dataclass
class Predictive:
    """A Gaussian predictive over images: its ``mean`` ``(1, *image)`` and one of a dense ``covariance`` ``(n, n)``,
    ``samples`` ``(S, 1, *image)`` or a low-rank ``factor`` ``(n, r)`` plus ``pixel_variance`` ``(n,)``."""

    mean: Tensor
    covariance: Tensor | None = None
    samples: Tensor | None = None
    factor: Tensor | None = None
    pixel_variance: Tensor | None = None


class LinDIPSolver(ABC):
    """One strategy for lin-DIP's linear algebra (see the module docstring). ``batch`` vectors go through the
    network at a time; ``seed`` seeds the streams of their own (TV-PredCP, the preconditioner refresh);
    ``progress`` shows bars on long loops; ``cg_summary`` keeps CG statistics per phase. ``fit_hyperparameters``
    sets ``noise_variance``, the fitted ``s^2``."""

    name: str = "solver"

    def __init__(self, model: LinearizedNetwork, solver: SolverOptions, evidence: EvidenceOptions,
                 sampling: SamplingOptions, batch: int, seed: int, progress: bool) -> None:
        self.model, self.solver, self.evidence, self.sampling = model, solver, evidence, sampling
        self.batch, self.seed, self.progress = batch, seed, progress
        self.shape = model.tangent.domain_shape
        self.cg_summary: dict[str, dict[str, float]] = {}
        self.noise_variance = math.nan
        self._log_noise = torch.zeros((), dtype=torch.float64)

    # -- products ----------------------------------------------------------------------
    @abstractmethod
    def images(self, theta: Tensor) -> Tensor:
        """``J theta`` for weight vectors ``(b, P)`` -> ``(b, *image)``."""

    @abstractmethod
    def forward(self, theta: Tensor) -> Tensor:
        """``A J theta`` for weight vectors ``(b, P)`` -> ``(b, m)``."""

    @abstractmethod
    def pull(self, u: Tensor) -> Tensor:
        """``(A J)^T u`` for measurement vectors ``(b, m)`` -> ``(b, P)``."""

    @property
    def dense(self) -> Tensor | None:
        """The matrix of ``A`` when the solver formed it."""
        return None

    # -- hyperparameters -----------------------------------------------------------------
    @abstractmethod
    def fit_hyperparameters(self, residual: Tensor, log_noise: Tensor, learn_noise: bool,
                            generator: torch.Generator) -> list[float]:
        """Fit ``Sigma``'s hyperparameters (in place) and, with ``learn_noise``, ``s^2 = exp(log_noise)`` (from its
        start) by the evidence of ``residual``; sets ``noise_variance`` and returns the objective per step."""

    def _adam_evidence(self, evidence: Callable[[int], tuple[Tensor, float]], log_noise: Tensor,
                       learn_noise: bool) -> list[float]:
        """Maximise ``log p(y)`` (plus the TV-PredCP hyperprior) by Adam: ``evidence(step)`` gives a scalar whose
        gradient is that of ``log p(y)`` and its value."""
        block_prior, prior = self.model.prior, self.model.options
        hyperprior = None
        if prior.hyperprior == "tv_pred_cp":
            tv = float(AnisotropicTV()(self.model.x_star.double()))
            rate = prior.tv_rate if prior.tv_rate is not None else 1.0 / max(tv, 1e-12)
            hyperprior = TVPredCP(block_prior, self.images, rate, prior.tv_samples, self.seed)
        optimizer = torch.optim.Adam([*block_prior.parameters(), *([log_noise] if learn_noise else [])],
                                     lr=self.evidence.lr)
        history: list[float] = []
        steps = tqdm(range(self.evidence.iterations), desc=f"lin-DIP hyperparameters ({self.name})",
                     disable=not self.progress, leave=False)
        for step in steps:
            follow_load()
            optimizer.zero_grad()
            objective, value = evidence(step)
            if hyperprior is not None:
                log_hyper = hyperprior.log_density()
                objective = objective + log_hyper
                value += float(log_hyper.detach())
            (-objective).backward()
            optimizer.step()
            history.append(value)
            hyper = torch.cat([block_prior.log_variance, block_prior.log_lengthscale, log_noise.view(1)]).detach()
            if not torch.isfinite(hyper).all():
                raise NonFiniteError(f"LinearizedLaplace: a hyperparameter became non-finite at step {step} "
                                     "(lower evidence.lr)")
            steps.set_postfix(objective=f"{value:.4g}", noise_std=f"{math.exp(0.5 * float(log_noise.detach())):.3g}")
        self._log_noise = log_noise.detach()
        self.noise_variance = float(self._log_noise.exp())
        return history

    # -- predictive ----------------------------------------------------------------------
    @abstractmethod
    def predictive(self, image_noise: float, residual: Tensor, linearized_mean: bool,
                   generator: torch.Generator) -> Predictive:
        """The predictive at the fitted hyperparameters (``image_noise``: ``eta^2`` added to every pixel), its mean
        ``x*`` or, with ``linearized_mean``, the linearised model's posterior mean."""

    @abstractmethod
    def sample(self, n: int, mean: Tensor, image_noise: float, generator: torch.Generator) -> Tensor:
        """``n`` draws from the fitted predictive, ``(n, 1, *image)``."""

    def _linearized_mean(self, solve: Callable[[Tensor], Tensor], residual: Tensor) -> Tensor:
        """``x* + J (theta_bar - theta*)``, ``theta_bar = Sigma (A J)^T K^{-1} r`` (``solve`` applies ``K^{-1}``)."""
        x_star, theta_star = self.model.x_star, self.model.theta_star
        with torch.no_grad():
            alpha = solve(residual.view(1, -1))
            theta_bar = self.model.prior.covariance_apply(self.pull(alpha).to(theta_star))
            shift = self.images(theta_bar - theta_star).to(x_star)
        if not torch.isfinite(shift).all():
            raise NonFiniteError("LinearizedLaplace: the linearised posterior mean is not finite")
        return x_star + shift.view_as(x_star)

    def batches(self, n: int) -> list[int]:
        """``n`` split into batches of ``batch`` (the last one smaller)."""
        return [min(self.batch, n - start) for start in range(0, n, self.batch)]


class ExactSolver(LinDIPSolver):
    """Dense ``J`` ``(n, P)``, ``A`` ``(m, n)`` and ``K`` ``(m, m)`` in float64: the evidence by Cholesky and the
    predictive covariance ``J Sigma J^T - J Sigma (A J)^T K^{-1} (A J) Sigma J^T + eta^2 I``."""

    name = "exact"

    def __init__(self, model: LinearizedNetwork, *args, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        self.jacobian = model.lin.jacobian()                                                    # (n, P)
        self.matrix = dense_operator(model.tangent, torch.float64, model.x_star.device)           # (m, n)
        self.aj = self.matrix @ self.jacobian                                                    # (m, P)
        self._covariance: Tensor | None = None

    def images(self, theta: Tensor) -> Tensor:
        return (theta @ self.jacobian.T).view(-1, *self.shape)

    def forward(self, theta: Tensor) -> Tensor:
        return theta @ self.aj.T

    def pull(self, u: Tensor) -> Tensor:
        return u @ self.aj

    @property
    def dense(self) -> Tensor:
        return self.matrix

    def fit_hyperparameters(self, residual, log_noise, learn_noise, generator):
        def evidence(step: int) -> tuple[Tensor, float]:
            objective = log_marginal_likelihood(self.aj, residual, self.model.prior, log_noise)
            return objective, float(objective.detach())

        return self._adam_evidence(evidence, log_noise, learn_noise)

    def predictive(self, image_noise, residual, linearized_mean, generator):
        prior, jacobian, aj = self.model.prior, self.jacobian, self.aj
        with torch.no_grad():
            sigma_jt = prior.covariance_apply(jacobian).T                                  # Sigma J^T, (P, n)
            sigma_ajt = prior.covariance_apply(aj).T                                       # Sigma (A J)^T, (P, m)
            k = aj @ sigma_ajt + self._log_noise.exp() * torch.eye(aj.shape[0], dtype=torch.float64, device=aj.device)
            cross = jacobian @ sigma_ajt                                        # J Sigma (A J)^T, (n, m)
            cov = jacobian @ sigma_jt - cross @ torch.linalg.solve(k, cross.T)
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        self._covariance = 0.5 * (cov + cov.T) + image_noise * eye
        mean = self._linearized_mean(lambda b: torch.linalg.solve(k, b.T).T, residual) if linearized_mean \
            else self.model.x_star
        return Predictive(mean, covariance=self._covariance)

    def sample(self, n, mean, image_noise, generator):
        cov = self._covariance
        jitter = 1e-10 * cov.diagonal().mean()
        factor = torch.linalg.cholesky(cov + jitter * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device))
        white = torch.randn(n, cov.shape[0], generator=generator, dtype=cov.dtype).to(cov.device)
        return (mean.flatten() + white @ factor.T).view(n, *mean.shape)


class _MatrixFree(LinDIPSolver):
    """The matrix-free products of ``LinearModel`` (``sketch``: the linearisation its preconditioner uses)."""

    def __init__(self, model: LinearizedNetwork, *args, sketch: Linearization | None = None, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        self.linear = LinearModel(model.lin, model.tangent, model.prior, torch.zeros((), dtype=torch.float64),
                                  self.evidence.cg_iterations, self.evidence.cg_rtol, chunk=self.batch, sketch=sketch)

    def images(self, theta: Tensor) -> Tensor:
        return self.linear.images(theta)

    def forward(self, theta: Tensor) -> Tensor:
        return self.linear.forward(theta)

    def pull(self, u: Tensor) -> Tensor:
        return self.linear.transpose(u)


class ScalableSolver(_MatrixFree):
    """Matrix-free: Hutchinson evidence gradients with ``num_probes`` probes and CG preconditioned by a Nystrom
    approximation refreshed every ``precondition_every`` steps; ``num_samples`` Matheron samples
    ``x + J (theta_s - theta*)`` for the predictive. The preconditioner is sketched with float32 products (it
    sets CG's speed, never its result)."""

    name = "scalable"

    def __init__(self, model: LinearizedNetwork, *args, **kwargs) -> None:
        super().__init__(model, *args, sketch=model.in_float32(), **kwargs)

    def fit_hyperparameters(self, residual, log_noise, learn_noise, generator):
        every = self.evidence.precondition_every

        def evidence(step: int) -> tuple[Tensor, float]:
            if step % every == 0:   # keep Z when another refresh will reuse it
                again = self.sampling.refresh_preconditioner or step + every < self.evidence.iterations
                self.linear.refresh_preconditioner(self.evidence.preconditioner_rank, generator, keep=again)
            probes = (torch.randint(0, 2, (self.evidence.num_probes, residual.numel()), generator=generator) * 2 - 1
                      ).to(residual)
            return self.linear.mll_surrogate(residual, probes)   # gradient: that of log p(y)

        self.linear.log_noise = log_noise
        history = self._adam_evidence(evidence, log_noise, learn_noise)
        self.cg_summary["marginal_likelihood"] = self.linear.take_reports("LinearizedLaplace (marginal likelihood)")
        return history

    def predictive(self, image_noise, residual, linearized_mean, generator):
        self.linear.log_noise = self._log_noise
        if self.sampling.refresh_preconditioner:  # at the fitted hyperparameters: fewer CG iterations for every solve
            # any new test columns come from a stream of their own: the samples' draws stay the same whatever the
            # rank, which only sets CG's speed
            rank = self.sampling.preconditioner_rank or self.evidence.preconditioner_rank
            self.linear.refresh_preconditioner(rank, torch.Generator().manual_seed(self.seed + 1))
        mean = self.model.x_star
        if linearized_mean:
            mean = self._linearized_mean(lambda b: self.linear.solve(b, self.sampling.cg_rtol), residual)
            self.cg_summary["mean"] = self.linear.take_reports("LinearizedLaplace (posterior mean)")
        return Predictive(mean, samples=self.sample(self.sampling.num_samples, mean, image_noise, generator))

    def sample(self, n, mean, image_noise, generator):
        draws = torch.cat([self.linear.matheron_samples(size, generator, self.sampling.cg_rtol)
                           for size in tqdm(self.batches(n), desc="lin-DIP samples", disable=not self.progress,
                                            leave=False)])
        self.cg_summary["samples"] = self.linear.take_reports("LinearizedLaplace (Matheron samples)")
        return mean + with_image_noise(draws, image_noise, generator).unsqueeze(1)


class SubspaceSolver(_MatrixFree):
    """``J Sigma J^T ~ L L^T`` of rank ``subspace_rank`` (as many vjp-jvp pairs), then the closed-form regression of
    ``subspace.py``: a global prior scale and, with ``learn_noise``, ``s^2`` by the evidence, the mean and the std
    factor; no CG whatever the number of measurements. The prior outside the subspace is added back as
    unconstrained by the data (its pixel variance from ``num_samples`` prior draws). ``captured`` keeps the fraction
    of the prior's pixel variance the subspace holds (a ``ConvergenceWarning`` below 90 %)."""

    name = "subspace"

    def __init__(self, model: LinearizedNetwork, *args, **kwargs) -> None:
        super().__init__(model, *args, **kwargs)
        self.subspace: PriorSubspace | None = None
        self.captured = float("nan")
        self._regression: SubspaceRegression | None = None
        self._alpha = 1.0
        self._prior_factor: Tensor | None = None      # L, (n, r): the prior restricted to the subspace
        self._posterior_factor: Tensor | None = None  # L W, (n, r): the posterior std factor in the subspace

    def fit_hyperparameters(self, residual, log_noise, learn_noise, generator):
        lin, chunk = self.linear.lin, self.batch
        width = min(self.solver.subspace_rank + OVERSAMPLE, math.prod(self.shape))
        bar = tqdm(total=width, desc="lin-DIP prior subspace", disable=not self.progress, leave=False)

        def pull(v: Tensor) -> Tensor:                                                    # J^T v
            return chunked(lin.vjps, v.view(-1, *self.shape).to(lin.output), chunk)

        def cover(v: Tensor) -> Tensor:                                                   # J Sigma J^T v
            bar.update(v.shape[0])
            return self.linear.images(self.model.prior.covariance_apply(pull(v))).flatten(1)

        x_star, tangent = self.model.x_star, self.model.tangent
        with torch.no_grad():
            self.subspace = prior_subspace(lambda v: chunked(cover, v, chunk), pull, self.model.prior.covariance_apply,
                                           math.prod(self.shape), self.solver.subspace_rank, generator,
                                           probes=self.evidence.num_probes, device=x_star.device)
            self._prior_factor = self.subspace.factor                                              # L, (n, r)
            projected = chunked(lambda v: tangent(v.view(-1, *self.shape).to(x_star)).flatten(1).double(),
                                self._prior_factor.T, chunk).T                                           # A L, (m, r)
        bar.close()
        self.captured = self.subspace.captured
        if self.captured < CAPTURED_WARNING:
            warnings.warn(f"LinearizedLaplace (subspace): rank {self.subspace.rank} keeps {self.captured:.1%} of "
                          "the prior's pixel variance; the std counts the rest as unconstrained by the data, which "
                          "overstates it (raise solver.subspace_rank)", ConvergenceWarning, stacklevel=4)
        self._regression = SubspaceRegression(projected, residual)
        del projected
        self._alpha, self.noise_variance = self._regression.fit(math.exp(float(log_noise.detach())), learn_noise)
        with torch.no_grad():
            self.model.prior.log_variance.add_(math.log(self._alpha))
        return [self._regression.log_evidence(self._alpha, self.noise_variance)]

    def predictive(self, image_noise, residual, linearized_mean, generator):
        assert self._regression is not None and self._prior_factor is not None  # set by fit_hyperparameters
        weights_mean, weights_factor = self._regression.posterior_weights(self._alpha, self.noise_variance)
        remainder = torch.cat([self._remainder(size, generator).pow(2) for size in
                               tqdm(self.batches(self.sampling.num_samples), desc="lin-DIP remainder draws",
                                    disable=not self.progress, leave=False)])
        x_star = self.model.x_star
        mean = x_star
        if linearized_mean:
            with torch.no_grad():
                prior_mean = x_star - self.linear.images(self.model.theta_star).to(x_star)     # x* - J theta*
                mean = prior_mean + (self._prior_factor @ weights_mean).view_as(x_star).to(x_star)
        self._posterior_factor = self._prior_factor @ weights_factor
        return Predictive(mean, factor=self._posterior_factor, pixel_variance=remainder.mean(dim=0) + image_noise)

    def _remainder(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` draws of the prior's remainder outside the subspace, ``(n, pixels)`` (``subspace.remainder_draws``)."""
        assert self.subspace is not None  # set by fit_hyperparameters
        with torch.no_grad():
            basis = self.subspace.basis
            theta = self.model.prior.sample(n, generator, dtype=self.linear.lin.output.dtype).to(basis.device)
            return remainder_draws(self.linear.images(theta).flatten(1), basis)

    def sample(self, n, mean, image_noise, generator):
        factor = self._posterior_factor
        assert factor is not None  # set by predictive
        white = torch.randn(n, factor.shape[1], generator=generator, dtype=factor.dtype).to(factor.device)
        draws = white @ factor.T + torch.cat([self._remainder(size, generator) for size in self.batches(n)])
        return mean + with_image_noise(draws, image_noise, generator).view(n, *mean.shape).to(mean)


SOLVER_CLASSES: dict[str, type[LinDIPSolver]] = {"exact": ExactSolver, "scalable": ScalableSolver,
                                                  "subspace": SubspaceSolver}
