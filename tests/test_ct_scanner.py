"""Fan-beam CT in physical units: millimetres, degrees, detector offsets, irregular angle lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invprior.core.operator import adjoint_mismatch
from invprior.errors import ConfigError

pytest.importorskip("odl")
pytest.importorskip("astra")
from skimage.filters import threshold_otsu  # noqa: E402

from invprior.operators.ct import CTGeometry, FanBeamCT, ParallelBeamCT  # noqa: E402
from invprior.operators.ct_scanner import FanBeamScanner, equally_spaced, fan_beam_scanner  # noqa: E402
from invprior.operators.ct_support import Disc  # noqa: E402

#: A scanner shaped like the one of the Helsinki Tomography Challenge, with a coarser detector.
SCANNER = dict(source_origin=410.66, source_detector=553.74, detector_pixel_size=0.8, num_detectors=140)


def irregular_angles(count: int, start: float, stop: float, seed: int = 0) -> tuple[float, ...]:
    return tuple(np.sort(np.random.default_rng(seed).uniform(start, stop, count)))


def disc_image(size: int, fov: float, centre: tuple[float, float], radius: float, value: float,
               supersample: int = 4) -> torch.Tensor:
    """Pixel averages of a disc on ``[-fov/2, fov/2]^2`` (mm), the first array axis being x."""
    t = (torch.arange(size * supersample, dtype=torch.float64) + 0.5) * fov / (size * supersample) - fov / 2
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    inside = ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2).double()
    return value * inside.reshape(size, supersample, size, supersample).mean(dim=(1, 3))[None, None]


def analytic_disc_sinogram(op: FanBeamCT, centre: tuple[float, float], radius: float, value: float) -> np.ndarray:
    """``value * 2 sqrt(r^2 - d^2)`` for every ray, ``d`` its distance to the centre; rays from ODL's geometry."""
    return Disc(centre, radius).sinogram(op, value)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("backend", ["sparse", "odl"])
def test_adjoint_identity_with_offset_and_irregular_angles(backend):
    scanner = FanBeamScanner(**SCANNER, angles=irregular_angles(23, 30.0, 120.0), detector_offset=1.7)
    op = scanner.operator(size=24, pixel_size=2.5, backend=backend)
    assert adjoint_mismatch(op, torch.float64) < 1e-6
    assert adjoint_mismatch(op, torch.float32) < 1e-4


def test_sparse_backend_agrees_with_odl_fan_beam():
    scanner = FanBeamScanner(**SCANNER, angles=irregular_angles(31, -40.0, 200.0, seed=1), detector_offset=-2.4)
    sparse, odl_backend = (scanner.operator(size=32, fov=76.0, backend=b) for b in ("sparse", "odl"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *sparse.domain_shape), generator=gen, dtype=torch.float64)
    y = torch.randn((2, *sparse.range_shape), generator=gen, dtype=torch.float64)
    assert relative_error(sparse(x), odl_backend(x)) < 1e-5
    assert relative_error(sparse.adjoint(y), odl_backend.adjoint(y)) < 1e-5


@pytest.mark.parametrize("offset", [0.0, 3.2])
def test_line_integrals_in_millimetres(offset):
    """A disc of attenuation 0.04 / mm, radius 20 mm, off centre: the sinogram is its chord lengths times 0.04."""
    scanner = FanBeamScanner(**SCANNER, angles=irregular_angles(17, 10.0, 300.0, seed=2), detector_offset=offset)
    fov, centre = 76.0, (4.0, -6.0)
    op = scanner.operator(size=96, fov=fov)
    truth = analytic_disc_sinogram(op, centre, 20.0, 0.04)
    sinogram = op(disc_image(96, fov, centre, 20.0, 0.04))[0, 0].numpy()
    assert relative_error(sinogram, truth) < 0.02
    assert truth.max() == pytest.approx(0.04 * 40.0, rel=0.01)  # the longest chord is the diameter
    shifted = analytic_disc_sinogram(op, (centre[0] + 3.0, centre[1]), 20.0, 0.04)
    assert relative_error(sinogram, shifted) > 0.1  # a 3 mm shift is seen


def test_a_disc_of_known_diameter_reconstructs_to_that_diameter_in_millimetres():
    """Data computed without the projector (chord lengths) -> FBP -> Otsu: diameter and centre in mm."""
    scanner = FanBeamScanner(**SCANNER, angles=equally_spaced((0.0, 359.0), 360))
    size, fov, centre, radius = 128, 80.0, (-7.5, 12.0), 25.0
    op = scanner.operator(size=size, fov=fov)
    y = torch.from_numpy(analytic_disc_sinogram(op, centre, radius, 0.04))[None, None]
    image = op.fbp(y)[0, 0].numpy()
    assert image.max() == pytest.approx(0.04, rel=0.15)  # attenuation comes back in 1/mm
    inside = image > threshold_otsu(image)
    pixel = fov / size
    diameter = 2 * np.sqrt(inside.sum() * pixel**2 / np.pi)
    assert diameter == pytest.approx(2 * radius, abs=pixel)
    coordinates = (np.arange(size) + 0.5) * pixel - fov / 2
    ix, iy = np.nonzero(inside)
    assert coordinates[ix].mean() == pytest.approx(centre[0], abs=pixel / 2)  # first array axis is x
    assert coordinates[iy].mean() == pytest.approx(centre[1], abs=pixel / 2)


def test_detector_offset_of_whole_pixels_shifts_the_sinogram():
    angles = irregular_angles(9, 0.0, 180.0, seed=3)
    pixel = SCANNER["detector_pixel_size"]
    x = disc_image(32, 60.0, (3.0, -2.0), 15.0, 1.0)
    plain = FanBeamScanner(**SCANNER, angles=angles).operator(size=32, fov=60.0)(x)[0, 0]
    moved = FanBeamScanner(**SCANNER, angles=angles, detector_offset=5 * pixel).operator(size=32, fov=60.0)(x)[0, 0]
    # the detector moved by +5 cells: cell k now sees what cell k + 5 saw
    torch.testing.assert_close(moved[:, :-5], plain[:, 5:], rtol=1e-4, atol=1e-5 * float(plain.max()))


def test_explicit_angles_equal_to_cell_midpoints_give_the_same_operator():
    uniform = FanBeamCT(size=16, num_angles=12, angle_range=(0.5, 2.0))
    explicit = FanBeamCT(size=16, angles=uniform.geometry.angles())
    assert explicit.geometry.num_angles == 12
    x = torch.randn((1, *uniform.domain_shape), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(explicit(x), uniform(x), rtol=1e-6, atol=1e-8)


def test_extent_scales_lengths():
    """The same scan on a domain twice as large, with every length doubled, gives line integrals twice as long."""
    unit = FanBeamCT(size=16, num_angles=10, num_detectors=31)
    double = FanBeamCT(size=16, num_angles=10, num_detectors=31, extent=2.0)
    assert double.geometry.src_radius == 8.0 and double.geometry.detector_half_width == pytest.approx(
        2 * unit.geometry.detector_half_width)
    x = torch.rand((1, *unit.domain_shape), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(double(x), 2 * unit(x), rtol=1e-5, atol=1e-7)


def test_registry_factory_in_degrees():
    op = fan_beam_scanner(size=16, angle_range=(75.0, 165.0), num_angles=181, num_detectors=40,
                          detector_pixel_size=2.8, pixel_size=4.0)
    np.testing.assert_allclose(np.rad2deg(op.geometry.angles()), np.arange(75.0, 165.01, 0.5), atol=1e-12)
    assert op.geometry.extent == pytest.approx(32.0) and op.range_shape == (1, 181, 40)


@pytest.mark.parametrize("build, match", [
    (lambda: CTGeometry("fan", angle_list=(0.0, 1.0, 0.5)), "strictly increasing"),
    (lambda: CTGeometry("fan", angle_list=(0.0,)), "at least two"),
    (lambda: CTGeometry("fan", angle_list=(0.0, 7.0)), "at most 2 pi"),
    (lambda: CTGeometry("fan", angle_list=(0.0, 1.0), angle_range=(0.0, 1.0)), "not both"),
    (lambda: CTGeometry("fan", angle_list=(0.0, float("nan"))), "angles"),
    (lambda: CTGeometry("fan", extent=0.0), "extent"),
    (lambda: CTGeometry("fan", extent=3.0, src_radius=4.0), "src_radius"),
    (lambda: ParallelBeamCT(size=8, detector_offset=1.0), "detector_offset applies to beam='fan' only"),
    (lambda: FanBeamScanner(100.0, 90.0, 0.2, 10, (0.0, 1.0)), "source_detector"),
    (lambda: FanBeamScanner(100.0, 190.0, -0.2, 10, (0.0, 1.0)), "detector_pixel_size"),
    (lambda: FanBeamScanner(100.0, 190.0, 0.2, 10, "0,1"), "angles"),
    (lambda: FanBeamScanner(100.0, 190.0, 0.2, 10, (0.0, 1.0)).operator(8, pixel_size=1.0, fov=8.0), "not both"),
    (lambda: FanBeamScanner(100.0, 190.0, 0.2, 10, (0.0, 1.0)).operator(8, fov=150.0), "src_radius"),
    (lambda: equally_spaced((0.0,), 5), "angle_range"),
])
def test_bad_physical_geometry(build, match):
    with pytest.raises(ConfigError, match=match):
        build()
