"""Classical baselines on any linear operator: pseudo-inverse/FBP, Tikhonov by CG, TV by PDHG."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior.core.operator import ForwardOperator
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError
from invprior.linalg import conjugate_gradient
from invprior.methods.base import Method, quality
from invprior.methods.weight_choice import check_weight, choose_weight
from invprior.regularizers.tv import divergence, gradient


def _require_linear(operator: ForwardOperator, method: str) -> None:
    if not operator.is_linear:
        raise ConfigError(f"{method} needs a linear operator; {operator.name} is nonlinear")


def _positive_int(value: int, name: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


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


class Tikhonov(Method):
    """``x = argmin ||A x - y||^2 + alpha ||L x||^2``, i.e. ``(A^T A + alpha L^T L) x = A^T y``, by batched CG.

    ``penalty`` chooses ``L``: ``"gradient"`` (finite differences, a smoothness prior; the default,
    it fills in unobserved pixels) or ``"identity"`` (classic ridge). ``weight`` is ``alpha``: a
    number, ``"discrepancy"`` (largest alpha on a log grid of ``grid_size`` values in
    ``||A||^2 [1e-6, 10]`` with residual <= tau * delta) or ``"oracle"`` (best PSNR; benchmarks only).
    """

    name = "tikhonov"
    PENALTIES = ("gradient", "identity")

    def __init__(self, weight: float | str = "discrepancy", penalty: str = "gradient", tau: float = 1.1,
                 grid_size: int = 15, max_iterations: int = 300, rtol: float = 1e-6) -> None:
        if penalty not in self.PENALTIES:
            raise ConfigError(f"tikhonov: penalty must be one of {self.PENALTIES}, got {penalty!r}")
        self.penalty = penalty
        self.weight = check_weight(weight, self.name)
        self.tau, self.rtol = float(tau), float(rtol)
        self.grid_size = _positive_int(grid_size, "grid_size")
        self.max_iterations = _positive_int(max_iterations, "max_iterations")

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        op = problem.operator
        _require_linear(op, self.name)
        start = time.perf_counter()
        if self.penalty == "gradient" and len(op.domain_shape) != 3:
            raise ConfigError(f"tikhonov: penalty 'gradient' needs images (C, H, W), got {op.domain_shape}")
        rhs = op.adjoint(problem.y)
        not_converged: list[float] = []
        gram_penalty = (lambda v: -divergence(gradient(v))) if self.penalty == "gradient" else (lambda v: v)

        def solve(alpha: float, warm: Tensor | None) -> Tensor:
            x, info = conjugate_gradient(lambda v: op.adjoint(op(v)) + alpha * gram_penalty(v), rhs, warm,
                                         self.max_iterations, self.rtol)
            if not bool(info.converged.all()):
                not_converged.append(alpha)
            return x

        with torch.no_grad():
            if isinstance(self.weight, float):
                x, weights, table = solve(self.weight, None), torch.full((problem.batch_size,), self.weight), []
            else:
                grid = (op.norm(device=problem.y.device) ** 2 * np.logspace(-6, 1, self.grid_size)).tolist()
                x, weights, table = choose_weight(solve, problem, grid, self.weight, self.tau)
        reason = "solved to rtol" if not not_converged else f"CG did not reach rtol for alpha in {not_converged}"
        return Reconstruction(x, self.name, params={"weight": weights.tolist(), "rule": self.weight if not isinstance(self.weight, float) else "fixed",
                                      "penalty": self.penalty},
                              stop_reason=reason, wall_time=time.perf_counter() - start,
                              extras={"weight_search": table})


class TVLeastSquares(Method):
    """``x = argmin 1/2 ||A x - y||^2 + lambda TV(x)`` (optionally ``x >= 0``) by PDHG (Chambolle-Pock).

    The operator is split as ``K = (A, c grad)`` with ``c = ||A|| / sqrt(8)`` so both blocks have
    the same scale; step sizes ``tau = sigma = 0.99 / (sqrt(2) ||A||)``. ``weight`` is ``lambda``:
    a number, ``"discrepancy"`` (grid ``||A|| s [1e-2, 30]``, ``s`` the noise std) or ``"oracle"``.
    """

    name = "tv"

    def __init__(self, weight: float | str = "discrepancy", tau: float = 1.1, grid_size: int = 9,
                 iterations: int = 500, isotropic: bool = False, nonnegative: bool = True,
                 log_every: int = 10) -> None:
        self.weight = check_weight(weight, self.name)
        self.tau = float(tau)
        self.grid_size = _positive_int(grid_size, "grid_size")
        self.iterations = _positive_int(iterations, "iterations")
        self.log_every = _positive_int(log_every, "log_every")
        self.isotropic, self.nonnegative = bool(isotropic), bool(nonnegative)

    def _project_dual(self, p: Tensor, bound: float) -> Tensor:
        if not self.isotropic:
            return p.clamp(-bound, bound)
        magnitude = p.pow(2).sum(dim=1, keepdim=True).sqrt()
        return p / (magnitude / bound).clamp_min(1.0)

    def _pdhg(self, problem: InverseProblem, weight: float, norm_a: float, x0: Tensor | None,
              record: Reconstruction | None, bar: tqdm) -> Tensor:
        op, y = problem.operator, problem.y
        c = norm_a / 8 ** 0.5
        step = 0.99 / (2 ** 0.5 * norm_a)
        x = torch.zeros((problem.batch_size, *op.domain_shape), dtype=y.dtype, device=y.device) if x0 is None else x0
        x_bar, q, p = x.clone(), torch.zeros_like(y), torch.zeros_like(gradient(x))
        for k in range(1, self.iterations + 1):
            q = (q + step * (op(x_bar) - y)) / (1 + step)
            p = self._project_dual(p + step * c * gradient(x_bar), weight / c)
            x_new = x - step * (op.adjoint(q) - c * divergence(p))
            if self.nonnegative:
                x_new = x_new.clamp_min(0.0)
            x_bar, x = 2 * x_new - x, x_new
            if record is not None and (k % self.log_every == 0 or k == self.iterations):
                record.log(iteration=k, **quality(x, problem))
            bar.update(1)
        return x

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        op = problem.operator
        _require_linear(op, self.name)
        if len(op.domain_shape) != 3:
            raise ConfigError(f"tv needs images (C, H, W) as the operator domain, got {op.domain_shape}")
        start = time.perf_counter()
        norm_a = op.norm(device=problem.y.device)
        fixed = isinstance(self.weight, float)
        record = Reconstruction(problem.y.new_zeros(0), self.name)
        total = self.iterations * (1 if fixed else self.grid_size)
        with torch.no_grad(), tqdm(total=total, desc="TV (PDHG)", disable=not progress, leave=False) as bar:
            if fixed:
                x = self._pdhg(problem, self.weight, norm_a, None, record, bar)
                weights, table = torch.full((problem.batch_size,), self.weight), []
            else:
                if problem.noise_norm is None:
                    raise ConfigError("tv: choosing the weight needs the noise level (noise_std or noise_norm)")
                noise_std = float(problem.noise_norm.mean()) / problem.y[0].numel() ** 0.5
                scale = norm_a * noise_std
                grid = (scale * np.logspace(-2, np.log10(30.0), self.grid_size)).tolist()
                x, weights, table = choose_weight(
                    lambda w, warm: self._pdhg(problem, w, norm_a, warm, None, bar), problem, grid, self.weight, self.tau)
        record.image = x
        record.params = {"weight": weights.tolist(), "rule": self.weight if not fixed else "fixed"}
        record.iterations = self.iterations
        record.stop_reason = f"fixed budget of {self.iterations} PDHG iterations per weight"
        record.wall_time = time.perf_counter() - start
        record.extras["weight_search"] = table
        return record
