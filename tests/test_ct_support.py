"""Prior knowledge from CT data: the disc fitted to a sinogram's silhouette, the beam-hardening calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from invprior import InverseProblem
from invprior.errors import ConfigError

pytest.importorskip("odl")
pytest.importorskip("astra")
from invprior.operators.ct_scanner import FanBeamScanner, equally_spaced  # noqa: E402
from invprior.operators.ct_support import Disc, fit_disc  # noqa: E402
from invprior.readers.beam_hardening import BeamHardening, calibrate_beam_hardening  # noqa: E402

HTC = Path(__file__).resolve().parents[1] / "examples" / "data" / "htc2022"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "htc2022_tb.toml"


def _scan(first: float, last: float, count: int, size: int = 32):
    scanner = FanBeamScanner(410.66, 553.74, 0.4, 280, equally_spaced((first, last), count))
    return scanner.operator(size=size, fov=76.0)


@pytest.mark.parametrize("first, last, count", [(0.0, 359.0, 120), (40.0, 70.0, 61)])
def test_fitted_disc_recovers_centre_and_radius(first, last, count):
    op = _scan(first, last, count)
    truth = Disc((3.5, -2.25), 30.0)
    sinogram = truth.sinogram(op, 0.04) + 0.003 * np.random.default_rng(0).standard_normal((count, 280))
    fitted = fit_disc(op, torch.from_numpy(sinogram), noise_std=0.003)
    assert fitted.centre == pytest.approx(truth.centre, abs=0.1)  # mm; the detector cells are 0.3 mm at the centre
    assert fitted.radius == pytest.approx(truth.radius, abs=0.1)
    mask = fitted.mask(op)
    pixel = 76.0 / 32
    t = (torch.arange(32, dtype=torch.float64) + 0.5) * pixel - 38.0
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    distance = ((xx - 3.5) ** 2 + (yy + 2.25) ** 2).sqrt()
    assert bool(mask[distance < 30.0 - pixel].all()) and not bool(mask[distance > 30.0 + pixel].any())
    assert int(fitted.mask(op, margin=2.0).sum()) > int(mask.sum())


def test_disc_fit_refuses_what_is_not_a_disc():
    op = _scan(0.0, 90.0, 10)
    with pytest.raises(ConfigError, match="fewer than 3 silhouette edges"):
        fit_disc(op, torch.zeros(10, 280), noise_std=0.01)
    with pytest.raises(ConfigError, match="needs a CT operator"):
        fit_disc(object(), torch.zeros(2, 2), 0.0)


def test_calibration_undoes_a_known_hardening():
    """Data hardened by the inverse of g(q) = q + 0.1 q^2 + 0.02 q^3: the calibration finds g and the attenuation."""
    op = _scan(0.0, 180.0, 60)
    disc = Disc((1.0, 2.0), 33.0)
    exact = disc.sinogram(op, 0.04)
    hardened = exact.copy()
    for _ in range(50):  # Newton on g(q) = mu L
        hardened -= (hardened + 0.1 * hardened**2 + 0.02 * hardened**3 - exact) / (1 + 0.2 * hardened
                                                                                  + 0.06 * hardened**2)
    problem = InverseProblem(op, torch.from_numpy(hardened)[None, None], noise_std=1e-4)
    calibration = calibrate_beam_hardening(problem)
    assert calibration.disc.radius == pytest.approx(33.0, abs=0.02)
    assert calibration.misfit_linear > 0.03 and calibration.misfit_corrected < 0.01 * calibration.misfit_linear
    # (mu, c_2, c_3) trade off against each other a little; the corrected data are the path lengths times mu
    assert calibration.attenuation == pytest.approx(0.04, rel=0.02)
    assert calibration.correction.coefficients == pytest.approx((0.1, 0.02), abs=0.02)
    through = exact > 0.1 * 66 * 0.04
    lengths = calibration.correction(hardened)[through] / calibration.attenuation
    assert np.abs(lengths - exact[through] / 0.04).max() < 0.005 * 66


def test_correction_and_its_checks():
    correction = BeamHardening((0.5, -0.25))
    assert correction(np.array([0.0, 1.0, 2.0])).tolist() == [0.0, 1.25, 2.0]
    correction.check_monotone(1.0, "here")
    with pytest.raises(ConfigError, match="here: the beam-hardening correction .* decreases"):
        BeamHardening((-1.0,)).check_monotone(1.0, "here")
    with pytest.raises(ConfigError, match="list of numbers"):
        BeamHardening(0.5)


def test_the_example_uses_the_calibration_of_the_bundled_solid_disc():
    """examples/htc2022_tb.toml holds the beam-hardening correction and the acrylic attenuation calibrated on
    htc2022_solid_disc_30deg.mat (the organisers' 70 mm disc)."""
    import tomllib

    from invprior.readers.ct import read_htc2022

    calibration = calibrate_beam_hardening(read_htc2022(HTC / "htc2022_solid_disc_30deg.mat", size=16))
    assert 2 * calibration.disc.radius == pytest.approx(70.0, abs=0.3)
    assert calibration.misfit_corrected < 0.3 * calibration.misfit_linear  # beam hardening is real in these data
    problem = tomllib.loads(EXAMPLE.read_text())["problem"]
    assert problem["reader_params"]["beam_hardening"] == pytest.approx(list(calibration.correction.coefficients),
                                                                       abs=1e-5)
    assert problem["constraints"]["upper"] == pytest.approx(calibration.attenuation, abs=1e-5)
