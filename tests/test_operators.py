"""Every registered operator: defaults, adjoint identity, gradients, shapes, algebra."""

from __future__ import annotations

import math

import pytest
import scipy.fft
import torch

from invprior import registry
from invprior.core.operator import adjoint_mismatch
from invprior.errors import ConfigError, ShapeError
from invprior.operators.compressed_sensing import GaussianCS, SubsampledDCT
from invprior.operators.dct import dct, dct2, idct, idct2
from invprior.operators.denoising import Denoising
from invprior.operators.inpainting import Inpainting


def test_every_operator_builds_with_defaults(operator_name):
    op = registry.get("operators", operator_name)
    x = torch.rand(2, *op.domain_shape)
    y = op(x)
    assert tuple(y.shape) == (2, *op.range_shape)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("dtype, bound", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_adjoint_identity(small_operator, dtype, bound):
    if small_operator.is_linear:
        assert adjoint_mismatch(small_operator, dtype=dtype) < bound


def test_gradcheck(small_operator):
    x = torch.rand(1, *small_operator.domain_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small_operator, (x,), eps=1e-6, atol=1e-5)
    if small_operator.is_linear:
        y = torch.rand(1, *small_operator.range_shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(small_operator.adjoint, (y,), eps=1e-6, atol=1e-5)


def test_norm_matches_dense_singular_value(small_operator):
    if not small_operator.is_linear:
        with pytest.raises(TypeError, match="nonlinear"):
            small_operator.norm()
        return
    n = math.prod(small_operator.domain_shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *small_operator.domain_shape)
    dense = small_operator(basis).flatten(1).T
    expected = torch.linalg.matrix_norm(dense, ord=2).item()
    assert small_operator.norm() == pytest.approx(expected, rel=1e-5)


def test_wrong_shape_is_refused(small_operator):
    with pytest.raises(ShapeError, match="expects input x of shape"):
        small_operator(torch.rand(*small_operator.domain_shape))
    with pytest.raises(ShapeError, match="real floating-point"):
        small_operator(torch.ones(1, *small_operator.domain_shape, dtype=torch.int64))


def test_pseudo_inverse_is_a_left_inverse_on_the_range(small_operator):
    """A A^+ A x = A x (Moore-Penrose property); for CT's FBP only approximately, tested in test_ct; EIT's is a
    regularised linearisation, tested in test_eit."""
    if not small_operator.has_pseudo_inverse or hasattr(small_operator, "fbp") or not small_operator.is_linear:
        pytest.skip("no exact pseudo-inverse")
    x = torch.rand(2, *small_operator.domain_shape, dtype=torch.float64)
    ax = small_operator(x)
    assert torch.allclose(small_operator(small_operator.pseudo_inverse(ax)), ax, atol=1e-9)


def test_dct_matches_scipy_and_inverts():
    for n in (1, 2, 7, 16):
        x = torch.randn(3, n, dtype=torch.float64)
        assert torch.allclose(dct(x), torch.from_numpy(scipy.fft.dct(x.numpy(), norm="ortho")), atol=1e-12)
        assert torch.allclose(idct(dct(x)), x, atol=1e-12)
    img = torch.randn(2, 1, 6, 10, dtype=torch.float64)
    assert torch.allclose(dct2(img), torch.from_numpy(scipy.fft.dctn(img.numpy(), axes=(-2, -1), norm="ortho")),
                          atol=1e-12)
    assert torch.allclose(idct2(dct2(img)), img, atol=1e-12)


def test_gaussian_cs_statistics_and_seed():
    op = GaussianCS(size=16, ratio=0.5, seed=3)
    m, n = op.matrix.shape
    assert (m, n) == (128, 256)
    # entries N(0, 1/m): sample variance within 5 standard errors
    var = op.matrix.var().item() * m
    assert abs(var - 1.0) < 5 * math.sqrt(2 / (m * n))
    assert torch.equal(op.matrix, GaussianCS(size=16, ratio=0.5, seed=3).matrix)
    assert not torch.equal(op.matrix, GaussianCS(size=16, ratio=0.5, seed=4).matrix)


def test_subsampled_dct_rows_are_orthonormal_at_256():
    op = SubsampledDCT(size=256, ratio=0.1, seed=0)
    y = torch.randn(2, *op.range_shape, dtype=torch.float64)
    assert torch.allclose(op(op.adjoint(y)), y, atol=1e-10)
    assert adjoint_mismatch(op) < 1e-10


def test_inpainting_masks():
    box = Inpainting(size=10, box=(2, 3, 4, 5))
    assert box.range_shape == (1, 100 - 20)
    assert not box.mask[2:6, 3:8].any() and box.mask.sum() == 80
    rnd = Inpainting(size=20, missing_fraction=0.3, seed=1)
    assert rnd.range_shape == (1, 400 - 120)
    user = torch.zeros(4, 4, dtype=torch.bool)
    user[0, 1] = user[3, 2] = True
    op = Inpainting(size=4, mask=user, channels=3)
    x = torch.arange(48.0).view(1, 3, 4, 4)
    assert op(x).tolist() == [[[1.0, 14.0], [17.0, 30.0], [33.0, 46.0]]]
    with pytest.raises(ConfigError, match="only one of"):
        Inpainting(size=4, mask=user, box=(0, 0, 1, 1))
    with pytest.raises(ConfigError, match="does not fit"):
        Inpainting(size=4, box=(2, 2, 3, 3))
    with pytest.raises(ConfigError, match="mask has shape"):
        Inpainting(size=5, mask=user)


def test_algebra_matches_dense_matrices():
    a, b = GaussianCS(size=4, m=6, seed=0), GaussianCS(size=4, m=6, seed=1)
    ma, mb = a.matrix, b.matrix
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    v = x.flatten(1)
    assert torch.allclose((2.5 * a - b)(x), v @ (2.5 * ma - mb).T)
    composed = a @ Denoising(size=4)
    assert composed.is_linear and torch.allclose(composed(x), v @ ma.T)
    y = torch.randn(3, 6, dtype=torch.float64)
    assert torch.allclose((3 * a + b).adjoint(y).flatten(1), y @ (3 * ma + mb))
    assert torch.allclose(a.T(y).flatten(1), y @ ma)
    assert a.T.T is a
    assert adjoint_mismatch(2.0 * a @ Denoising(size=4) - b) < 1e-12
    with pytest.raises(ShapeError, match="cannot compose"):
        a @ a
    with pytest.raises(ShapeError, match="cannot add"):
        a + GaussianCS(size=4, m=5)


def test_scaled_pseudo_inverse():
    op = 2.0 * Inpainting(size=6, missing_fraction=0.2)
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    assert torch.allclose(op(op.pseudo_inverse(op(x))), op(x))


def test_operators_follow_input_dtype():
    for op in (GaussianCS(size=4), SubsampledDCT(size=8), Inpainting(size=8)):
        for dtype in (torch.float32, torch.float64):
            assert op(torch.rand(1, *op.domain_shape, dtype=dtype)).dtype == dtype


def test_bad_operator_parameters():
    with pytest.raises(ConfigError, match="ratio"):
        GaussianCS(ratio=1.5)
    with pytest.raises(ConfigError, match="either m"):
        SubsampledDCT(m=10, ratio=0.1)
    with pytest.raises(ConfigError, match="size"):
        Denoising(size=0)
    with pytest.raises(TypeError, match="nonlinear"):
        from invprior.core.operator import ForwardOperator

        class Square(ForwardOperator):
            def forward(self, x):
                return x**2

        Square((1, 2, 2), (1, 2, 2)).adjoint(torch.ones(1, 1, 2, 2))
