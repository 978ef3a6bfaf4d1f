"""Linearised Laplace around a DIP reconstruction (lin-DIP).

Model: ``y | theta ~ N(A h(theta), s^2 I)`` with ``h(theta) = x* + J (theta - theta*)`` and the
zero-mean prior ``theta ~ N(0, Sigma)`` (``MaternBlockPrior``). Then
``y ~ N(A (x* - J theta*), K)`` with ``K = (A J) Sigma (A J)^T + s^2 I``; the hyperparameters of
``Sigma`` and ``s^2`` maximise ``log p(y)`` (type-II maximum likelihood), optionally plus the
TV-PredCP hyperprior (TV-MAP). The predictive over images is Gaussian with covariance
``J Sigma J^T - J Sigma (A J)^T K^{-1} (A J) Sigma J^T``, optionally plus ``eta^2 I`` (the observation
noise seen in image space, ``image_noise.py``). A nonlinear ``A`` is replaced by its tangent ``A'(x*)``.
Its mean is ``x*``, or the linearised model's posterior mean ``x* + J (theta_bar - theta*)``,
``theta_bar = Sigma (A J)^T K^{-1} r``, when the DIP fit under-fits the data. The settings are grouped in
``lin_dip_options.py``; the linear algebra (exact, scalable, subspace) is in ``lin_dip_solvers.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError, ShapeError
from invprior.posterior.fitted import kept_network
from invprior.posterior.gaussian_predictive import GaussianPredictive
from invprior.posterior.image_noise import projected_noise_variance
from invprior.posterior.lin_dip_options import (
    EvidenceOptions,
    PriorOptions,
    SamplingOptions,
    SolverOptions,
    options,
)
from invprior.posterior.lin_dip_solvers import SOLVER_CLASSES, LinDIPSolver, LinearizedNetwork, SubspaceSolver
from invprior.posterior.linearization import Linearization
from invprior.posterior.prior import MaternBlockPrior
from invprior.posterior.subspace import PriorSubspace
from invprior.validation import DTYPES, positive_int

Group = Mapping[str, Any] | None


class LinearizedLaplace(GaussianPredictive):
    """lin-DIP: a Gaussian predictive over images from the linearised network.

    Settings come in four groups, each a dataclass or a table of its fields (``lin_dip_options.py``):
    ``solver`` (``SolverOptions``; a string is its ``kind``: ``"auto"``, ``"exact"``, ``"scalable"``,
    ``"subspace"``), ``prior`` (``PriorOptions``: ``Sigma``'s starting variance and lengthscale, the hyperprior),
    ``evidence`` (``EvidenceOptions``: the hyperparameter fit, noise learnt or known) and ``sampling``
    (``SamplingOptions``: samples, image noise, the predictive mean). For example
    ``LinearizedLaplace("scalable", prior={"variance": "auto"}, evidence={"iterations": 20, "lr": 0.05})``.

    After ``fit``: ``noise_variance`` (the fitted ``s^2``), ``prior`` (the fitted ``MaternBlockPrior``),
    ``solver_used``, ``history`` (the evidence per step), ``image_noise_variance`` (``eta^2``), ``discrepancy``
    (``||y - A(x*)||^2 / (m s^2)``) and ``mean_used``, ``cg_summary`` (CG iterations per phase, scalable),
    ``captured_variance`` and ``subspace`` (subspace solver) and ``wall_time``.
    """

    def __init__(self, solver: str | SolverOptions | Group = "auto", prior: PriorOptions | Group = None,
                 evidence: EvidenceOptions | Group = None, sampling: SamplingOptions | Group = None, seed: int = 0,
                 progress: bool = True) -> None:
        self.solver = options("solver", SolverOptions, {"kind": solver} if isinstance(solver, str) else solver)
        self.prior_options = options("prior", PriorOptions, prior)
        self.evidence = options("evidence", EvidenceOptions, evidence)
        self.sampling = options("sampling", SamplingOptions, sampling)
        if self.solver.kind == "subspace" and self.prior_options.hyperprior != "none":
            raise ConfigError(f"{type(self).__name__}: "
                              f"solver 'subspace' fits a global prior scale; it takes no hyperprior")
        self.seed, self.progress = int(seed), bool(progress)
        self._reset()

    def _reset(self) -> None:
        self.history: list[float] = []
        self.cg_summary: dict[str, dict[str, float]] = {}
        self.noise_variance = self.discrepancy = self.captured_variance = math.nan
        self.image_noise_variance, self.mean_used, self.solver_used, self.wall_time = 0.0, "network", "", 0.0
        self.prior: MaternBlockPrior | None = None
        self.subspace: PriorSubspace | None = None
        self._solver: LinDIPSolver | None = None
        self._mean = self._covariance = self._samples = self._factor = self._pixel_variance = None

    # -- fitting ------------------------------------------------------------------------
    def fit(self, reconstruction: Reconstruction, problem: InverseProblem) -> LinearizedLaplace:
        start = time.perf_counter()
        self._reset()
        if problem.batch_size != 1:
            raise ShapeError(f"{type(self).__name__}: fit one image at a time (problem.select(b))")
        operator = problem.operator
        kind = self.solver.resolve(math.prod(operator.domain_shape))
        dtype = torch.float64 if kind == "exact" else DTYPES[self.solver.dtype]
        model = self._linearize(reconstruction, problem, dtype)
        batch = self._batch(model.x_star.device)
        solver = SOLVER_CLASSES[kind](model, self.solver, self.evidence, self.sampling, batch, self.seed,
                                      self.progress)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            # zero-mean weight prior: y - A h(0) = y - A(x*) + A J theta*
            data_residual = problem.y.to(model.x_star) - operator(model.x_star)
            residual = (data_residual.flatten() + solver.forward(model.theta_star).flatten()).detach().double()
        log_noise, learn_noise = self._noise_start(problem, residual, model.x_star.device)
        if self.prior_options.variance == "auto":
            self._match_prior_energy(model.prior, solver.pull, residual, math.exp(float(log_noise.detach())),
                                     generator)
        self.history = solver.fit_hyperparameters(residual, log_noise, learn_noise, generator)
        self.prior, self.noise_variance, self.solver_used = model.prior, solver.noise_variance, kind
        self.image_noise_variance = self._image_noise_variance(model, solver)
        predictive = solver.predictive(self.image_noise_variance, residual, self._use_linearized_mean(data_residual),
                                       generator)
        self._mean, self._covariance, self._samples = predictive.mean, predictive.covariance, predictive.samples
        self._factor, self._pixel_variance = predictive.factor, predictive.pixel_variance
        self.cg_summary, self._solver = solver.cg_summary, solver
        if isinstance(solver, SubspaceSolver):
            self.subspace, self.captured_variance = solver.subspace, solver.captured
        self.wall_time = time.perf_counter() - start
        return self

    def _linearize(self, reconstruction: Reconstruction, problem: InverseProblem,
                   dtype: torch.dtype) -> LinearizedNetwork:
        """The fitted network in ``dtype``, its Jacobian products at ``theta*`` and the prior at its start."""
        operator, prior = problem.operator, self.prior_options
        network, z = kept_network(reconstruction, self._owner)
        network = network.to(dtype=dtype).eval()
        z = z[:1].to(dtype)
        parameters = None if prior.parameters is None else list(prior.parameters)
        lin = Linearization(network, z, parameters, prior.pre_sigmoid)
        if tuple(lin.output.shape[1:]) != operator.domain_shape:
            raise ShapeError(f"{type(self).__name__}: "
                             f"the generator makes images of shape {tuple(lin.output.shape[1:])} "
                             f"but the operator {operator.name} expects {operator.domain_shape}")
        with torch.no_grad():
            x_star = network(z)
        theta_star = torch.cat([t.reshape(-1) for t in lin.theta]).view(1, -1)
        start = 1.0 if prior.variance == "auto" else float(prior.variance)
        block_prior = MaternBlockPrior(lin.shapes, start, prior.lengthscale).to(x_star.device)
        return LinearizedNetwork(lin, network, z, prior, x_star, theta_star, operator.linearized(x_star), block_prior)

    def _noise_start(self, problem: InverseProblem, residual: Tensor, device: torch.device) -> tuple[Tensor, bool]:
        """``log s^2`` at its start (the problem's noise level, else the residual's spread) and whether it is learnt
        (``evidence.noise``)."""
        known = isinstance(problem.noise_std, Tensor)  # one value per image after InverseProblem's checks
        if self.evidence.noise == "known" and not known:
            raise ConfigError(f"{type(self).__name__}: evidence.noise='known' needs the noise level on the problem "
                              "(noise_std)")
        learn = self.evidence.noise == "learn" or (self.evidence.noise == "auto" and not known)
        noise_std = float(problem.noise_std[0]) if isinstance(problem.noise_std, Tensor) else float(residual.std())
        return torch.tensor(2 * math.log(max(noise_std, 1e-12)), dtype=torch.float64, device=device,
                            requires_grad=learn), learn

    def _use_linearized_mean(self, data_residual: Tensor) -> bool:
        """Whether the predictive mean is the linearised model's (``sampling.mean``; for ``"auto"``: when
        ``y - A(x*)`` leaves more than noise by the discrepancy principle); sets ``discrepancy`` and ``mean_used``."""
        m = data_residual.numel()
        self.discrepancy = float(data_residual.double().pow(2).sum()) / (m * self.noise_variance)
        under_fit = self.discrepancy > max(self.sampling.discrepancy_tau ** 2, 1 + 2 * math.sqrt(2 / m))
        chosen = self.sampling.mean
        self.mean_used = "linearized" if chosen == "linearized" or (chosen == "auto" and under_fit) else "network"
        return self.mean_used == "linearized"

    def _image_noise_variance(self, model: LinearizedNetwork, solver: LinDIPSolver) -> float:
        """``eta^2`` of ``sampling.image_noise`` at the fitted noise variance."""
        image_noise = self.sampling.image_noise
        if image_noise == "none":
            return 0.0
        if image_noise == "projected":
            return projected_noise_variance(model.tangent, self.noise_variance, self.sampling.image_noise_rank,
                                            solver.dense, self.seed, model.x_star.device)
        return float(image_noise) ** 2

    @staticmethod
    def _match_prior_energy(prior: MaternBlockPrior, pull, residual: Tensor, noise_variance: float,
                            generator: torch.Generator, probes: int = 8) -> None:
        """Scale every block variance so that the prior explains the evidence's energy:
        ``tr(A J Sigma J^T A^T) = max(||r||^2 - m s^2, 0.01 ||r||^2)``, the trace by Hutchinson (``probes``)."""
        m = residual.numel()
        z = (torch.randint(0, 2, (probes, m), generator=generator) * 2 - 1).to(residual)
        with torch.no_grad():
            pulled = pull(z)
            trace = float((pulled * prior.covariance_apply(pulled)).sum(dim=1).mean())
            energy = float(residual.double().pow(2).sum())
            prior.log_variance.add_(math.log(max(energy - m * noise_variance, 0.01 * energy) / max(trace, 1e-300)))

    def _batch(self, device: torch.device) -> int:
        """Vectors per batch of products: ``solver.batch``, or for ``"auto"`` 8 on a CPU and 32 on a GPU."""
        if isinstance(self.solver.batch, int):
            return self.solver.batch
        return 8 if device.type == "cpu" else 32

    # -- predictive -----------------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        """The predictive mean, ``(1, *image)``: the DIP reconstruction ``x* = G(theta*)`` or the linearised
        model's posterior mean (``mean_used``)."""
        return self._fitted()

    def sample(self, n: int, seed: int = 0) -> Tensor:
        mean = self._fitted()
        n = positive_int(n, "LinearizedLaplace.sample: n")
        assert self._solver is not None  # set with the mean by fit
        return self._solver.sample(n, mean, self.image_noise_variance, torch.Generator().manual_seed(seed))
