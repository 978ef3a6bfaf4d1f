"""A pool of candidate measurements: the rows of one full measurement (CT: its projection angles).

Candidate ``j`` is row ``j`` of ``problem.y`` along the operator's row axis (``row_axis``: the first after the
channel, or the only one); acquiring it reads that row (simulated beforehand, or measured: a real scan of every
candidate angle), and a design is solved on ``problem.operator.rows(design)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from invprior.core.operator import row_axis
from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError, ShapeError


@dataclass(frozen=True)
class CandidatePool:
    """The full ``problem`` (one image, every candidate measured) and ``labels``, one value per candidate for
    figures (CT: the angle in radians; default: the candidate's index)."""

    problem: InverseProblem
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        problem = self.problem
        if problem.batch_size != 1:
            raise ShapeError(f"design: the candidate pool holds one image, got a batch of {problem.batch_size}")
        size = self.size
        labels = torch.arange(size, dtype=torch.float64) if self.labels is None else self.labels
        if tuple(labels.shape) != (size,):
            raise ShapeError(f"design: one label per candidate ({size}), got shape {tuple(labels.shape)}")
        object.__setattr__(self, "labels", labels.double().cpu())

    @classmethod
    def from_problem(cls, problem: InverseProblem) -> CandidatePool:
        """The rows of ``problem``; CT problems are labelled by their angles (the operator's ``layout``)."""
        return cls(problem, problem.operator.layout().get("angles"))

    @property
    def size(self) -> int:
        """The number of candidates ``M``."""
        shape = self.problem.operator.range_shape
        return shape[row_axis(shape)]

    def noise_std(self) -> float:
        """The noise std per entry: the problem's, else its noise norm over ``sqrt(m)``; ``ConfigError`` without
        either."""
        problem = self.problem
        if isinstance(problem.noise_std, Tensor):
            return float(problem.noise_std[0])
        if isinstance(problem.noise_norm, Tensor):
            return float(problem.noise_norm[0]) / math.sqrt(problem.y[0].numel())
        raise ConfigError("design: the candidate pool's problem has no noise level (noise_std or noise_norm)")

    def subproblem(self, design: Sequence[int]) -> InverseProblem:
        """The problem of the candidates ``design`` (in increasing order): their rows of ``y`` on
        ``operator.rows(design)``, with the pool's noise std, ground truth, reference and constraints."""
        rows = sorted(int(k) for k in design)
        if len(set(rows)) != len(rows):
            raise ConfigError(f"design: a candidate appears twice in {list(design)}")
        problem = self.problem
        operator = problem.operator.rows(rows)
        index = torch.tensor(rows, device=problem.y.device)
        noise_std = problem.noise_std
        if noise_std is None and isinstance(problem.noise_norm, Tensor):
            noise_std = self.noise_std()
        metadata = {**problem.metadata, "design": rows}
        y = problem.y.index_select(row_axis(problem.operator.range_shape) + 1, index)
        return InverseProblem(operator, y, noise_std=noise_std,
                              x_true=problem.x_true, metadata=metadata, reference=problem.reference,
                              constraints=problem.constraints, task=problem.task)

    def project(self, images: Tensor, around: Tensor) -> Tensor:
        """Every candidate's measurement of ``images`` ``(r, 1, *image)`` under the operator linearised at
        ``around`` ``(1, *image)``: ``(r, M, d)``."""
        operator = self.problem.operator.linearized(around.to(self.problem.y))
        measured = operator(images.to(self.problem.y))
        axis = row_axis(operator.range_shape) + 1
        return measured.movedim(axis, 1).reshape(images.shape[0], self.size, -1)


def equidistant(size: int, count: int) -> tuple[int, ...]:
    """``count`` of ``size`` candidates spread evenly: ``floor((k + 1/2) size / count)``, ``k = 0..count-1``."""
    if not 1 <= count <= size:
        raise ConfigError(f"design: cannot spread {count} measurements over {size} candidates")
    return tuple(int((k + 0.5) * size / count) for k in range(count))
