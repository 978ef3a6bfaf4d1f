"""Linearised Laplace around a DIP reconstruction (lin-DIP).

Model: ``y | theta ~ N(A h(theta), s^2 I)`` with ``h(theta) = x* + J (theta - theta*)`` and the
zero-mean prior ``theta ~ N(0, Sigma)`` (``MaternBlockPrior``). Then
``y ~ N(A (x* - J theta*), K)`` with ``K = (A J) Sigma (A J)^T + s^2 I``; the hyperparameters of
``Sigma`` and ``s^2`` maximise ``log p(y)`` (type-II maximum likelihood, "MLL"), optionally plus the
TV-PredCP hyperprior (``"TV-MAP"``). The predictive over images is Gaussian with covariance
``J Sigma J^T - J Sigma (A J)^T K^{-1} (A J) Sigma J^T``, optionally plus ``eta^2 I``
(``image_noise``: the observation noise seen in image space, see ``image_noise.py``). A nonlinear ``A``
is replaced by its tangent ``A'(x*)``. Its mean is ``x*``, or the linearised model's posterior mean
``x* + J (theta_bar - theta*)``, ``theta_bar = Sigma (A J)^T K^{-1} r``, when the DIP fit under-fits the data
(``predictive_mean``). ``solver="subspace"`` restricts the prior to the leading eigenspace of ``J Sigma J^T``
(``subspace.py``), which makes every step closed-form whatever the number of measurements.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior.core.operator import ForwardOperator
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError, ConvergenceWarning, NonFiniteError, ShapeError
from invprior.posterior.fitted import kept_network
from invprior.posterior.gaussian_predictive import GaussianPredictive
from invprior.posterior.image_noise import projected_noise_variance
from invprior.posterior.linearization import Linearization
from invprior.posterior.prior import MaternBlockPrior
from invprior.posterior.scalable import LinearModel, chunked
from invprior.posterior.subspace import OVERSAMPLE, PriorSubspace, SubspaceRegression, prior_subspace, remainder_draws
from invprior.posterior.tv_pred_cp import TVPredCP
from invprior.regularizers.tv import AnisotropicTV
from invprior.validation import DTYPES, choice, positive_int, real

SOLVERS = ("auto", "exact", "scalable", "subspace")
HYPERPRIORS = ("none", "tv_pred_cp")
NOISE = ("learn", "known", "auto")
IMAGE_NOISE = ("none", "projected")
PREDICTIVE_MEANS = ("auto", "network", "linearized")
#: A subspace that keeps less than this fraction of the prior's pixel variance gets a ConvergenceWarning.
CAPTURED_WARNING = 0.9


def dense_operator(operator: ForwardOperator, dtype: torch.dtype = torch.float64,
                   device: torch.device | str = "cpu") -> Tensor:
    """The matrix of a linear operator, ``(m, n)``, from its action on the standard basis."""
    n = math.prod(operator.domain_shape)
    basis = torch.eye(n, dtype=dtype, device=device).view(n, *operator.domain_shape)
    return operator(basis).reshape(n, -1).T


class LinearizedLaplace(GaussianPredictive):
    """lin-DIP: a Gaussian predictive over images from the linearised network.

    ``solver="exact"`` forms ``J`` and ``K`` densely (Cholesky; images up to ``max_pixels``);
    ``"scalable"`` is matrix-free: Hutchinson gradients with ``num_probes`` probes, CG preconditioned by a
    rank-``preconditioner_rank`` Nystrom approximation refreshed every ``precondition_every`` steps, and
    ``num_samples`` Matheron samples for the pixel-wise std, ``sample_batch`` vectors per batch of products
    (``"auto"``: 8 on a CPU, 32 on a GPU) (CG to ``cg_rtol`` for gradients, to
    ``sample_cg_rtol`` for samples; any miss is reported by a ``ConvergenceWarning``, and ``cg_summary`` keeps
    the iteration counts per phase); ``"auto"`` picks exact up to ``max_pixels``. ``refresh_for_samples``
    recomputes the preconditioner at the fitted hyperparameters before sampling: ``preconditioner_rank``
    products that pay for themselves from about ``preconditioner_rank / 3`` samples on (it halves the CG
    iterations per sample), at rank ``sample_preconditioner_rank`` (default ``preconditioner_rank``): a higher
    one adds only the extra test columns (a vjp and a jvp each) and cuts the CG iterations per sample batch
    again (at 128x128 rank 2000 instead of 1200: 1.3 instead of 2 per batch, the whole fit 0.75x with 1000
    samples).
    ``"subspace"`` (for data too large for CG, e.g. a measured CT sinogram) keeps the rank-``subspace_rank``
    Nystrom approximation of the prior image covariance ``J Sigma J^T`` (``subspace_rank`` vjp-jvp pairs) and
    solves the linearised model in it in closed form, no CG whatever the number of measurements. Its
    hyperparameters are a global scale of the prior (the block variances' ratios and the lengthscales stay at
    their start) and, with ``noise="learn"``, the noise variance, both by marginal likelihood; ``captured_variance`` keeps the fraction of the prior's pixel
    variance the subspace holds (``subspace`` the eigenpairs). The posterior variance sits largely outside the
    leading directions (the data constrain those most), so the remainder of the prior is added back as unconstrained
    by the data, its pixel variance from ``num_samples`` prior draws: a ``ConvergenceWarning`` when it exceeds 10 %
    of the prior's variance (raise ``subspace_rank``).
    ``hyperprior="tv_pred_cp"`` adds the TV-PredCP hyperprior on the lengthscales (TV-MAP).
    ``noise="learn"`` fits the noise variance with the prior; ``"known"`` holds it at the problem's noise
    level (``"auto"``: known when the problem has one). Holding it matters when ``A J`` has full row rank
    (denoising): then the evidence can explain the data with a vanishing noise variance and over-confident std.
    Adam with ``lr`` runs ``iterations`` steps on the hyperparameters (stored as logarithms, so always valid),
    starting from ``variance`` and ``lengthscale``; ``variance="auto"`` starts from the variance at which the
    prior explains the evidence's energy, ``tr(A J Sigma J^T A^T) = ||r||^2 - m s^2``.
    ``image_noise`` adds ``eta^2 I`` to the predictive covariance (independent pixel noise on every sample):
    ``"projected"`` (default), ``eta^2 = s^2 / n sum_{i <= k} sigma_i(A)^{-2}`` over the
    ``k = min(image_noise_rank, m / 2)`` largest singular values of ``A`` at the fitted ``s^2``; a number,
    ``eta`` itself; or ``"none"``.
    ``predictive_mean``: ``"network"`` keeps the DIP reconstruction ``x*``; ``"linearized"`` takes the posterior
    mean of the linearised model, ``x* + J (theta_bar - theta*)`` with ``theta_bar = Sigma (A J)^T K^{-1} r``
    (one more solve); ``"auto"`` (default) takes it when the DIP fit leaves more than noise in the data, by the
    discrepancy principle: ``||y - A(x*)|| > discrepancy_tau * sqrt(m) s`` (Morozov's factor, 1.1 as in the
    ``discrepancy`` stopping rule: model error also leaves misfit) and ``||y - A(x*)||^2 > (1 + 2 sqrt(2 / m)) m s^2``
    (two standard deviations of ``chi^2_m / m``, which decides for small ``m``). ``discrepancy`` keeps
    ``||y - A(x*)||^2 / (m s^2)`` and ``mean_used`` the choice.
    """

    _owner = "LinearizedLaplace"

    def __init__(self, solver: str = "auto", hyperprior: str = "none", noise: str = "auto", iterations: int = 200,
                 lr: float = 0.01,
                 variance: float | str = 1.0, lengthscale: float = 0.1, pre_sigmoid: bool = False,
                 parameters: list[str] | None = None, max_pixels: int = 1024, num_probes: int = 10,
                 cg_iterations: int = 100, cg_rtol: float = 1e-2, sample_cg_rtol: float = 1e-4,
                 preconditioner_rank: int = 1000, precondition_every: int = 100, refresh_for_samples: bool = True,
                 sample_preconditioner_rank: int | None = None, subspace_rank: int = 1000,
                 num_samples: int = 1000, sample_batch: int | str = "auto",
                 dtype: str = "float64", tv_rate: float | None = None, tv_samples: int = 4,
                 image_noise: str | float = "projected", image_noise_rank: int = 100,
                 predictive_mean: str = "auto", discrepancy_tau: float = 1.1, seed: int = 0,
                 progress: bool = True) -> None:
        choice(solver, SOLVERS, "LinearizedLaplace: solver")
        choice(hyperprior, HYPERPRIORS, "LinearizedLaplace: hyperprior")
        choice(noise, NOISE, "LinearizedLaplace: noise")
        self.noise = noise
        if solver == "subspace" and hyperprior != "none":
            raise ConfigError("LinearizedLaplace: solver='subspace' fits a global prior scale; it takes no hyperprior")
        choice(dtype, DTYPES, "LinearizedLaplace: dtype")
        self.solver, self.hyperprior, self.dtype = solver, hyperprior, DTYPES[dtype]
        self.iterations = positive_int(iterations, "LinearizedLaplace: iterations")
        self.lr = real(lr, "LinearizedLaplace: lr", minimum=0.0, strict=True)
        self.variance = variance if variance == "auto" else real(variance, "LinearizedLaplace: variance", minimum=0.0,
                                                                 strict=True)
        self.lengthscale = real(lengthscale, "LinearizedLaplace: lengthscale", minimum=0.0, strict=True)
        self.pre_sigmoid, self.parameters = bool(pre_sigmoid), parameters
        self.max_pixels = positive_int(max_pixels, "LinearizedLaplace: max_pixels")
        self.num_probes = positive_int(num_probes, "LinearizedLaplace: num_probes")
        self.cg_iterations = positive_int(cg_iterations, "LinearizedLaplace: cg_iterations")
        self.cg_rtol = real(cg_rtol, "LinearizedLaplace: cg_rtol", minimum=0.0, strict=True)
        self.sample_cg_rtol = real(sample_cg_rtol, "LinearizedLaplace: sample_cg_rtol", minimum=0.0, strict=True)
        self.preconditioner_rank = positive_int(preconditioner_rank, "LinearizedLaplace: preconditioner_rank")
        self.precondition_every = positive_int(precondition_every, "LinearizedLaplace: precondition_every")
        self.refresh_for_samples = bool(refresh_for_samples)
        self.sample_preconditioner_rank = self.preconditioner_rank if sample_preconditioner_rank is None else \
            positive_int(sample_preconditioner_rank, "LinearizedLaplace: sample_preconditioner_rank")
        self.subspace_rank = positive_int(subspace_rank, "LinearizedLaplace: subspace_rank")
        self.captured_variance = float("nan")
        self.subspace: PriorSubspace | None = None
        self.num_samples = positive_int(num_samples, "LinearizedLaplace: num_samples")
        self.sample_batch = sample_batch if sample_batch == "auto" else positive_int(sample_batch,
                                                                                      "LinearizedLaplace: sample_batch")
        self.tv_rate = None if tv_rate is None else real(tv_rate, "LinearizedLaplace: tv_rate", minimum=0.0, strict=True)
        self.tv_samples = positive_int(tv_samples, "LinearizedLaplace: tv_samples")
        if isinstance(image_noise, str):
            if image_noise not in IMAGE_NOISE:
                raise ConfigError(f"LinearizedLaplace: image_noise must be one of {IMAGE_NOISE} or a number >= 0 "
                                  f"(eta), got {image_noise!r}")
            self.image_noise: str | float = image_noise
        else:
            self.image_noise = real(image_noise, "LinearizedLaplace: image_noise", minimum=0.0)
        self.image_noise_rank = positive_int(image_noise_rank, "LinearizedLaplace: image_noise_rank")
        self.image_noise_variance = 0.0
        if predictive_mean not in PREDICTIVE_MEANS:
            raise ConfigError(f"LinearizedLaplace: predictive_mean must be one of {PREDICTIVE_MEANS}, "
                              f"got {predictive_mean!r}")
        self.predictive_mean = predictive_mean
        self.discrepancy_tau = real(discrepancy_tau, "LinearizedLaplace: discrepancy_tau", minimum=1.0)
        self.discrepancy, self.mean_used = float("nan"), "network"
        self.seed, self.progress = int(seed), bool(progress)
        self.history: list[float] = []
        self.cg_summary: dict[str, dict[str, float]] = {}
        self.wall_time = 0.0
        self._model: LinearModel | None = None

    # -- fitting ------------------------------------------------------------------------
    def _resolve_solver(self, pixels: int) -> str:
        if self.solver == "auto":
            return "exact" if pixels <= self.max_pixels else "scalable"
        if self.solver == "exact" and pixels > self.max_pixels:
            raise ConfigError(f"LinearizedLaplace: the exact path forms dense n x n matrices; n = {pixels} exceeds "
                              f"max_pixels = {self.max_pixels} (use solver='scalable')")
        return self.solver

    def fit(self, reconstruction: Reconstruction, problem: InverseProblem) -> LinearizedLaplace:
        start = time.perf_counter()
        self.history, self._mean, self._covariance, self._samples, self._model = [], None, None, None, None
        self._factor, self._pixel_variance, self.subspace = None, None, None
        self.cg_summary = {}
        if problem.batch_size != 1:
            raise ShapeError("LinearizedLaplace: fit one image at a time (problem.select(b))")
        operator = problem.operator
        solver = self._resolve_solver(math.prod(operator.domain_shape))
        dtype = torch.float64 if solver == "exact" else self.dtype
        network, z = kept_network(reconstruction, "LinearizedLaplace")
        network = network.to(dtype=dtype).eval()
        z = z[:1].to(dtype)
        lin = Linearization(network, z, self.parameters, self.pre_sigmoid)
        if tuple(lin.output.shape[1:]) != operator.domain_shape:
            raise ShapeError(f"LinearizedLaplace: the generator makes images of shape {tuple(lin.output.shape[1:])} but "
                             f"the operator {operator.name} expects {operator.domain_shape}")
        with torch.no_grad():
            x_star = network(z)
        y = problem.y.to(device=x_star.device, dtype=dtype)
        tangent = operator.linearized(x_star)
        theta_star = torch.cat([t.reshape(-1) for t in lin.theta]).view(1, -1)
        prior = MaternBlockPrior(lin.shapes, 1.0 if self.variance == "auto" else self.variance,
                                 self.lengthscale).to(x_star.device)
        generator = torch.Generator().manual_seed(self.seed)

        a_dense = None
        if solver == "exact":
            jacobian = lin.jacobian()                                             # (n, P)
            a_dense = dense_operator(tangent, dtype, x_star.device)               # (m, n)
            aj = a_dense @ jacobian                                               # (m, P)
            model_forward = lambda theta: theta @ aj.T                            # noqa: E731
            images = lambda theta: (theta @ jacobian.T).view(-1, *operator.domain_shape)  # noqa: E731
            pull = lambda u: u @ aj  # noqa: E731
        else:
            # the preconditioner only sets CG's speed: sketch it with float32 products (about half the cost)
            sketch = lin if dtype == torch.float32 or solver == "subspace" else Linearization(
                copy.deepcopy(network).float(), z.float(), self.parameters, self.pre_sigmoid)
            model = LinearModel(lin, tangent, prior, torch.zeros((), dtype=torch.float64), self.cg_iterations,
                                self.cg_rtol, chunk=self._batch(x_star.device), sketch=sketch)
            model_forward, images, pull = model.forward, model.images, model.transpose
        with torch.no_grad():
            # zero-mean weight prior: y - A h(0) = y - A(x*) + A J theta*
            data_residual = y - operator(x_star)
            residual = (data_residual.flatten() + model_forward(theta_star).flatten()).detach().double()
        known = problem.noise_std is not None
        if self.noise == "known" and not known:
            raise ConfigError("LinearizedLaplace: noise='known' needs the noise level on the problem (noise_std)")
        learn_noise = self.noise == "learn" or (self.noise == "auto" and not known)
        noise_std = float(problem.noise_std[0]) if known else float(residual.std())
        log_noise = torch.tensor(2 * math.log(max(noise_std, 1e-12)), dtype=torch.float64, device=x_star.device,
                                 requires_grad=learn_noise)
        if self.variance == "auto":
            self._match_prior_energy(prior, pull, residual, math.exp(float(log_noise.detach())), generator)
        if solver == "subspace":
            self._fit_subspace(model, tangent, prior, x_star, data_residual, residual, theta_star,
                               math.exp(float(log_noise.detach())), learn_noise, generator)
            self.wall_time = time.perf_counter() - start
            return self
        hyperprior = None
        if self.hyperprior == "tv_pred_cp":
            rate = self.tv_rate if self.tv_rate is not None else 1.0 / max(float(AnisotropicTV()(x_star.double())), 1e-12)
            hyperprior = TVPredCP(prior, images, rate, self.tv_samples, self.seed)

        optimizer = torch.optim.Adam([*prior.parameters(), *([log_noise] if learn_noise else [])], lr=self.lr)
        if solver == "scalable":
            model.log_noise = log_noise
        steps = tqdm(range(self.iterations), desc=f"lin-DIP hyperparameters ({solver})", disable=not self.progress,
                     leave=False)
        for step in steps:
            optimizer.zero_grad()
            if solver == "exact":
                objective = self.log_marginal_likelihood(aj, residual, prior, log_noise)
                value = float(objective.detach())
            else:
                if step % self.precondition_every == 0:   # keep Z when another refresh will reuse it
                    again = self.refresh_for_samples or step + self.precondition_every < self.iterations
                    model.refresh_preconditioner(self.preconditioner_rank, generator, keep=again)
                probes = (torch.randint(0, 2, (self.num_probes, residual.numel()), generator=generator) * 2 - 1
                          ).to(residual)
                objective, value = model.mll_surrogate(residual, probes)  # gradient: that of log p(y)
            if hyperprior is not None:
                log_hyper = hyperprior.log_density()
                objective = objective + log_hyper
                value += float(log_hyper.detach())
            (-objective).backward()
            optimizer.step()
            self.history.append(value)
            hyper = torch.cat([prior.log_variance, prior.log_lengthscale, log_noise.view(1)]).detach()
            if not torch.isfinite(hyper).all():
                raise NonFiniteError(f"LinearizedLaplace: a hyperparameter became non-finite at step {step} "
                                     "(lower lr)")
            steps.set_postfix(objective=f"{value:.4g}", noise_std=f"{math.exp(0.5 * float(log_noise.detach())):.3g}")
        if solver == "scalable":
            self.cg_summary["marginal_likelihood"] = model.take_reports("LinearizedLaplace (marginal likelihood)")

        self.prior, self.noise_variance, self.solver_used = prior, float(log_noise.detach().exp()), solver
        log_noise = log_noise.detach()
        self.image_noise_variance = self._image_noise_variance(tangent, a_dense, x_star.device)
        if solver == "exact":
            with torch.no_grad():
                sigma_jt = prior.apply(jacobian).T                       # Sigma J^T, (P, n)
                sigma_ajt = prior.apply(aj).T                            # Sigma (A J)^T, (P, m)
                k = aj @ sigma_ajt + log_noise.exp() * torch.eye(aj.shape[0], dtype=torch.float64, device=aj.device)
                cross = jacobian @ sigma_ajt                             # J Sigma (A J)^T, (n, m)
                cov = jacobian @ sigma_jt - cross @ torch.linalg.solve(k, cross.T)
            eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
            self._covariance = 0.5 * (cov + cov.T) + self.image_noise_variance * eye
            self._mean = self._predictive_mean(x_star, data_residual, residual, theta_star,
                                               lambda b: torch.linalg.solve(k, b.T).T, pull, images, prior)
        else:
            model.log_noise = log_noise
            if self.refresh_for_samples:  # at the fitted hyperparameters: fewer CG iterations for every solve
                # any new test columns come from a stream of their own: the samples' draws stay the same whatever
                # the rank, which only sets CG's speed
                model.refresh_preconditioner(self.sample_preconditioner_rank,
                                             torch.Generator().manual_seed(self.seed + 1))
            self._model = model
            self._mean = self._predictive_mean(x_star, data_residual, residual, theta_star,
                                               lambda b: model.solve(b, self.sample_cg_rtol), pull, images, prior)
            if self.mean_used == "linearized":
                self.cg_summary["mean"] = model.take_reports("LinearizedLaplace (posterior mean)")
            self._samples = self._matheron(self.num_samples, generator)
        self.wall_time = time.perf_counter() - start
        return self

    def _fit_subspace(self, model: LinearModel, tangent: ForwardOperator, prior: MaternBlockPrior, x_star: Tensor,
                      data_residual: Tensor, residual: Tensor, theta_star: Tensor, noise_variance: float,
                      learn_noise: bool, generator: torch.Generator) -> None:
        """The ``"subspace"`` solver: ``J Sigma J^T ~ L L^T`` of rank ``subspace_rank``, then the closed-form
        regression of ``subspace.py`` for the prior scale, the noise variance, the mean and the std factor."""
        shape, lin, chunk = tangent.domain_shape, model.lin, self._batch(x_star.device)
        width = min(self.subspace_rank + OVERSAMPLE, math.prod(shape))
        bar = tqdm(total=width, desc="lin-DIP prior subspace", disable=not self.progress, leave=False)

        def pull(v: Tensor) -> Tensor:                                                    # J^T v
            return chunked(lin.vjps, v.view(-1, *shape).to(lin.output), chunk)

        def cover(v: Tensor) -> Tensor:                                                   # J Sigma J^T v
            bar.update(v.shape[0])
            return model.images(prior.apply(pull(v))).flatten(1)

        with torch.no_grad():
            subspace: PriorSubspace = prior_subspace(lambda v: chunked(cover, v, chunk), pull, prior.apply,
                                                     math.prod(shape), self.subspace_rank, generator,
                                                     probes=self.num_probes, device=x_star.device)
            factor = subspace.factor                                                              # L, (n, r)
            projected = chunked(lambda v: tangent(v.view(-1, *shape).to(x_star)).flatten(1).double(), factor.T,
                                 chunk).T                                                         # A L, (m, r)
        bar.close()
        self.captured_variance = subspace.captured
        if self.captured_variance < CAPTURED_WARNING:
            warnings.warn(f"LinearizedLaplace (subspace): rank {subspace.rank} keeps {self.captured_variance:.1%} of "
                          "the prior's pixel variance; the std counts the rest as unconstrained by the data, which "
                          "overstates it (raise subspace_rank)", ConvergenceWarning, stacklevel=3)
        regression = SubspaceRegression(projected, residual)
        del projected
        alpha, self.noise_variance = regression.fit(noise_variance, learn_noise)
        self.history = [regression.log_evidence(alpha, self.noise_variance)]
        with torch.no_grad():
            prior.log_variance += math.log(alpha)
        self.prior, self.solver_used = prior, "subspace"
        self.image_noise_variance = self._image_noise_variance(tangent, None, x_star.device)
        weights_mean, weights_factor = regression.posterior_weights(alpha, self.noise_variance)
        self._model, self.subspace = model, subspace
        remainder = torch.cat([self._remainder(size, generator).pow(2) for size in
                               tqdm(self._batches(self.num_samples), desc="lin-DIP remainder draws",
                                    disable=not self.progress, leave=False)])
        self._factor = factor @ weights_factor
        self._pixel_variance = remainder.mean(dim=0) + self.image_noise_variance
        self._mean = x_star
        if self._linearized_mean(data_residual):
            with torch.no_grad():
                prior_mean = x_star - model.images(theta_star).to(x_star)                 # x* - J theta*
                self._mean = prior_mean + (factor @ weights_mean).view_as(x_star).to(x_star)

    def _remainder(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` draws of the prior's remainder outside the subspace, ``(n, pixels)`` (``subspace.remainder_draws``)."""
        with torch.no_grad():
            basis = self.subspace.basis
            theta = self.prior.sample(n, generator, dtype=self._model.lin.output.dtype).to(basis.device)
            return remainder_draws(self._model.images(theta).flatten(1), basis)

    def _batches(self, n: int) -> list[int]:
        """``n`` split into batches of ``sample_batch`` (the last one smaller)."""
        batch = self._batch(self._model.lin.output.device)
        return [min(batch, n - start) for start in range(0, n, batch)]

    def _linearized_mean(self, data_residual: Tensor) -> bool:
        """Whether the predictive mean is the linearised model's (``predictive_mean``; for ``"auto"``: when
        ``y - A(x*)`` leaves more than noise by the discrepancy principle); sets ``discrepancy`` and ``mean_used``."""
        m = data_residual.numel()
        self.discrepancy = float(data_residual.double().pow(2).sum()) / (m * self.noise_variance)
        under_fit = self.discrepancy > max(self.discrepancy_tau ** 2, 1 + 2 * math.sqrt(2 / m))
        self.mean_used = "linearized" if self.predictive_mean == "linearized" or (
            self.predictive_mean == "auto" and under_fit) else "network"
        return self.mean_used == "linearized"

    def _predictive_mean(self, x_star: Tensor, data_residual: Tensor, residual: Tensor, theta_star: Tensor, solve,
                         pull, images, prior: MaternBlockPrior) -> Tensor:
        """``x*``, or ``x* + J (theta_bar - theta*)`` with ``theta_bar = Sigma (A J)^T K^{-1} r`` (``predictive_mean``);
        ``data_residual`` is ``y - A(x*)``, ``residual`` the evidence's ``r``, ``solve`` applies ``K^{-1}``."""
        if not self._linearized_mean(data_residual):
            return x_star
        with torch.no_grad():
            alpha = solve(residual.view(1, -1))
            theta_bar = prior.apply(pull(alpha).to(theta_star))
            shift = images(theta_bar - theta_star).to(x_star)
        if not torch.isfinite(shift).all():
            raise NonFiniteError("LinearizedLaplace: the linearised posterior mean is not finite")
        return x_star + shift.view_as(x_star)

    def _image_noise_variance(self, tangent: ForwardOperator, dense: Tensor | None, device: torch.device) -> float:
        """``eta^2`` of the ``image_noise`` option at the fitted noise variance."""
        if self.image_noise == "none":
            return 0.0
        if self.image_noise == "projected":
            return projected_noise_variance(tangent, self.noise_variance, self.image_noise_rank, dense, self.seed,
                                            device)
        return float(self.image_noise) ** 2

    @staticmethod
    def _match_prior_energy(prior: MaternBlockPrior, pull, residual: Tensor, noise_variance: float,
                            generator: torch.Generator, probes: int = 8) -> None:
        """Scale every block variance so that the prior explains the evidence's energy:
        ``tr(A J Sigma J^T A^T) = max(||r||^2 - m s^2, 0.01 ||r||^2)``, the trace by Hutchinson (``probes``)."""
        m = residual.numel()
        z = (torch.randint(0, 2, (probes, m), generator=generator) * 2 - 1).to(residual)
        with torch.no_grad():
            pulled = pull(z)
            trace = float((pulled * prior.apply(pulled)).sum(dim=1).mean())
            energy = float(residual.double().pow(2).sum())
            prior.log_variance += math.log(max(energy - m * noise_variance, 0.01 * energy) / max(trace, 1e-300))

    def _batch(self, device: torch.device) -> int:
        """Vectors per batch of products: ``sample_batch``, or for ``"auto"`` 8 on a CPU and 32 on a GPU."""
        if self.sample_batch != "auto":
            return self.sample_batch
        return 8 if device.type == "cpu" else 32

    def _matheron(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` Matheron samples ``x* + J (theta_s - theta*)`` (plus ``eta`` times white noise with
        ``image_noise``), drawn in batches of ``sample_batch``."""
        draws = torch.cat([self._model.matheron_samples(size, generator, self.sample_cg_rtol)
                           for size in tqdm(self._batches(n), desc="lin-DIP samples", disable=not self.progress,
                                            leave=False)])
        self.cg_summary["samples"] = self._model.take_reports("LinearizedLaplace (Matheron samples)")
        return self._mean + self._with_image_noise(draws, generator).unsqueeze(1)

    def _with_image_noise(self, draws: Tensor, generator: torch.Generator) -> Tensor:
        """``draws`` plus ``eta`` times white noise (``image_noise``; unchanged when ``eta = 0``)."""
        if self.image_noise_variance == 0:
            return draws
        white = torch.randn(draws.shape, generator=generator, dtype=draws.dtype).to(draws.device)
        return draws + math.sqrt(self.image_noise_variance) * white

    @staticmethod
    def log_marginal_likelihood(aj: Tensor, residual: Tensor, prior: MaternBlockPrior, log_noise: Tensor) -> Tensor:
        """``log N(r; 0, (A J) Sigma (A J)^T + s^2 I)`` with ``s^2 = exp(log_noise)``."""
        m = aj.shape[0]
        k = aj @ prior.apply(aj).T + log_noise.exp() * torch.eye(m, dtype=aj.dtype, device=aj.device)
        factor = torch.linalg.cholesky(k)
        alpha = torch.cholesky_solve(residual.view(-1, 1), factor)
        return -0.5 * (residual @ alpha.flatten()) - torch.log(torch.diagonal(factor)).sum() - 0.5 * m * math.log(2 * math.pi)

    # -- predictive -----------------------------------------------------------------------
    @property
    def mean(self) -> Tensor:
        """The predictive mean, ``(1, *image)``: the DIP reconstruction ``x* = G(theta*)`` or the linearised
        model's posterior mean (``mean_used``)."""
        return self._fitted()

    def sample(self, n: int, seed: int = 0) -> Tensor:
        mean = self._fitted()
        n = positive_int(n, "LinearizedLaplace.sample: n")
        generator = torch.Generator().manual_seed(seed)
        if self._factor is not None:
            factor = self._factor
            white = torch.randn(n, factor.shape[1], generator=generator, dtype=factor.dtype).to(factor.device)
            draws = white @ factor.T + torch.cat([self._remainder(size, generator) for size in self._batches(n)])
            return mean + self._with_image_noise(draws, generator).view(n, *mean.shape).to(mean)
        if self._covariance is None:
            return self._matheron(n, generator)
        cov = self._covariance
        jitter = 1e-10 * cov.diagonal().mean()
        factor = torch.linalg.cholesky(cov + jitter * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device))
        white = torch.randn(n, cov.shape[0], generator=generator, dtype=cov.dtype).to(cov.device)
        return (mean.flatten() + white @ factor.T).view(n, *mean.shape)
