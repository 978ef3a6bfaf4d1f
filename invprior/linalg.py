"""Batched conjugate gradients for symmetric positive definite systems, one system per image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CGInfo:
    """Outcome per image: iterations used, final relative residual ``||b - M x|| / ||b||``, converged."""

    iterations: int
    relative_residual: Tensor
    converged: Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(dim=1)


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None,
                       max_iterations: int = 200, rtol: float = 1e-6) -> tuple[Tensor, CGInfo]:
    """Solve ``M x = b`` for every image of the batch, ``M`` symmetric positive definite.

    Stops when every image reaches ``||b - M x|| <= rtol ||b||`` or after ``max_iterations``;
    the returned :class:`CGInfo` says which images converged (non-convergence is never silent).
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    b_norm = b.flatten(1).norm(dim=1).clamp_min(torch.finfo(b.dtype).tiny)
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        if bool((rr.sqrt() <= rtol * b_norm).all()):
            iterations -= 1
            break
        mp = apply(p)
        alpha = rr / _dot(p, mp).clamp_min(torch.finfo(b.dtype).tiny)
        active = rr.sqrt() > rtol * b_norm
        alpha = torch.where(active, alpha, torch.zeros_like(alpha))
        x = x + _per_image(alpha, x) * p
        r = r - _per_image(alpha, r) * mp
        rr_new = _dot(r, r)
        beta = rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny)
        p = r + _per_image(beta, p) * p
        rr = rr_new
    relative = rr.sqrt() / b_norm
    return x, CGInfo(iterations, relative, relative <= rtol)
