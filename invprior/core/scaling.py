"""The data scale: one number per measurement that carries its units, so that methods can work in
normalised units and answer in the user's.

``s(c y) = c s(y)`` for every ``c > 0``: a method that fits ``y / s`` and returns ``s x`` gives the
same image, up to that scale, whether the data come in 1/mm, 1/m or normalised.
"""

from __future__ import annotations

import torch
from torch import Tensor

from invprior.core.problem import InverseProblem

__all__ = ["data_scale", "SCALE_QUANTILE"]

#: The quantile of ``|A^+ y|`` taken as the image's scale (a robust maximum).
SCALE_QUANTILE = 0.99


@torch.no_grad()
def data_scale(problem: InverseProblem) -> Tensor:
    """Per image ``(B,)``: the ``SCALE_QUANTILE`` quantile of ``|A^+ y|`` when the operator has a
    pseudo-inverse (so images of order one keep ``s`` near 1), else ``||y|| / ||A 1||`` (the rms size of
    a constant image that explains ``y``); 1 for nonlinear operators, whose scale the model fixes.
    Never 0: an all-zero measurement gets 1.
    """
    op, y = problem.operator, problem.y
    batch = problem.batch_size
    if not op.is_linear:
        return torch.ones(batch, dtype=torch.float64)
    if op.has_pseudo_inverse:
        image = op.pseudo_inverse(y).abs().flatten(1).double().cpu()
        scale = torch.quantile(image, SCALE_QUANTILE, dim=1)
    else:
        ones = torch.ones((1, *op.domain_shape), dtype=y.dtype, device=y.device)
        scale = (y.flatten(1).norm(dim=1) / op(ones).flatten().norm()).double().cpu()
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
