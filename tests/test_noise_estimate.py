"""The noise level estimated from the data alone, against simulated data with known noise."""

from __future__ import annotations

import math

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.core.noise import estimate_noise_std
from invprior.core.problem import NoiseEstimateWarning, ensure_noise_level
from invprior.errors import ConfigError


def test_white_noise_and_polynomials():
    """Pure white noise: the MAD of the third differences gives its std; quadratics along each axis add nothing;
    a signal that is rough along one axis only leaves the estimate along the other."""
    gen = torch.Generator().manual_seed(0)
    noise = 0.3 * torch.randn(2, 1, 200, 300, generator=gen, dtype=torch.float64)
    assert estimate_noise_std(noise).tolist() == pytest.approx([0.3, 0.3], rel=0.02)
    u, v = torch.linspace(-1, 1, 300, dtype=torch.float64), torch.linspace(-1, 1, 200, dtype=torch.float64)
    quadratic = (5 + 3 * u - 40 * u**2) + (2 - 7 * v**2)[:, None]
    torch.testing.assert_close(estimate_noise_std(quadratic + noise[:1]), estimate_noise_std(noise[:1]),
                               rtol=1e-9, atol=1e-12)
    rough = torch.randn(200, 1, generator=gen, dtype=torch.float64).expand(200, 300)  # constant along the rows
    assert estimate_noise_std(rough + noise[:1])[0] == pytest.approx(0.3, rel=0.03)
    assert estimate_noise_std(noise.flatten(2), order=1)[0] == pytest.approx(0.3, rel=0.02)  # (B, C, n), C(2, 1) = 2


def _ct(size: int, noise: float, fan: bool, image: str):
    if fan:
        from invprior.operators.ct_scanner import fan_beam_scanner

        op = fan_beam_scanner(size=size, angle_range=(0.0, 90.0), num_angles=181, num_detectors=280,
                              detector_pixel_size=0.4, fov=76.0)
    else:
        op = registry.get("operators", "ct_parallel", size=size, num_angles=60)
    fine = registry.get("datasets", image, size=3 * size, seed=2)
    clean = op.on_grid(3 * size)(fine)  # projected on a finer grid: no inverse crime
    x = torch.nn.functional.avg_pool2d(fine, 3)
    return InverseProblem.simulate(op, x, GaussianNoise(relative=noise), seed=1, clean=clean)


@pytest.mark.parametrize("fan, image", [(False, "ct_slice"), (True, "ellipses")])
@pytest.mark.parametrize("noise", [0.025, 0.05, 0.1])
def test_within_ten_percent_on_simulated_sinograms(fan, image, noise):
    pytest.importorskip("odl")
    problem = _ct(96, noise, fan, image)
    estimate, truth = float(estimate_noise_std(problem.y)[0]), float(problem.noise_std[0])
    assert estimate == pytest.approx(truth, rel=0.10)


def test_ensure_noise_level_estimates_only_when_missing():
    op = registry.get("operators", "denoising", size=128)
    x = registry.get("datasets", "ellipses", size=128, seed=0)
    known = InverseProblem.simulate(op, x, GaussianNoise(std=0.1), seed=0)
    assert ensure_noise_level(known, "test") is known
    bare = InverseProblem(op, known.y)
    with pytest.warns(NoiseEstimateWarning, match=r"test: no noise level given; estimated from the data: noise std"):
        estimated = ensure_noise_level(bare, "test")
    assert estimated.noise_estimated and not known.noise_estimated
    assert float(estimated.noise_std[0]) == pytest.approx(0.1, rel=0.1)
    assert float(estimated.noise_norm[0]) == pytest.approx(float(estimated.noise_std[0]) * math.sqrt(128 * 128))


def test_too_short_an_axis_is_refused():
    with pytest.raises(ConfigError, match="n > 3 entries"):
        estimate_noise_std(torch.zeros(1, 3))
