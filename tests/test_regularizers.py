"""Total variation: analytic values, adjoint of the difference operator, gradients."""

from __future__ import annotations

import pytest
import torch

from invprior import registry
from invprior.errors import ConfigError, ShapeError
from invprior.regularizers.tv import AnisotropicTV, IsotropicTV, divergence, gradient


def test_tv_of_a_vertical_step_is_its_length():
    x = torch.zeros(1, 1, 12, 9, dtype=torch.float64)
    x[:, :, :, 4:] = 2.5
    assert AnisotropicTV()(x).item() == pytest.approx(2.5 * 12)
    assert IsotropicTV(eps=1e-9)(x).item() == pytest.approx(2.5 * 12, rel=1e-6)


def test_isotropic_tv_of_a_diagonal_ramp():
    i, j = torch.meshgrid(torch.arange(10.0), torch.arange(10.0), indexing="ij")
    x = (0.3 * i + 0.4 * j).view(1, 1, 10, 10).double()
    # interior pixels: |grad| = 0.5; last row: only d_W = 0.4; last column: only d_H = 0.3
    expected = 9 * 9 * 0.5 + 9 * 0.4 + 9 * 0.3
    assert IsotropicTV(eps=1e-9)(x).item() == pytest.approx(expected, rel=1e-6)
    assert AnisotropicTV()(x).item() == pytest.approx(9 * 10 * 0.3 + 9 * 10 * 0.4)


def test_divergence_is_negative_adjoint_of_gradient():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 5, generator=gen, dtype=torch.float64)
    p = torch.randn(2, 2, 3, 7, 5, generator=gen, dtype=torch.float64)
    assert (gradient(x) * p).sum().item() == pytest.approx(-(x * divergence(p)).sum().item(), rel=1e-12)


def test_isotropic_tv_gradcheck_and_registry():
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: IsotropicTV(eps=0.1)(v), (x,))
    assert registry.get("regularizers", "none")(x).tolist() == [0.0]
    assert registry.get("regularizers", "tv_anisotropic")(x).shape == (1,)


def test_bad_tv_input():
    with pytest.raises(ShapeError, match=r"\(B, C, H, W\)"):
        AnisotropicTV()(torch.zeros(4, 4))
    with pytest.raises(ConfigError, match="eps"):
        IsotropicTV(eps=0.0)
