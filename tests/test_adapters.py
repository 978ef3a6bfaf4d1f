"""Adapters to deepinv and pylops: values against independent formulas, adjoints, gradients, errors."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from invprior.core.operator import ForwardOperator, adjoint_mismatch
from invprior.errors import MissingExtraError, ShapeError


class DenseImageOperator(ForwardOperator):
    """``A(x) = M vec(x)`` for a fixed seeded Gaussian matrix M, on (1, 4, 4) images."""

    is_linear = True

    def __init__(self, rows: int = 10, seed: int = 0) -> None:
        super().__init__((1, 4, 4), (rows,))
        gen = torch.Generator().manual_seed(seed)
        self.matrix = torch.randn(rows, 16, generator=gen, dtype=torch.float64)

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self._cast("M", self.matrix, x).T

    def _adjoint(self, y):
        return (y @ self._cast("M", self.matrix, y)).reshape(y.shape[0], *self.domain_shape)


class WrongAdjointOperator(DenseImageOperator):
    """Same forward map, but an adjoint that uses another matrix."""

    def _adjoint(self, y):
        other = torch.randn(self.matrix.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
        return (y @ self._cast("other", other, y)).reshape(y.shape[0], *self.domain_shape)


class TanhOperator(ForwardOperator):
    """The nonlinear map ``x -> tanh(x)`` on (1, 4, 4) images."""

    def __init__(self) -> None:
        super().__init__((1, 4, 4), (1, 4, 4))

    def forward(self, x):
        return torch.tanh(x)


def _randn(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------- deepinv
@pytest.fixture(scope="module")
def dinv():
    return pytest.importorskip("deepinv")


@pytest.fixture(scope="module")
def adapter():
    pytest.importorskip("deepinv")
    from invprior.operators.adapters import deepinv as module

    return module


FILTER = torch.rand(1, 1, 3, 3, generator=torch.Generator().manual_seed(1))


def _make_physics(dinv, case):
    if case == "inpainting":
        return dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5, rng=torch.Generator().manual_seed(0))
    if case == "blur_valid":
        return dinv.physics.Blur(filter=FILTER, padding="valid")
    if case == "blur_fft":
        return dinv.physics.BlurFFT(img_size=(1, 8, 8), filter=FILTER)
    return dinv.physics.CompressedSensing(m=20, img_size=(1, 8, 8), rng=torch.Generator().manual_seed(0))


LINEAR_CASES = ["inpainting", "blur_valid", "blur_fft", "compressed_sensing"]
EXPECTED_RANGE = {"inpainting": (1, 8, 8), "blur_valid": (1, 6, 6), "blur_fft": (1, 8, 8),
                  "compressed_sensing": (20,)}


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_deepinv_linear_physics_shapes_and_adjoint(dinv, adapter, case):
    op = adapter.DeepinvOperator(_make_physics(dinv, case), (1, 8, 8))
    assert op.is_linear and op.has_pseudo_inverse
    assert op.domain_shape == (1, 8, 8) and op.range_shape == EXPECTED_RANGE[case]
    assert adjoint_mismatch(op, torch.float64) < 1e-6
    assert adjoint_mismatch(op, torch.float32) < 1e-4


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_deepinv_values_follow_the_physics_in_any_dtype(dinv, adapter, case):
    physics = _make_physics(dinv, case)
    op = adapter.DeepinvOperator(physics, (1, 8, 8))
    x32 = _randn((3, 1, 8, 8), dtype=torch.float32)
    y32 = _randn((3, *op.range_shape), seed=1, dtype=torch.float32)
    assert torch.equal(op(x32), physics.A(x32))
    assert torch.equal(op.adjoint(y32), physics.A_adjoint(y32))
    x64, y64 = x32.double(), y32.double()
    assert op(x64).dtype == torch.float64 and op.adjoint(y64).dtype == torch.float64
    torch.testing.assert_close(op(x64), physics.A(x32).double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(op.adjoint(y64), physics.A_adjoint(y32).double(), rtol=1e-5, atol=1e-5)
    assert all(b.dtype in (torch.float32, torch.complex64, torch.uint8) for b in physics.buffers())


def test_deepinv_inpainting_and_blur_against_explicit_formulas(dinv, adapter):
    x = _randn((2, 1, 8, 8))
    inpainting = _make_physics(dinv, "inpainting")
    torch.testing.assert_close(adapter.DeepinvOperator(inpainting, (1, 8, 8))(x), x * inpainting.mask.double())
    blur = adapter.DeepinvOperator(_make_physics(dinv, "blur_valid"), (1, 8, 8))
    convolution = torch.nn.functional.conv2d(x, FILTER.double().flip(-1, -2))
    torch.testing.assert_close(blur(x), convolution)


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_deepinv_gradcheck_float64(dinv, adapter, case):
    op = adapter.DeepinvOperator(_make_physics(dinv, case), (1, 8, 8))
    x = _randn((1, 1, 8, 8)).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,))


@pytest.mark.parametrize("case", ["inpainting", "compressed_sensing"])
def test_deepinv_pseudo_inverse_is_a_generalised_inverse(dinv, adapter, case):
    op = adapter.DeepinvOperator(_make_physics(dinv, case), (1, 8, 8))
    y = op(_randn((2, 1, 8, 8)))
    torch.testing.assert_close(op(op.pseudo_inverse(y)), y, rtol=1e-5, atol=1e-5)


def test_deepinv_nonlinear_physics(dinv, adapter):
    op = adapter.DeepinvOperator(dinv.physics.Physics(A=lambda x, **kwargs: x**2), (1, 3, 3))
    assert not op.is_linear and not op.has_pseudo_inverse
    assert op.range_shape == (1, 3, 3)
    x = _randn((2, 1, 3, 3)).requires_grad_()
    torch.testing.assert_close(op(x), x.detach() ** 2)
    (grad,) = torch.autograd.grad(op(x).sum(), x)
    torch.testing.assert_close(grad, 2 * x.detach())
    with pytest.raises(TypeError, match="nonlinear"):
        op.adjoint(torch.zeros(1, 1, 3, 3))
    with pytest.raises(NotImplementedError):
        op.pseudo_inverse(torch.zeros(1, 1, 3, 3))


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")
def test_deepinv_refuses_complex_physics_bad_shapes_and_non_physics(dinv, adapter):
    complex_cs = dinv.physics.CompressedSensing(m=5, img_size=(1, 4, 4), dtype=torch.cfloat,
                                                rng=torch.Generator().manual_seed(0))
    with pytest.raises(ShapeError, match="real"):
        adapter.DeepinvOperator(complex_cs, (1, 4, 4))
    with pytest.raises(ShapeError, match=r"domain_shape \(1, 5, 5\)"):
        adapter.DeepinvOperator(_make_physics(dinv, "compressed_sensing"), (1, 5, 5))
    with pytest.raises(TypeError, match="deepinv.physics.Physics"):
        adapter.DeepinvOperator(torch.nn.Identity(), (1, 4, 4))


def test_to_deepinv_linear_values_and_adjointness(dinv, adapter):
    op = DenseImageOperator()
    physics = adapter.to_deepinv(op)
    assert isinstance(physics, dinv.physics.LinearPhysics)
    x, y = _randn((3, 1, 4, 4)), _randn((3, 10), seed=1)
    torch.testing.assert_close(physics.A(x), x.reshape(3, 16) @ op.matrix.T)
    torch.testing.assert_close(physics.A_adjoint(y), (y @ op.matrix).reshape(3, 1, 4, 4))
    torch.manual_seed(0)
    assert float(physics.adjointness_test(dtype=torch.float64, num_samples=4)) < 1e-10
    torch.manual_seed(0)
    assert float(adapter.to_deepinv(WrongAdjointOperator()).adjointness_test(dtype=torch.float64)) > 0.1
    with pytest.raises(TypeError, match="physics parameters"):
        physics.A(x, mask=None)


def test_to_deepinv_noise_model_and_nonlinear(dinv, adapter):
    op = DenseImageOperator(rows=2000)
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(adapter.to_deepinv(op)(x), torch.zeros(1, 2000, dtype=torch.float64))
    noise = dinv.physics.GaussianNoise(sigma=0.1, rng=torch.Generator().manual_seed(0))
    noisy = adapter.to_deepinv(op, noise_model=noise)
    assert abs(float(noisy(x).std()) - 0.1) < 0.01
    tanh = adapter.to_deepinv(TanhOperator())
    assert not isinstance(tanh, dinv.physics.LinearPhysics)
    x = _randn((2, 1, 4, 4))
    torch.testing.assert_close(tanh.A(x), torch.tanh(x))


def test_round_trip_invprior_deepinv_invprior(adapter):
    op = DenseImageOperator()
    back = adapter.DeepinvOperator(adapter.to_deepinv(op), op.domain_shape)
    assert back.is_linear and back.range_shape == op.range_shape
    x, y = _randn((2, 1, 4, 4)), _randn((2, 10), seed=1)
    torch.testing.assert_close(back(x), op(x), rtol=0, atol=0)
    torch.testing.assert_close(back.adjoint(y), op.adjoint(y), rtol=0, atol=0)
    assert adjoint_mismatch(back) < 1e-12
    nonlinear = adapter.DeepinvOperator(adapter.to_deepinv(TanhOperator()), (1, 4, 4))
    assert not nonlinear.is_linear
    torch.testing.assert_close(nonlinear(x), torch.tanh(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- pylops
@pytest.fixture(scope="module")
def pylops():
    return pytest.importorskip("pylops")


@pytest.fixture(scope="module")
def PylopsOperator():
    pytest.importorskip("pylops")
    from invprior.operators.adapters.pylops import PylopsOperator

    return PylopsOperator


MATRIX = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
DIAGONAL = np.random.default_rng(1).standard_normal((4, 5))


def _make_linop(pylops, case):
    if case == "matrix":
        return pylops.MatrixMult(MATRIX, dtype="float32")
    if case == "derivative":
        return pylops.FirstDerivative((4, 5), axis=-1, kind="forward")
    return pylops.Diagonal(DIAGONAL)


def _expected(case, x):
    """The operators above written out directly in torch."""
    if case == "matrix":
        return x @ torch.from_numpy(MATRIX).to(x.dtype).T
    if case == "derivative":
        return torch.nn.functional.pad(torch.diff(x, dim=-1), (0, 1))
    return x * torch.from_numpy(DIAGONAL).to(x.dtype)


PYLOPS_CASES = ["matrix", "derivative", "diagonal"]
PYLOPS_SHAPES = {"matrix": ((6,), (5,)), "derivative": ((1, 4, 5), (1, 4, 5)), "diagonal": ((1, 4, 5), (1, 4, 5))}


@pytest.mark.parametrize("case", PYLOPS_CASES)
def test_pylops_values_shapes_and_dtypes(pylops, PylopsOperator, case):
    linop = _make_linop(pylops, case)
    op = PylopsOperator(linop)
    assert op.is_linear and (op.domain_shape, op.range_shape) == PYLOPS_SHAPES[case]
    x = _randn((3, *op.domain_shape))
    y = _randn((3, *op.range_shape), seed=1)
    torch.testing.assert_close(op(x), _expected(case, x), rtol=1e-12, atol=1e-12)
    dense = torch.from_numpy(np.asarray(linop.matmat(np.eye(linop.shape[1])), dtype=np.float64))
    torch.testing.assert_close(op.adjoint(y).reshape(3, -1), y.reshape(3, -1) @ dense, rtol=1e-12, atol=1e-12)
    x32 = x.float()
    assert op(x32).dtype == torch.float32 and op(x32).device == x32.device
    torch.testing.assert_close(op(x32), _expected(case, x32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", PYLOPS_CASES)
def test_pylops_adjoint_identity_and_gradcheck(pylops, PylopsOperator, case):
    op = PylopsOperator(_make_linop(pylops, case))
    assert adjoint_mismatch(op, torch.float64) < 1e-6
    x = _randn((2, *op.domain_shape)).requires_grad_()
    y = _randn((2, *op.range_shape), seed=1).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))


def test_pylops_explicit_shapes_and_mismatches(pylops, PylopsOperator):
    linop = _make_linop(pylops, "matrix")
    op = PylopsOperator(linop, domain_shape=(1, 2, 3), range_shape=(5, 1))
    x = _randn((2, 1, 2, 3))
    torch.testing.assert_close(op(x).reshape(2, 5), _expected("matrix", x.reshape(2, 6)))
    with pytest.raises(ShapeError, match=r"domain_shape \(7,\)"):
        PylopsOperator(linop, domain_shape=(7,))
    with pytest.raises(ShapeError, match=r"range_shape \(2, 3\)"):
        PylopsOperator(linop, range_shape=(2, 3))
    with pytest.raises(ShapeError, match=r"\(B, 6\)"):
        PylopsOperator(linop)(torch.zeros(2, 5))


def test_pylops_refuses_complex_and_non_linops(pylops, PylopsOperator):
    with pytest.raises(ShapeError, match="complex"):
        PylopsOperator(pylops.signalprocessing.FFT2D((4, 6)))
    with pytest.raises(TypeError, match="pylops.LinearOperator"):
        PylopsOperator(MATRIX)


# ---------------------------------------------------------------------------------- missing extras
@pytest.mark.parametrize("extra", ["deepinv", "pylops"])
def test_missing_extra_is_reported_and_module_still_imports(monkeypatch, extra):
    import invprior.operators.adapters as adapters

    module_name = f"invprior.operators.adapters.{extra}"
    monkeypatch.setitem(sys.modules, extra, None)
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    monkeypatch.delattr(adapters, extra, raising=False)
    module = importlib.import_module(module_name)
    calls = [lambda: module.DeepinvOperator(object(), (1, 4, 4)), lambda: module.to_deepinv(DenseImageOperator())]
    if extra == "pylops":
        calls = [lambda: module.PylopsOperator(MATRIX)]
    for call in calls:
        with pytest.raises(MissingExtraError, match=rf"invprior\[{extra}\]") as info:
            call()
        assert info.value.extra == extra and info.value.module == extra
