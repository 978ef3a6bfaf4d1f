"""Batched conjugate gradients against a dense solve."""

from __future__ import annotations

import pytest
import torch

from invprior.linalg import conjugate_gradient


def _spd_batch(n: int, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    return q @ q.transpose(1, 2) + n * torch.eye(n, dtype=torch.float64)


def test_cg_solves_each_image_system():
    mats = _spd_batch(20, 3, 0)
    b = torch.randn(3, 1, 4, 5, dtype=torch.float64)

    def apply(v):
        return (mats @ v.flatten(1).unsqueeze(-1)).view_as(v)

    x, info = conjugate_gradient(apply, b, rtol=1e-10, max_iterations=100)
    expected = torch.linalg.solve(mats, b.flatten(1).unsqueeze(-1)).view_as(b)
    assert torch.allclose(x, expected, atol=1e-8)
    assert bool(info.converged.all()) and info.iterations <= 21


def test_cg_reports_non_convergence():
    mats = _spd_batch(50, 2, 1)
    b = torch.randn(2, 50, dtype=torch.float64)
    _, info = conjugate_gradient(lambda v: (mats @ v.unsqueeze(-1)).squeeze(-1), b, max_iterations=2, rtol=1e-12)
    assert info.iterations == 2
    assert not bool(info.converged.any()) and bool((info.relative_residual > 1e-12).all())


def test_cg_accumulates_a_companion_map_of_the_solution():
    # L x from the products CG makes anyway equals L applied to the returned x, also for an image that
    # converges earlier than the other (its updates stop) and with a preconditioner
    mats = _spd_batch(30, 2, 2)
    companion = torch.randn(2, 7, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    b = torch.randn(2, 30, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    b[1] *= 1e-3
    apply = lambda v: ((mats @ v.unsqueeze(-1)).squeeze(-1), (companion @ v.unsqueeze(-1)).squeeze(-1))  # noqa: E731
    diagonal = torch.diagonal(mats, dim1=1, dim2=2)
    x, info = conjugate_gradient(apply, b, rtol=1e-6, max_iterations=100, preconditioner=lambda r: r / diagonal,
                                 companion=True)
    assert bool(info.converged.all())
    direct = (companion @ x.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(info.companion, direct, rtol=1e-12, atol=1e-12 * direct.abs().max().item())
    zero, info = conjugate_gradient(apply, torch.zeros_like(b), companion=True)
    assert info.iterations == 0 and bool((info.companion == 0).all()) and info.companion.shape == (2, 7)
    with pytest.raises(ValueError, match="x0 = 0"):
        conjugate_gradient(apply, b, x0=x, companion=True)
