"""Gauss-Newton reconstructions for EIT (any operator with a dense ``jacobian(x)``), in pixel space.

Each step solves ``(J^T J + lam R) d = J^T r - lam R x`` with ``r = y - A(x)``, ``J = A'(x)`` and
``R = D^T W D`` (``D`` forward differences; ``W = I`` for the smoothness prior, ``W = diag(1 /
sqrt((Dx)^2 + eps^2))`` for TV by lagged diffusivity), then backtracks on
``||r||^2 + lam P(x)`` (``P = ||Dx||^2`` or ``2 sum sqrt((Dx)^2 + eps^2)``). ``lam = weight tr(J^T J) /
tr(D^T D)`` at the start, so ``weight`` does not depend on the scale of the data. ``OneStepGN`` is the classical
linearised difference-imaging baseline: one step from the background, against a reference measurement when one is
given. Both
work in float64 on the CPU (dense Jacobian) and return the image on the problem's device and dtype.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior.core.interfaces import Method
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError
from invprior.methods.base import quality
from invprior.metrics import psnr
from invprior.validation import choice, positive_int, real

__all__ = ["PRIORS", "GaussNewton", "OneStepGN", "difference_matrix", "prior_weight", "smoothness_normal_matrix"]

PRIORS = ("smoothness", "tv")


def difference_matrix(size: int) -> sp.csr_matrix:
    """Forward differences of a ``size x size`` image along both axes, ``(2 n (n - 1), n^2)``."""
    step = sp.diags([-np.ones(size - 1), np.ones(size - 1)], [0, 1], shape=(size - 1, size))
    eye = sp.identity(size)
    return sp.vstack([sp.kron(step, eye), sp.kron(eye, step)]).tocsr()


def prior_weight(jacobian: np.ndarray, difference: sp.csr_matrix, weight: float) -> float:
    """``lam = weight tr(J^T J) / tr(D^T D)``, so that ``weight`` does not depend on the scale of the data."""
    return weight * float((jacobian * jacobian).sum()) / float(difference.multiply(difference).sum())


def smoothness_normal_matrix(jacobian: np.ndarray, weight: float) -> tuple[np.ndarray, float]:
    """``(J^T J + lam D^T D, lam)`` with ``lam = prior_weight(J, D, weight)``: the matrix of one Gauss-Newton
    step with the smoothness prior, for a Jacobian ``(K, n^2)`` of a square ``n x n`` image."""
    difference = difference_matrix(math.isqrt(jacobian.shape[1]))
    lam = prior_weight(jacobian, difference, weight)
    return jacobian.T @ jacobian + lam * (difference.T @ difference).toarray(), lam


class GaussNewton(Method):
    """Regularised Gauss-Newton from the background image (absolute imaging); see the module docstring.

    Stops after ``iterations`` steps, when a step changes ``x`` by less than ``tol`` relative, or when
    backtracking finds no decrease.
    """

    name = "gauss_newton"

    def __init__(self, weight: float = 3e-2, prior: str = "smoothness", iterations: int = 10,
                 tv_epsilon: float = 1e-2, tol: float = 1e-4, start: float | None = None) -> None:
        self.weight = real(weight, f"{self.name}: weight", minimum=0.0, strict=True)
        choice(prior, PRIORS, f"{self.name}: prior")
        self.prior = prior
        self.iterations = positive_int(iterations, f"{self.name}: iterations")
        self.tv_epsilon = real(tv_epsilon, f"{self.name}: tv_epsilon", minimum=0.0, strict=True)
        self.tol = real(tol, f"{self.name}: tol", minimum=0.0)
        self.start = start

    def _check(self, problem: InverseProblem) -> Callable[[Tensor], Tensor]:
        """The operator's dense ``jacobian(x)``, once the problem is known to have one and a single measurement."""
        jacobian: Callable[[Tensor], Tensor] | None = getattr(problem.operator, "jacobian", None)
        if jacobian is None:
            raise ConfigError(f"{self.name} needs an operator with a dense jacobian(x) (e.g. 'eit'); "
                              f"{problem.operator.name} has none")
        if problem.batch_size != 1:
            raise ConfigError(f"{self.name}: reconstruct one measurement at a time (problem.select(b))")
        return jacobian

    def _background(self, problem: InverseProblem) -> Tensor:
        """The starting image: ``start`` if given, else the operator's background in its parametrisation."""
        operator = problem.operator
        value = self.start
        if value is None:
            value = 0.0 if getattr(operator, "parametrization", "identity") != "identity" else \
                float(getattr(operator, "background", 1.0))
        return torch.full((1, *operator.domain_shape), float(value), dtype=torch.float64)

    def _penalty(self, x: np.ndarray, difference: sp.csr_matrix, gram: sp.csr_matrix) -> tuple[float, sp.spmatrix]:
        """``(P(x), R)``: the prior's value and its Gauss-Newton matrix at ``x`` (``gram = D^T D``, formed once)."""
        dx = difference @ x
        if self.prior == "smoothness":
            return float(dx @ dx), gram
        magnitude = np.sqrt(dx * dx + self.tv_epsilon ** 2)
        return float(2 * magnitude.sum()), difference.T @ sp.diags(1.0 / magnitude) @ difference

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        start = time.perf_counter()
        jacobian = self._check(problem)
        operator, y = problem.operator, problem.y.detach().to("cpu", torch.float64)
        x = self._background(problem)
        difference = difference_matrix(operator.domain_shape[-1])
        gram = (difference.T @ difference).tocsr()
        trace: dict[str, list[float]] = {"iteration": [], "objective": [], "residual": []}
        lam: float | None = None
        reason, steps = f"{self.iterations} iterations", 0
        for step in tqdm(range(self.iterations), desc=self.name, disable=not progress, leave=False):
            residual = (y - operator(x)).ravel().numpy()
            jac = jacobian(x).numpy()
            flat = x.ravel().numpy()
            value, reg = self._penalty(flat, difference, gram)
            if lam is None:
                lam = prior_weight(jac, difference, self.weight)
            objective = float(residual @ residual) + lam * value
            self._log(trace, step, objective, float(np.linalg.norm(residual)), x, problem)
            update = np.linalg.solve(jac.T @ jac + lam * reg.toarray(), jac.T @ residual - lam * (reg @ flat))
            accepted = self._line_search(operator, y, flat, update, objective, lam, difference, gram)
            if accepted is None:
                reason = f"no decrease along the Gauss-Newton step at iteration {step + 1}"
                break
            x, steps = torch.from_numpy(accepted).view_as(x), step + 1
            if np.linalg.norm(accepted - flat) <= self.tol * max(float(np.linalg.norm(flat)), 1e-12):
                reason = f"relative step below tol = {self.tol:g}"
                break
        assert lam is not None  # set in the first step; iterations >= 1
        residual = (y - operator(x)).ravel().numpy()
        objective = float(residual @ residual) + lam * self._penalty(x.ravel().numpy(), difference, gram)[0]
        self._log(trace, steps, objective, float(np.linalg.norm(residual)), x, problem)
        return Reconstruction(x.to(problem.y), self.name, params={"weight": self.weight, "lambda": lam,
                                                                         "prior": self.prior},
                              trace=trace, iterations=steps, stop_reason=reason,
                              wall_time=time.perf_counter() - start)

    def _line_search(self, operator, y: Tensor, flat: np.ndarray, update: np.ndarray, objective: float, lam: float,
                     difference: sp.csr_matrix, gram: sp.csr_matrix) -> np.ndarray | None:
        """The first of ``x + 2^-k d`` (k = 0..10) that lowers the objective (non-positive conductivities count as
        no decrease), or ``None``."""
        for k in range(11):
            candidate = flat + 0.5 ** k * update
            try:
                residual = (y - operator(torch.from_numpy(candidate).view(1, *operator.domain_shape))).ravel().numpy()
            except ConfigError:  # the step left the positive conductivities
                continue
            if float(residual @ residual) + lam * self._penalty(candidate, difference, gram)[0] < objective:
                return candidate
        return None

    @staticmethod
    def _log(trace: dict[str, list[float]], step: int, objective: float, residual: float, x: Tensor,
             problem: InverseProblem) -> None:
        """Trace one iterate from the residual already computed (no extra forward solve)."""
        trace["iteration"].append(step)
        trace["objective"].append(objective)
        trace["residual"].append(residual)
        if problem.x_true is not None:
            trace.setdefault("psnr", []).append(float(psnr(x.to(problem.x_true), problem.x_true).mean()))


class OneStepGN(GaussNewton):
    """One regularised Gauss-Newton step from the background (the linearised difference-imaging
    baseline): ``x = x0 + (J^T J + lam R)^-1 J^T (y - y_ref)`` with ``y_ref = reference`` when given (a
    measurement of the background object), else ``A(x0)``."""

    name = "one_step_gn"

    def __init__(self, weight: float = 3e-2, prior: str = "smoothness", reference: Tensor | None = None) -> None:
        if prior == "tv":
            raise ConfigError(f"{self.name}: at the constant start the TV prior's Gauss-Newton matrix is the "
                              "smoothness prior's divided by tv_epsilon; use prior='smoothness' "
                              "(TV needs 'gauss_newton')")
        super().__init__(weight=weight, prior=prior, iterations=1)
        self.reference = reference

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        start = time.perf_counter()
        jacobian = self._check(problem)
        operator = problem.operator
        x0 = self._background(problem)
        y = problem.y.detach().to("cpu", torch.float64)
        reference = operator(x0) if self.reference is None else torch.as_tensor(self.reference, dtype=torch.float64)
        if reference.shape[-2:] != y.shape[-2:]:
            raise ConfigError(f"{self.name}: the reference has shape {tuple(reference.shape)}, "
                              f"the data {tuple(y.shape)}")
        jac = jacobian(x0).numpy()
        matrix, lam = smoothness_normal_matrix(jac, self.weight)
        change = np.linalg.solve(matrix, jac.T @ (y - reference).ravel().numpy())
        x = (x0.ravel() + torch.from_numpy(change)).view_as(x0)
        if not math.isfinite(float(x.abs().max())):
            raise ConfigError(f"{self.name}: the step is not finite (raise weight)")
        image = x.to(problem.y)
        trace: dict[str, list[float]] = {"iteration": [1], **{k: [v] for k, v in quality(image, problem).items()}}
        return Reconstruction(image, self.name, params={"weight": self.weight, "lambda": lam, "prior": self.prior},
                              trace=trace, iterations=1, stop_reason="one step",
                              wall_time=time.perf_counter() - start)
