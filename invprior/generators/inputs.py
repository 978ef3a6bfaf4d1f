"""Network inputs for generators: seeded noise, or an image computed from the measurement."""

from __future__ import annotations

import torch
from torch import Tensor

from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError
from invprior.validation import choice

INPUT_KINDS = ("noise", "pseudo_inverse", "fbp", "adjoint")


def check_input_kind(kind: str) -> str:
    choice(kind, INPUT_KINDS, "input")
    return kind


def seeded_noise(shape: tuple[int, ...], scale: float, seed: int, like: Tensor) -> Tensor:
    """``scale * N(0, I)`` of ``shape``, drawn on the CPU from ``seed`` (identical on every device)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device=like.device, dtype=like.dtype)


def operator_image(problem: InverseProblem, kind: str) -> Tensor:
    """An image from ``y``: ``A^+ y`` (FBP for CT) or ``A^T y / ||A||^2`` (one scaled Landweber step)."""
    op = problem.operator
    with torch.no_grad():
        if kind in ("pseudo_inverse", "fbp"):
            if not op.has_pseudo_inverse:
                raise ConfigError(f"input '{kind}' needs an operator with a pseudo-inverse; {op.name} has none")
            return op.pseudo_inverse(problem.y)
        if not op.is_linear:
            raise ConfigError(f"input 'adjoint' needs a linear operator; {op.name} is nonlinear")
        return op.adjoint(problem.y) / op.norm(device=problem.y.device) ** 2
