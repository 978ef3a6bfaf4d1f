"""OdlOperator: ODL's weighted adjoints turned Euclidean, channels, dtypes, autograd, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from invprior.core.operator import adjoint_mismatch
from invprior.errors import MissingExtraError

odl = pytest.importorskip("odl")
from invprior.operators.adapters.odl import OdlOperator  # noqa: E402

MATRIX = np.random.default_rng(0).standard_normal((4, 3))


def _randn(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_matrix_operator_matches_numpy_per_channel():
    op = OdlOperator(odl.MatrixOperator(MATRIX), channels=2)
    assert op.domain_shape == (2, 3) and op.range_shape == (2, 4)
    x, y = _randn((5, 2, 3), 0), _randn((5, 2, 4), 1)
    expected = np.einsum("ij,bcj->bci", MATRIX, x.numpy())
    np.testing.assert_allclose(op(x).numpy(), expected, rtol=1e-13, atol=1e-13)
    expected_adjoint = np.einsum("ji,bcj->bci", MATRIX, y.numpy())
    np.testing.assert_allclose(op.adjoint(y).numpy(), expected_adjoint, rtol=1e-13, atol=1e-13)
    assert adjoint_mismatch(op) < 1e-13


def test_weighted_spaces_give_the_euclidean_adjoint_of_a_ray_transform():
    pytest.importorskip("astra")
    from odl.applications import tomo

    space = odl.uniform_discr([-1, -1], [1, 1], (8, 8), dtype="float32")
    ray = tomo.RayTransform(space, tomo.parallel_beam_geometry(space, num_angles=6), impl="astra_cpu")
    op = OdlOperator(ray)
    dense = np.stack([np.asarray(ray(e).data).ravel() for e in np.eye(64, dtype=np.float32).reshape(64, 8, 8)], 1)
    y = _randn((2, *op.range_shape), 2)
    expected = (dense.T.astype(np.float64) @ y.reshape(2, -1).numpy().T).T.reshape(2, 1, 8, 8)
    np.testing.assert_allclose(op.adjoint(y).numpy(), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # ODL's own adjoint is for the weighted inner products and differs by w_Y / w_X != 1
    ratio = ray.range.weighting.const / space.weighting.const
    assert abs(ratio - 1) > 0.1
    odl_adjoint = np.asarray(ray.adjoint(y[0, 0].numpy().astype(np.float32)).data)
    np.testing.assert_allclose(odl_adjoint, ratio * expected[0, 0], rtol=1e-4, atol=1e-4 * np.abs(odl_adjoint).max())
    assert adjoint_mismatch(op, torch.float64) < 1e-6 and adjoint_mismatch(op, torch.float32) < 1e-4


def test_matrix_operator_between_differently_weighted_spaces():
    # odl.MatrixOperator's adjoint is the plain transpose whatever the weightings
    domain, range_ = odl.uniform_discr(0, 1, 3), odl.uniform_discr(-1, 3, 4)
    op = OdlOperator(odl.MatrixOperator(MATRIX, domain=domain, range=range_))
    y = _randn((2, 1, 4), 3)
    np.testing.assert_allclose(op.adjoint(y).numpy(), np.einsum("ji,bcj->bci", MATRIX, y.numpy()), rtol=1e-13)
    assert adjoint_mismatch(op) < 1e-13


def test_scaling_operator_on_weighted_discretized_space():
    space = odl.uniform_discr([0, 0], [2, 3], (3, 4))
    op = OdlOperator(odl.ScalingOperator(space, -1.5), channels=3)
    x = _randn((2, 3, 3, 4), 4)
    torch.testing.assert_close(op(x), -1.5 * x, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(op.adjoint(x), -1.5 * x, rtol=1e-14, atol=1e-14)


def test_dtype_follows_input_and_computation_follows_the_space():
    space32 = odl.uniform_discr(0, 1, 5, dtype="float32")
    op = OdlOperator(odl.ScalingOperator(space32, 1.0 / 3.0))
    x = _randn((2, 1, 5), 5)
    out = op(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x / 3, rtol=1e-6, atol=1e-6)
    assert (out - x / 3).abs().max() > 0  # computed in float32, returned in float64
    assert op(x.float()).dtype == torch.float32


def test_gradcheck_to_second_order():
    op = OdlOperator(odl.MatrixOperator(MATRIX), channels=2)
    x = _randn((2, 2, 3), 6).requires_grad_(True)
    y = _randn((1, 2, 4), 7).requires_grad_(True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))
    assert torch.autograd.gradgradcheck(op, (x,))


class _WrongAdjoint(odl.Operator):
    """``2 I`` claiming ``3 I`` as its adjoint."""

    def __init__(self, space):
        super().__init__(space, space, linear=True)

    def _call(self, x):
        return 2 * x

    @property
    def adjoint(self):
        return odl.ScalingOperator(self.domain, 3.0)


def test_errors():
    with pytest.raises(ValueError, match="not its adjoint"):
        OdlOperator(_WrongAdjoint(odl.rn(3)))
    with pytest.raises(ValueError, match="constant weighting"):
        OdlOperator(odl.ScalingOperator(odl.rn(3, weighting=np.array([1.0, 2.0, 3.0])), 2.0))
    with pytest.raises(ValueError, match="linear"):
        OdlOperator(odl.PowerOperator(odl.rn(3), 2))
    with pytest.raises(ValueError, match="real"):
        OdlOperator(odl.ScalingOperator(odl.cn(3), 2.0))
    with pytest.raises(TypeError, match="ProductSpace"):
        OdlOperator(odl.ScalingOperator(odl.ProductSpace(odl.rn(2), 2), 2.0))
    with pytest.raises(TypeError, match="odl.Operator"):
        OdlOperator(MATRIX)
    with pytest.raises(ValueError, match="channels"):
        OdlOperator(odl.MatrixOperator(MATRIX), channels=0)


def test_missing_odl_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "odl", None)
    with pytest.raises(MissingExtraError, match=r"invprior\[ct\]"):
        OdlOperator(object())
