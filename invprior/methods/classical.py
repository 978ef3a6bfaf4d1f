"""Classical baselines on any linear operator: pseudo-inverse/FBP, Tikhonov by CG, TV by PDHG."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior.core.interfaces import Method
from invprior.core.operator import ForwardOperator
from invprior.core.problem import InverseProblem, ensure_noise_level
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError
from invprior.linalg import CGInfo, conjugate_gradient
from invprior.methods.base import quality
from invprior.methods.cross_validation import FOLDS
from invprior.methods.weight_choice import check_rule_inputs, check_weight, choose_weight
from invprior.regularizers.tv import divergence, gradient
from invprior.threads import follow_load
from invprior.validation import choice, positive_int, real


def _require_linear(operator: ForwardOperator, method: str) -> None:
    if not operator.is_linear:
        raise ConfigError(f"{method} needs a linear operator; {operator.name} is nonlinear")


def _per_image(weight: Tensor, ndim: int) -> Tensor:
    """One weight per image, shaped to broadcast over a batch of ``ndim`` dimensions."""
    return weight.view(-1, *([1] * (ndim - 1)))


def smoothness_gram(x: Tensor) -> Tensor:
    """``L^T L x`` for the finite-difference gradient ``L``: ``-div(grad x)``."""
    return -divergence(gradient(x))


def normal_solve(problem: InverseProblem, alpha: Tensor | float, gram: Callable[[Tensor], Tensor],
                 warm: Tensor | None, iterations: int, rtol: float) -> tuple[Tensor, CGInfo]:
    """``(A^T A + alpha G) x = A^T y`` by CG from ``warm`` (``G = gram``, e.g. ``L^T L``; ``alpha`` a number or one
    per image, shaped to broadcast over ``x``): the minimiser of ``||A x - y||^2 + alpha x^T G x``."""
    op = problem.operator
    return conjugate_gradient(lambda v: op.adjoint(op(v)) + alpha * gram(v), op.adjoint(problem.y), warm,
                              iterations, rtol)


#: The start of every TV solve that is not warm-started: the smooth fill with this ``alpha / ||A||^2``.
FILL_WEIGHT = 1e-2


def smooth_fill(problem: InverseProblem, norm_a: float, iterations: int = 200) -> Tensor:
    """``argmin ||A x - y||^2 + alpha ||grad x||^2`` with ``alpha = FILL_WEIGHT ||A||^2``, by CG to ``rtol = 1e-4``:
    unknowns the data do not reach (missing pixels, held-out ones in a cross-validation fold) take a smooth
    interpolation of their neighbours instead of zero. Only ``problem.y`` enters it."""
    x, _ = normal_solve(problem, FILL_WEIGHT * norm_a ** 2, smoothness_gram, None, iterations, 1e-4)
    return x


class PseudoInverse(Method):
    """``x = A^dagger y`` with the operator's own pseudo-inverse (zero filling, FBP, ``M^+``)."""

    name = "pseudo_inverse"

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        start = time.perf_counter()
        if not problem.operator.has_pseudo_inverse:
            raise ConfigError(f"{self.name}: {problem.operator.name} has no pseudo-inverse; use 'tikhonov' instead")
        with torch.no_grad():
            x = problem.operator.pseudo_inverse(problem.y)
        return Reconstruction(x, self.name, stop_reason="closed form", wall_time=time.perf_counter() - start)


class FBP(PseudoInverse):
    """Filtered back-projection: the pseudo-inverse of a CT operator (filter set on the operator)."""

    name = "fbp"

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        if not hasattr(problem.operator, "fbp"):
            raise ConfigError(f"fbp needs a CT operator, got {problem.operator.name}; use 'pseudo_inverse'")
        return super().reconstruct(problem, progress)


class _Regularised(Method):
    """Shared settings of the weighted baselines: the weight or its rule, tau, the grid size."""

    def __init__(self, weight: float | str, tau: float, grid_size: int) -> None:
        self.weight = check_weight(weight, self.name)
        self.tau = real(tau, f"{self.name}: tau", minimum=1.0)
        self.grid_size = positive_int(grid_size, f"{self.name}: grid_size")

    @property
    def rule(self) -> str:
        return "fixed" if isinstance(self.weight, float) else self.weight

    def _fixed_weight(self, problem: InverseProblem) -> Tensor:
        return torch.full((problem.batch_size,), float(self.weight), dtype=torch.float64)


class Tikhonov(_Regularised):
    """``x = argmin ||A x - y||^2 + alpha ||L x||^2``, i.e. ``(A^T A + alpha L^T L) x = A^T y``, by batched CG.

    ``penalty`` chooses ``L``: ``"gradient"`` (finite differences, a smoothness prior; the default,
    it fills in unobserved pixels) or ``"identity"`` (classic ridge). ``weight`` is ``alpha``: a
    number, or a rule over a log grid of ``grid_size`` values in ``||A||^2 [1e-6, 10]``, per image:
    ``"cv"`` (held-out cross-validation, ``invprior.methods.cross_validation``), ``"discrepancy"`` (the
    largest alpha with residual <= tau * delta) or ``"oracle"`` (best PSNR; benchmarks only).
    """

    name = "tikhonov"
    PENALTIES = ("gradient", "identity")

    def __init__(self, weight: float | str = "discrepancy", penalty: str = "gradient", tau: float = 1.1,
                 grid_size: int = 15, max_iterations: int = 300, rtol: float = 1e-6) -> None:
        choice(penalty, self.PENALTIES, "tikhonov: penalty")
        super().__init__(weight, tau, grid_size)
        self.penalty = penalty
        self.max_iterations = positive_int(max_iterations, "tikhonov: max_iterations")
        self.rtol = real(rtol, "tikhonov: rtol", minimum=0.0, strict=True)
        if self.rtol >= 1:
            raise ConfigError(f"tikhonov: rtol must be < 1, got {rtol!r}")

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        op = problem.operator
        _require_linear(op, self.name)
        if self.rule == "discrepancy":
            problem = ensure_noise_level(problem, self.name)
        if self.penalty == "gradient" and len(op.domain_shape) != 3:
            raise ConfigError(f"tikhonov: penalty 'gradient' needs images (C, H, W), got {op.domain_shape}")
        start = time.perf_counter()
        not_converged: list[list[float]] = []
        gram_penalty = smoothness_gram if self.penalty == "gradient" else (lambda v: v)

        def solve(part: InverseProblem, alpha: Tensor, warm: Tensor | None) -> Tensor:
            x, info = normal_solve(part, _per_image(alpha, 1 + len(op.domain_shape)), gram_penalty, warm,
                                   self.max_iterations, self.rtol)
            if not bool(info.converged.all()):
                not_converged.append(alpha.tolist())
            return x

        with torch.no_grad():
            if self.rule == "fixed":
                weights, table = self._fixed_weight(problem), list[dict]()
                x = solve(problem, weights.to(problem.y), None)
            else:
                check_rule_inputs(problem, self.rule)
                y = problem.y
                scale = torch.full((problem.batch_size,), op.norm(dtype=y.dtype, device=y.device) ** 2)
                x, weights, table = choose_weight(solve, problem, scale, np.logspace(-6, 1, self.grid_size).tolist(),
                                                  self.rule, self.tau)
        reason = "solved to rtol" if not not_converged else f"CG did not reach rtol for alpha in {not_converged}"
        return Reconstruction(x, self.name, params={"weight": weights.tolist(), "rule": self.rule,
                                                    "penalty": self.penalty},
                              stop_reason=reason, wall_time=time.perf_counter() - start,
                              extras={"weight_search": table})


class TVLeastSquares(_Regularised):
    """``x = argmin 1/2 ||A x - y||^2 + lambda TV(x)`` (optionally ``x >= 0``, and within the problem's
    ``constraints``: bounds and support) by PDHG (Chambolle-Pock).

    The operator is split as ``K = (A, c grad)`` with ``c = ||A|| / sqrt(8)`` so both blocks have
    the same scale; step sizes ``tau = sigma = 0.99 / (sqrt(2) ||A||)``. A solve that is not warm-started starts
    from ``smooth_fill`` (projected onto the constraints), so pixels only the penalty reaches (missing pixels,
    held-out ones in cross-validation) do not have to travel from zero at a speed set by the weight.
    ``weight`` is ``lambda``: a number, or ``"cv"`` (held-out cross-validation: the weight that predicts left-out
    measurements best, close to the oracle and the recommended rule), ``"discrepancy"`` or ``"oracle"`` over the
    per-image grid ``||A|| s [1e-2, 30]`` of ``grid_size`` points (default 17 for ``"cv"``, 9 otherwise), ``s`` the
    image's noise std (estimated when not given; ``1e-3`` rms(y) when the data are noise-free).
    """

    name = "tv"

    def __init__(self, weight: float | str = "discrepancy", tau: float = 1.1, grid_size: int | None = None,
                 iterations: int = 500, isotropic: bool = False, nonnegative: bool = True,
                 log_every: int = 10) -> None:
        if grid_size is None:  # the cross-validation score is smooth in the weight: a finer grid pays off
            grid_size = 17 if weight == "cv" else 9
        super().__init__(weight, tau, grid_size)
        self.iterations = positive_int(iterations, "tv: iterations")
        self.log_every = positive_int(log_every, "tv: log_every")
        self.isotropic, self.nonnegative = bool(isotropic), bool(nonnegative)

    def _project_dual(self, p: Tensor, bound: Tensor) -> Tensor:
        if not self.isotropic:
            return torch.maximum(torch.minimum(p, bound), -bound)
        magnitude = p.pow(2).sum(dim=1, keepdim=True).sqrt()
        return p / (magnitude / bound).clamp_min(1.0)

    def _feasible(self, x: Tensor, problem: InverseProblem) -> Tensor:
        """``x`` projected onto ``x >= 0`` (when asked) and the problem's constraints."""
        if self.nonnegative:
            x = x.clamp_min(0.0)
        return x if problem.constraints is None else problem.constraints.project(x)

    def _pdhg(self, problem: InverseProblem, weight: Tensor, norm_a: float, x0: Tensor | None,
              record: Reconstruction | None, bar: tqdm) -> Tensor:
        op, y = problem.operator, problem.y
        c = norm_a / 8 ** 0.5
        step = 0.99 / (2 ** 0.5 * norm_a)
        x = self._feasible(smooth_fill(problem, norm_a), problem) if x0 is None else x0
        x_bar, q, p = x.clone(), torch.zeros_like(y), torch.zeros_like(gradient(x))
        bound = _per_image(weight.to(y) / c, p.ndim)
        for k in range(1, self.iterations + 1):
            follow_load()
            q = (q + step * (op(x_bar) - y)) / (1 + step)
            p = self._project_dual(p + step * c * gradient(x_bar), bound)
            x_new = self._feasible(x - step * (op.adjoint(q) - c * divergence(p)), problem)
            x_bar, x = 2 * x_new - x, x_new
            if record is not None and (k % self.log_every == 0 or k == self.iterations):
                record.log(iteration=k, **quality(x, problem))
            bar.update(1)
        return x

    def _grid_scale(self, problem: InverseProblem, norm_a: float) -> Tensor:
        m = problem.y[0].numel()
        floor = 1e-3 * problem.y.flatten(1).norm(dim=1) / m ** 0.5
        std = problem.noise_norm / m ** 0.5 if problem.noise_norm is not None else torch.zeros_like(floor)
        return norm_a * torch.maximum(std, floor).clamp_min(torch.finfo(problem.y.dtype).tiny)

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        op = problem.operator
        _require_linear(op, self.name)
        if len(op.domain_shape) != 3:
            raise ConfigError(f"tv needs images (C, H, W) as the operator domain, got {op.domain_shape}")
        if self.rule in ("discrepancy", "cv"):  # cv: the noise level only centres the grid
            problem = ensure_noise_level(problem, self.name)
        start = time.perf_counter()
        norm_a = op.norm(dtype=problem.y.dtype, device=problem.y.device)
        record = Reconstruction(problem.y.new_zeros(0), self.name)
        runs = {"fixed": 1, "cv": self.grid_size * (FOLDS + 1)}.get(self.rule, self.grid_size)
        with torch.no_grad(), tqdm(total=self.iterations * runs, desc="TV (PDHG)", disable=not progress,
                                   leave=False) as bar:
            if self.rule == "fixed":
                weights, table = self._fixed_weight(problem), list[dict]()
                x = self._pdhg(problem, weights, norm_a, None, record, bar)
            else:
                check_rule_inputs(problem, self.rule)
                x, weights, table = choose_weight(
                    lambda part, w, warm: self._pdhg(part, w, norm_a, warm, None, bar), problem,
                    self._grid_scale(problem, norm_a), np.logspace(-2, np.log10(30.0), self.grid_size).tolist(),
                    self.rule, self.tau)
        record.image = x
        record.params = {"weight": weights.tolist(), "rule": self.rule}
        record.iterations = self.iterations * runs
        record.stop_reason = (f"fixed budget of {self.iterations} PDHG iterations" +
                              ("" if runs == 1 else f" for each of {runs} weights (warm-started)"))
        record.wall_time = time.perf_counter() - start
        record.extras["weight_search"] = table
        return record
