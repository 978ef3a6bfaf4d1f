"""2D CT operators: adjoints, backend agreement, line integrals in physical units, FBP, errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from invprior.core.operator import adjoint_mismatch
from invprior.errors import ConfigError, MissingExtraError, ShapeError

odl = pytest.importorskip("odl")
pytest.importorskip("astra")
from odl.applications import tomo  # noqa: E402

from invprior.operators.ct import CTGeometry, CTOperator, FanBeamCT, ParallelBeamCT  # noqa: E402

BEAMS = {"parallel": ParallelBeamCT, "fan": FanBeamCT}


def _pixel_average(size: int, image, supersample: int = 4) -> torch.Tensor:
    """``(1, 1, N, N)`` pixel averages of ``image(x, y)`` on ``[-1, 1]^2``, x along the first axis."""
    t = (torch.arange(size * supersample, dtype=torch.float64) + 0.5) * 2 / (size * supersample) - 1
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    fine = image(xx, yy).to(torch.float64)
    return fine.reshape(size, supersample, size, supersample).mean(dim=(1, 3))[None, None]


def disc(size: int, radius: float) -> torch.Tensor:
    return _pixel_average(size, lambda x, y: (x**2 + y**2 <= radius**2).double())


def ellipses(size: int) -> torch.Tensor:
    def image(x, y):
        return (1.0 * ((x / 0.7) ** 2 + (y / 0.5) ** 2 <= 1)
                - 0.5 * (((x - 0.2) / 0.2) ** 2 + ((y + 0.1) / 0.3) ** 2 <= 1).double()
                + 0.5 * (((x + 0.3) / 0.15) ** 2 + ((y - 0.1) / 0.15) ** 2 <= 1).double())
    return _pixel_average(size, image)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- geometry -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 64])
def test_default_detectors_match_odl_default_geometries(size):
    space = odl.uniform_discr([-1, -1], [1, 1], (size, size))
    parallel, fan = ParallelBeamCT(size=size, backend="odl"), FanBeamCT(size=size, backend="odl")
    odl_parallel = tomo.parallel_beam_geometry(space, num_angles=30)
    odl_fan = tomo.cone_beam_geometry(space, src_radius=4, det_radius=4, num_angles=60)
    for op, reference in ((parallel, odl_parallel), (fan, odl_fan)):
        assert op.range_shape == (1, reference.angles.size, reference.detector.size)
        assert op.geometry.detector_half_width == pytest.approx(float(reference.det_partition.max_pt[0]))
        np.testing.assert_allclose(op.odl_geometry.angles, reference.angles, rtol=1e-14)
        np.testing.assert_allclose(op.geometry.angles(), reference.angles, rtol=1e-14)


def test_defaults_only_construction():
    parallel, fan = ParallelBeamCT(), FanBeamCT()
    assert parallel.domain_shape == fan.domain_shape == (1, 64, 64)
    assert parallel.range_shape == (1, 30, 93) and fan.range_shape[:2] == (1, 60)
    assert parallel.has_pseudo_inverse and fan.has_pseudo_inverse


def test_limited_angle_scan_covers_only_the_requested_range():
    full = ParallelBeamCT(size=32, num_angles=30)
    limited = ParallelBeamCT(size=32, num_angles=15, angle_range=(0.0, math.pi / 2))
    assert limited.range_shape == (1, 15, full.range_shape[2])
    angles = limited.odl_geometry.angles
    step = (math.pi / 2) / 15
    assert angles.min() == pytest.approx(step / 2) and angles.max() == pytest.approx(math.pi / 2 - step / 2)
    x = ellipses(32)
    # the 15 angles in [0, pi/2] are the first half of the 30 angles in [0, pi]
    torch.testing.assert_close(limited(x)[0, 0], full(x)[0, 0, :15], rtol=1e-12, atol=1e-12)
    short_fan = FanBeamCT(size=16, num_angles=12, angle_range=(0.5, 0.5 + math.pi))
    assert short_fan.range_shape[1] == 12
    assert short_fan.odl_geometry.angles.min() > 0.5 and short_fan.odl_geometry.angles.max() < 0.5 + math.pi


# -- adjoints and backends ------------------------------------------------------------------
@pytest.mark.parametrize("beam", BEAMS)
@pytest.mark.parametrize("backend", ["sparse", "odl"])
def test_adjoint_identity(beam, backend):
    op = BEAMS[beam](size=32, num_angles=20, backend=backend)
    assert adjoint_mismatch(op, torch.float64) < 1e-6
    assert adjoint_mismatch(op, torch.float32) < 1e-4


@pytest.mark.parametrize("beam", BEAMS)
def test_backends_agree_and_match_odl(beam):
    sparse = BEAMS[beam](size=32, num_angles=20)
    odl_backend = BEAMS[beam](size=32, num_angles=20, backend="odl")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((3, *sparse.domain_shape), generator=gen, dtype=torch.float64)
    y = torch.randn((3, *sparse.range_shape), generator=gen, dtype=torch.float64)
    assert relative_error(sparse(x), odl_backend(x)) < 1e-5
    assert relative_error(sparse.adjoint(y), odl_backend.adjoint(y)) < 1e-5
    # same memory order as ODL itself: image axis 0 is x, sinogram is (angle, detector)
    direct = np.asarray(sparse.ray_transform(x[1, 0].numpy().astype(np.float32)).data)
    np.testing.assert_allclose(sparse(x)[1, 0].numpy(), direct, rtol=1e-5, atol=1e-5 * np.abs(direct).max())


@pytest.mark.parametrize("backend", ["sparse", "odl"])
def test_batched_and_dtype_preserving(backend):
    op = ParallelBeamCT(size=16, num_angles=8, backend=backend)
    x = ellipses(16).repeat(3, 1, 1, 1) * torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64).view(3, 1, 1, 1)
    y = op(x)
    assert y.dtype == torch.float64 and y.shape == (3, *op.range_shape)
    torch.testing.assert_close(y[1], -2.0 * y[0], rtol=1e-12, atol=1e-12)
    y32 = op(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, y.float(), rtol=1e-5, atol=1e-5)
    assert op.adjoint(y32).dtype == torch.float32 and op.fbp(y).dtype == torch.float64


def test_gradcheck_sparse_backend_to_second_order():
    op = FanBeamCT(size=6, num_angles=4)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn((2, *op.domain_shape), generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn((1, *op.range_shape), generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))
    assert torch.autograd.gradgradcheck(op, (x,))


def test_gradcheck_odl_backend():
    # ASTRA computes in float32; the map is linear, so a large step keeps finite differences exact
    op = ParallelBeamCT(size=6, num_angles=4, backend="odl")
    x = torch.randn((1, *op.domain_shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64,
                    requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,), eps=1e-2, atol=1e-4, rtol=1e-3)
    assert torch.autograd.gradgradcheck(op, (x,), eps=1e-2, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("backend", ["sparse", "odl"])
def test_norm_is_largest_singular_value(backend):
    op = FanBeamCT(size=8, num_angles=6, backend=backend)
    basis = np.eye(64, dtype=np.float32).reshape(64, 8, 8)
    dense = np.stack([np.asarray(op.ray_transform(e).data).ravel() for e in basis], axis=1)
    assert op.norm() == pytest.approx(np.linalg.svd(dense.astype(np.float64), compute_uv=False)[0], rel=1e-5)


# -- physics --------------------------------------------------------------------------------
@pytest.mark.parametrize("beam", BEAMS)
def test_centred_disc_line_integrals_and_grid_independence(beam):
    """A disc of radius r, value 1, has line integral 2 sqrt(r^2 - p^2) at distance p from its centre."""
    radius, size = 0.6, 64
    op = BEAMS[beam](size=size, num_angles=12)
    g = op.geometry
    h = g.detector_half_width
    u = -h + (np.arange(g.num_detectors) + 0.5) * 2 * h / g.num_detectors
    p = u if beam == "parallel" else g.src_radius * u / np.hypot(g.src_radius + g.det_radius, u)
    truth = torch.from_numpy(2 * np.sqrt(np.clip(radius**2 - p**2, 0, None))).expand(12, -1)
    sinogram = op(disc(size, radius))[0, 0]
    assert relative_error(sinogram, truth) < 0.03
    assert relative_error(op(disc(size, 0.3))[0, 0], truth) > 0.4  # the check can fail

    fine = op.on_grid(2 * size)
    assert type(fine) is type(op) and fine.geometry == op.geometry and fine.range_shape == op.range_shape
    assert relative_error(fine(disc(2 * size, radius))[0, 0], sinogram) < 0.03


@pytest.mark.parametrize("beam", BEAMS)
def test_fbp_reconstructs_with_many_angles_and_not_with_few(beam):
    size = 64
    x = ellipses(size)
    many, few = (180, 5) if beam == "parallel" else (360, 10)
    errors = []
    for num_angles in (many, few):
        op = BEAMS[beam](size=size, num_angles=num_angles, backend="odl")
        y = op.on_grid(2 * size)(ellipses(2 * size))
        errors.append(relative_error(op.pseudo_inverse(y), x))
    assert errors[0] < 0.2
    assert errors[1] > 2.5 * errors[0]


def test_fbp_is_linear_and_its_gradient_is_its_adjoint():
    """FBP is a linear map; autograd through it must give <FBP y, v> = <y, grad>."""
    op = ParallelBeamCT(size=16, num_angles=10)
    gen = torch.Generator().manual_seed(0)
    y1, y2 = (torch.randn(1, *op.range_shape, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(op.fbp(2 * y1 - y2), 2 * op.fbp(y1) - op.fbp(y2), rtol=1e-5, atol=1e-5)
    v = torch.randn(1, *op.domain_shape, generator=gen, dtype=torch.float64)
    y = y1.clone().requires_grad_(True)
    (op.fbp(y) * v).sum().backward()
    assert (op.fbp(y1) * v).sum().item() == pytest.approx((y1 * y.grad).sum().item(), rel=1e-4)


# -- errors ---------------------------------------------------------------------------------
def test_unknown_backend_and_bad_fbp_settings():
    with pytest.raises(ConfigError, match="CT backend must be one of 'sparse', 'odl'; got 'gpu'"):
        ParallelBeamCT(size=8, backend="gpu")
    with pytest.raises(ConfigError, match="filter_type"):
        ParallelBeamCT(size=8, filter_type="Gauss")
    with pytest.raises(ConfigError, match="frequency_scaling"):
        FanBeamCT(size=8, frequency_scaling=0.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_angles": 0}, "num_angles"),
    ({"num_angles": 2.5}, "num_angles"),
    ({"angle_range": (1.0, 1.0)}, "angle_range"),
    ({"angle_range": (1.0, 0.0)}, "angle_range"),
    ({"angle_range": (0.0, 7.0)}, "angle_range"),
    ({"angle_range": (0.0, float("nan"))}, "angle_range"),
    ({"num_detectors": 0}, "num_detectors"),
    ({"detector_half_width": -1.0}, "detector_half_width"),
    ({"beam": "fan", "src_radius": -2.0}, "src_radius"),
    ({"beam": "fan", "src_radius": 1.2}, "src_radius"),
    ({"beam": "fan", "det_radius": 0.0}, "det_radius"),
    ({"beam": "parallel", "src_radius": 3.0}, "src_radius"),
    ({"beam": "cone"}, "beam"),
])
def test_bad_geometry_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CTGeometry(**kwargs)


def test_bad_geometry_through_the_operators_and_beam_mismatch():
    with pytest.raises(ConfigError, match="det_radius"):
        FanBeamCT(size=8, det_radius=-1.0)
    with pytest.raises(ConfigError, match="num_angles"):
        ParallelBeamCT(size=8, num_angles=0)
    with pytest.raises(ConfigError, match="parallel-beam geometry"):
        ParallelBeamCT.from_geometry(CTGeometry("fan"), size=8)
    assert isinstance(CTOperator.from_geometry(CTGeometry("fan", num_angles=3), size=8), CTOperator)


@pytest.mark.parametrize("backend", ["sparse", "odl"])
def test_wrong_shapes_raise_shape_error(backend):
    op = ParallelBeamCT(size=8, num_angles=5, backend=backend)
    with pytest.raises(ShapeError, match="input x"):
        op(torch.zeros(1, 1, 8, 9))
    with pytest.raises(ShapeError, match="measurement y"):
        op.adjoint(torch.zeros(1, *op.domain_shape))
    with pytest.raises(ShapeError, match="measurement y"):
        op.pseudo_inverse(torch.zeros(2, 1, 5))


@pytest.mark.parametrize("module", ["odl", "astra"])
def test_missing_dependency_names_the_extra(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=r"invprior\[ct\]") as info:
        ParallelBeamCT(size=8)
    assert info.value.module == module


def test_modules_import_without_odl():
    code = (
        "import sys; sys.modules['odl'] = None; sys.modules['astra'] = None\n"
        "import invprior.operators.ct as ct, invprior.operators.adapters.odl as adapter\n"
        "from invprior.errors import MissingExtraError\n"
        "for build in (lambda: ct.FanBeamCT(size=8), lambda: adapter.OdlOperator(None)):\n"
        "    try:\n        build()\n    except MissingExtraError as e:\n        assert 'invprior[ct]' in str(e)\n"
        "    else:\n        raise SystemExit('no error')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["sparse", "odl"])
def test_cuda_inputs(backend):
    op = ParallelBeamCT(size=16, num_angles=8, backend=backend)
    x = ellipses(16).float()
    y = op(x.to("cuda"))
    assert y.device.type == "cuda" and y.dtype == torch.float32
    torch.testing.assert_close(y.cpu(), op(x), rtol=1e-5, atol=1e-5)
    assert op.adjoint(y).device.type == "cuda" and op.fbp(y).device.type == "cuda"
