"""Classical baselines: analytic TV solution, discrepancy choice, gains over the pseudo-inverse."""

from __future__ import annotations

import pytest
import torch

from invprior import GaussianNoise, InverseProblem
from invprior.core.problem import NoiseEstimateWarning
from invprior.data.phantoms import random_ellipses
from invprior.errors import ConfigError
from invprior.methods.classical import PseudoInverse, Tikhonov, TVLeastSquares
from invprior.metrics import psnr
from invprior.operators.compressed_sensing import GaussianCS
from invprior.operators.denoising import Denoising
from invprior.operators.inpainting import Inpainting


def test_tv_denoising_of_a_two_region_image_matches_the_analytic_solution():
    """ROF on a half-plane split: each side moves by lambda * (boundary length) / (area)."""
    h = w = 16
    y = torch.full((1, 1, h, w), 0.2, dtype=torch.float64)
    y[:, :, :, w // 2:] = 1.2
    problem = InverseProblem(Denoising(size=h), y)
    lam = 0.5
    x = TVLeastSquares(weight=lam, iterations=3000, nonnegative=False).reconstruct(problem, progress=False).image
    shift = lam * h / (h * w / 2)
    assert torch.allclose(x[..., : w // 2], torch.full_like(x[..., : w // 2], 0.2 + shift), atol=1e-4)
    assert torch.allclose(x[..., w // 2:], torch.full_like(x[..., w // 2:], 1.2 - shift), atol=1e-4)


def test_tikhonov_identity_penalty_matches_closed_form():
    op = GaussianCS(size=4, m=10, seed=0)
    y = torch.randn(2, 10, dtype=torch.float64)
    alpha = 0.3
    x = Tikhonov(weight=alpha, penalty="identity", rtol=1e-12).reconstruct(InverseProblem(op, y)).image
    m = op.matrix
    expected = torch.linalg.solve(m.T @ m + alpha * torch.eye(16, dtype=torch.float64), (y @ m).T).T
    assert torch.allclose(x.flatten(1), expected, atol=1e-8)


def _problem(op, size, seed, noise):
    x = random_ellipses(size=size, n=2, seed=seed, dtype=torch.float64)
    return InverseProblem.simulate(op, x, GaussianNoise(std=noise), seed=seed)


def test_discrepancy_choice_is_the_largest_admissible_weight():
    problem = _problem(Inpainting(size=24, missing_fraction=0.5), 24, 0, 0.05)
    result = Tikhonov().reconstruct(problem, progress=False)
    table = result.extras["weight_search"]
    bound = (1.1 * problem.noise_norm).tolist()
    for b in range(2):
        chosen = result.params["weight"][b]
        admissible = [row["weight"][b] for row in table if row["residual"][b] <= bound[b]]
        assert chosen == max(admissible)
    assert (problem.residual_norm(result.image) <= 1.1 * problem.noise_norm + 1e-9).all()


@pytest.mark.parametrize("make_op", [lambda: Inpainting(size=32, missing_fraction=0.6, seed=1),
                                     lambda: GaussianCS(size=24, ratio=0.35, seed=1)],
                         ids=["inpainting", "compressed_sensing"])
def test_tikhonov_and_tv_beat_the_pseudo_inverse(make_op):
    op = make_op()
    size = op.domain_shape[-1]
    problem = _problem(op, size, 3, 0.02)
    base = psnr(PseudoInverse().reconstruct(problem).image, problem.x_true)
    tik = psnr(Tikhonov().reconstruct(problem, progress=False).image, problem.x_true)
    tv = psnr(TVLeastSquares(iterations=300, grid_size=7).reconstruct(problem, progress=False).image, problem.x_true)
    # measured margins are several dB; assert a safe 1.5 dB for Tikhonov and 3 dB for TV
    assert (tik - base).min() > 1.5, (base, tik)
    assert (tv - base).min() > 3.0, (base, tv)


def test_tv_weight_choice_per_image_does_not_depend_on_the_batch():
    op = Denoising(size=24)
    x = random_ellipses(size=24, n=2, seed=4, dtype=torch.float64)
    noisy = InverseProblem.simulate(op, x, GaussianNoise(std=0.01), seed=0)
    noisier = InverseProblem.simulate(op, x, GaussianNoise(std=0.2), seed=1)
    batch = InverseProblem(op, torch.cat([noisy.y[:1], noisier.y[1:]]),
                           noise_norm=torch.cat([noisy.noise_norm[:1], noisier.noise_norm[1:]]), x_true=x)
    method = TVLeastSquares(iterations=200, grid_size=6)
    together = method.reconstruct(batch, progress=False)
    for b in range(2):
        alone = method.reconstruct(batch.select(b), progress=False)
        assert alone.params["weight"] == [together.params["weight"][b]]
        assert torch.allclose(alone.image, together.image[b: b + 1], atol=1e-10)
        assert batch.select(b).residual_norm(alone.image) <= 1.1 * batch.noise_norm[b]
    assert together.params["weight"][1] > 5 * together.params["weight"][0]


def test_weight_rules_need_what_they_use():
    op = Denoising(size=8)
    bare = InverseProblem(op, torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    with pytest.warns(NoiseEstimateWarning, match="tikhonov: no noise level given; estimated from the data"):
        estimated = Tikhonov().reconstruct(bare)
    given = Tikhonov().reconstruct(bare.with_estimated_noise())  # the estimate is used as if it had been given
    assert torch.equal(estimated.image, given.image) and estimated.params == given.params
    with pytest.raises(ConfigError, match="x_true"):
        Tikhonov(weight="oracle").reconstruct(bare)
    with pytest.raises(ConfigError, match="weight must be"):
        TVLeastSquares(weight=-1.0)
    with pytest.raises(ConfigError, match="penalty"):
        Tikhonov(penalty="laplace")
    noiseless = InverseProblem(op, torch.rand(1, 1, 8, 8), noise_norm=0.0)
    with pytest.raises(ConfigError, match="positive noise level"):
        TVLeastSquares().reconstruct(noiseless)
    for bad in ({"weight": float("inf")}, {"tau": -3.0}, {"rtol": 2.0}, {"grid_size": True}):
        with pytest.raises(ConfigError):
            Tikhonov(**bad)


def test_tv_beats_fbp_on_30_angle_ct_of_ellipses():
    from invprior.methods.classical import FBP
    from invprior.operators.ct import ParallelBeamCT

    op = ParallelBeamCT(size=64, num_angles=30)
    x = random_ellipses(size=64, n=2, seed=7)
    problem = InverseProblem.simulate(op, x, GaussianNoise(relative=0.025), seed=7)
    fbp = psnr(FBP().reconstruct(problem).image, x)
    tv = psnr(TVLeastSquares(iterations=300, grid_size=7).reconstruct(problem, progress=False).image, x)
    assert (tv - fbp).min() > 3.0, (fbp, tv)


def test_tv_fills_a_hole_from_its_neighbours_not_from_zero():
    """A constant image with a missing box: TV's minimiser is the constant everywhere (zero TV, exact fit),
    and a small weight moves a pixel the data do not reach by O(weight) per step, so only a start from the
    smooth fill (not from zero) is there within 100 iterations."""
    op = Inpainting(size=24, box=(8, 8, 8, 8))
    y = op(torch.full((1, 1, 24, 24), 0.7, dtype=torch.float64))
    x = TVLeastSquares(weight=1e-4, iterations=100).reconstruct(InverseProblem(op, y), progress=False).image
    assert torch.allclose(x, torch.full_like(x, 0.7), atol=1e-3)
