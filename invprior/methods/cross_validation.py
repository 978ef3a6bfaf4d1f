"""Held-out cross-validation of a regularisation weight: each measurement entry is predicted by fits that
never saw it.

The entries of ``y`` are dealt into ``folds`` disjoint folds at random (seeded). For fold ``k`` the method is
fitted to the other entries only (``A_k x = M_k A x``, ``y_k = M_k y`` with ``M_k`` zero on the fold), and a
weight ``w`` scores ``CV(w) = sum_k ||(I - M_k)(A x_k(w) - y)||^2``, the squared error of predicting every
held-out entry. No noise level is needed; the noise is assumed independent between entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError, NonlinearOperatorError, ShapeError
from invprior.validation import positive_int

__all__ = ["MaskedOperator", "fold_labels", "training_problem", "held_out_errors", "FOLDS"]

#: The number of folds of the built-in cross-validation rule.
FOLDS = 5


class MaskedOperator(ForwardOperator):
    """``A_M x = M * A x``: a linear operator with the measurement entries outside ``mask`` set to zero
    (``mask`` has the range's shape, 1 = kept). ``A_M^T y = A^T (M * y)``, ``||A_M|| <= ||A||``."""

    is_linear = True

    def __init__(self, operator: ForwardOperator, mask: Tensor) -> None:
        if not operator.is_linear:
            raise NonlinearOperatorError(f"MaskedOperator needs a linear operator, got the nonlinear {operator.name}")
        if tuple(mask.shape) != operator.range_shape:
            raise ShapeError(f"{type(self).__name__}: mask shape {tuple(mask.shape)} is not the range shape "
                             f"{operator.range_shape} of {operator.name}")
        super().__init__(operator.domain_shape, operator.range_shape)
        self.operator, self.mask = operator, mask

    @property
    def name(self) -> str:
        return f"{self.operator.name} (masked)"

    def forward(self, x: Tensor) -> Tensor:
        return self.operator(x) * self._cast("mask", self.mask, x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.operator.adjoint(y * self._cast("mask", self.mask, y))


def fold_labels(shape: Sequence[int], folds: int, seed: int = 0) -> Tensor:
    """Integer labels ``0..folds-1`` of shape ``shape``: a seeded random deal, fold sizes differing by at most 1."""
    folds = positive_int(folds, "cross-validation: folds")
    count = 1
    for s in shape:
        count *= int(s)
    if folds < 2 or folds > count:
        raise ConfigError(f"cross-validation needs 2 <= folds <= {count} (the measurement entries), got {folds}")
    order = torch.randperm(count, generator=torch.Generator(device="cpu").manual_seed(int(seed)))
    labels = torch.empty(count, dtype=torch.long)
    labels[order] = torch.arange(count) % folds
    return labels.view(*shape)


def training_problem(problem: InverseProblem, keep: Tensor) -> InverseProblem:
    """``problem`` restricted to the entries where ``keep`` (range-shaped, 1 = kept) is 1: masked operator
    and data, the noise std and constraints kept, the noise norm scaled to the kept entries and no ground
    truth. The held-out entries of ``y`` do not enter it."""
    keep = keep.to(problem.y)
    fraction = float(keep.sum()) / keep.numel()
    noise_norm = None if problem.noise_norm is None else problem.noise_norm * fraction ** 0.5
    return InverseProblem(MaskedOperator(problem.operator, keep), problem.y * keep, noise_std=problem.noise_std,
                          noise_norm=noise_norm, constraints=problem.constraints)


def held_out_errors(solve: Callable[[InverseProblem, Tensor, Tensor | None], Tensor], problem: InverseProblem,
                    weights: Sequence[Tensor], folds: int = FOLDS, seed: int = 0) -> Tensor:
    """``CV(w)`` per weight and image, shape ``(len(weights), B)``.

    ``weights`` are per-image weight tensors ``(B,)`` in ascending order, meant for the full data;
    ``solve(problem, weight, warm)`` fits one problem (warm-started from ``warm``, the previous weight's fit).
    The score is only as good as the fold fits' convergence: where the held-out entries leave unknowns that
    only the penalty reaches (held-out pixels in denoising or inpainting), an iterative solver that stops
    early leaves them near its start at small weights, so ``solve`` should start cold fits from a fill of
    the fold's own data (TV does: ``smooth_fill``), not from zero. For operators without redundancy between
    entries (denoising) the score measures how well neighbours predict a pixel, which is not how well the
    weight denoises it: there it can miss the best weight in either direction. A fold's fit
    uses ``weight * (kept entries / all entries)``, the same balance of data and penalty as on the full data
    for a penalty added to ``1/2 ||A x - y||^2``.
    """
    labels = fold_labels(problem.operator.range_shape, folds, seed).to(problem.y.device)
    errors = torch.zeros((len(weights), problem.batch_size), dtype=torch.float64)
    for fold in range(folds):
        held_out = labels == fold
        part = training_problem(problem, (~held_out).to(problem.y.dtype))
        fraction = 1.0 - float(held_out.sum()) / held_out.numel()
        x = None
        for index, weight in enumerate(weights):
            x = solve(part, weight * fraction, x)
            miss = (problem.operator(x) - problem.y) * held_out.to(problem.y.dtype)
            errors[index] += miss.flatten(1).pow(2).sum(dim=1).detach().cpu().double()
    return errors
