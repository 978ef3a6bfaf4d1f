"""lin-DIP's image-space noise term: the projected noise variance against a pseudo-inverse, the randomised
spectrum against a dense one, and its effect on the exact covariance and on Matheron samples."""

from __future__ import annotations

import math

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.errors import ConfigError
from invprior.generators.unet import UNet
from invprior.methods import DIP
from invprior.posterior.image_noise import leading_singular_values, projected_noise_variance, usable_rank
from invprior.posterior.lin_dip_solvers import dense_operator
from invprior.posterior.linearized_laplace import LinearizedLaplace

F64 = torch.float64


class _Matrix:
    """The minimum of a ``ForwardOperator`` that ``projected_noise_variance`` reads from a dense matrix."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.range_shape, self.domain_shape = (matrix.shape[0],), (matrix.shape[1],)


def test_projected_variance_is_the_mean_diagonal_of_the_noise_through_the_pseudo_inverse():
    gen = torch.Generator().manual_seed(0)
    # rank 12 in a 60 x 30 matrix: k = min(100, 60 / 2) = 30 asks for more directions than there are
    u = torch.linalg.qr(torch.randn(60, 12, generator=gen, dtype=F64)).Q
    v = torch.linalg.qr(torch.randn(30, 12, generator=gen, dtype=F64)).Q
    a = (u * torch.linspace(3.0, 0.2, 12, dtype=F64)) @ v.T
    s2 = 0.01
    truth = s2 * float(torch.linalg.pinv(a.T @ a).diagonal().mean())
    assert projected_noise_variance(_Matrix(a), s2, 100, dense=a) == pytest.approx(truth, rel=1e-9)
    # k leading directions only: the trace of the pseudo-inverse over the top-k right singular vectors
    _, s, vh = torch.linalg.svd(a)
    top = vh[:5].T
    assert projected_noise_variance(_Matrix(a), s2, 5, dense=a) == pytest.approx(
        s2 * float((top / s[:5] ** 2 @ top.T).diagonal().mean()), rel=1e-9)


def test_directions_below_one_percent_of_the_largest_singular_value_are_left_out():
    """A severely ill-posed spectrum (EIT-like, 1 down to 1e-6) keeps only the directions with sigma >= 0.01:
    without the cut, sigma^-2 of the weakest would make eta 1e6 times the noise std."""
    gen = torch.Generator().manual_seed(1)
    u = torch.linalg.qr(torch.randn(40, 20, generator=gen, dtype=F64)).Q
    v = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=F64)).Q
    sigma = torch.logspace(0, -6, 20, dtype=F64)
    kept = sigma[sigma >= 1e-2]
    assert 0 < kept.numel() < 20
    eta2 = projected_noise_variance(_Matrix((u * sigma) @ v.T), 1.0, 100, dense=(u * sigma) @ v.T)
    assert eta2 == pytest.approx(float(kept.pow(-2).sum()) / 20, rel=1e-9)


def test_usable_rank_stays_on_half_the_measurements():
    assert usable_rank(100, 1000) == 100 and usable_rank(100, 120) == 60 and usable_rank(5, 1) == 1
    with pytest.raises(ConfigError, match="rank"):
        usable_rank(0, 100)


def test_randomised_spectrum_of_a_ct_operator_matches_its_dense_svd():
    op = registry.get("operators", "ct_parallel", size=16, num_angles=10)
    dense = dense_operator(op)
    truth = torch.linalg.svdvals(dense)[:40]
    found = leading_singular_values(op, 40, seed=1)
    assert torch.allclose(found, truth, rtol=2e-3)
    exact = projected_noise_variance(op, 1e-4, 40, dense=dense)
    assert projected_noise_variance(op, 1e-4, 40, seed=1) == pytest.approx(exact, rel=1e-3)


def test_asking_for_more_singular_values_than_exist_returns_all_of_them():
    op = registry.get("operators", "ct_parallel", size=6, num_angles=12)  # n = 36 pixels < m measurements
    truth = torch.linalg.svdvals(dense_operator(op))
    found = leading_singular_values(op, 100, seed=1)
    assert found.shape == truth.shape == (36,)
    assert torch.allclose(found, truth, rtol=1e-6, atol=1e-9 * float(truth[0]))


def test_bad_image_noise_settings_are_refused():
    for value, match in (("pinv", r"sampling\.image_noise .*must be one of"), (-0.1, "image_noise"),
                         (math.nan, "image_noise")):
        with pytest.raises(ConfigError, match=match):
            LinearizedLaplace(sampling={"image_noise": value})
    with pytest.raises(ConfigError, match="image_noise_rank"):
        LinearizedLaplace(sampling={"image_noise_rank": 0})


@pytest.fixture(scope="module")
def fitted():
    """A tiny DIP on 8x8 CT with 6 angles."""
    op = registry.get("operators", "ct_parallel", size=8, num_angles=6)
    x = registry.get("datasets", "ellipses", size=8, seed=2, dtype=F64)
    problem = InverseProblem.simulate(op, x, GaussianNoise(relative=0.05), seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = UNet(preset="small", scales=2, channels=3, skip_channels=1).double()
    result = DIP(generator=network, generator_params=None, stopping="fixed", weight=0.0, init="none", average=0.0,
                 stopping_params={"iterations": 40}, lr=1e-2).reconstruct(problem, progress=False)
    return problem, result


def test_exact_covariance_gains_exactly_the_projected_variance(fitted):
    problem, result = fitted
    settings = {"solver": "exact", "evidence": {"iterations": 3, "lr": 0.05}, "progress": False}
    plain = LinearizedLaplace(sampling={"image_noise": "none"}, **settings).fit(result, problem)
    # "projected": the default image noise
    noisy = LinearizedLaplace(sampling={"image_noise_rank": 10}, **settings).fit(result, problem)
    sigma = torch.linalg.svdvals(dense_operator(problem.operator))[:10]
    eta2 = noisy.noise_variance * float(sigma.pow(-2).sum()) / 64
    assert noisy.image_noise_variance == pytest.approx(eta2, rel=1e-9) and plain.image_noise_variance == 0.0
    assert torch.allclose(noisy.covariance - plain.covariance, eta2 * torch.eye(64, dtype=F64), atol=1e-12)
    assert torch.allclose(noisy.std ** 2, plain.std ** 2 + eta2, rtol=1e-9)
    fixed = LinearizedLaplace(sampling={"image_noise": 0.05}, **settings).fit(result, problem)
    assert fixed.image_noise_variance == pytest.approx(0.0025)


def test_matheron_samples_gain_independent_pixel_noise_of_std_eta(fitted):
    problem, result = fitted
    settings = {"solver": {"kind": "scalable", "batch": 64},
                "evidence": {"iterations": 1, "lr": 0.05, "preconditioner_rank": 36, "cg_iterations": 200},
                "progress": False}
    sampling = {"num_samples": 128, "cg_rtol": 1e-6}
    plain = LinearizedLaplace(sampling={**sampling, "image_noise": "none"}, **settings).fit(result, problem)
    noisy = LinearizedLaplace(sampling={**sampling, "image_noise": 0.02}, **settings).fit(result, problem)
    extra = (noisy.samples - plain.samples).flatten()  # same seeds: the Matheron part is identical
    # 8192 draws of N(0, 0.02^2): mean within 5 standard errors, std within 5 of its standard error
    assert abs(float(extra.mean())) < 5 * 0.02 / math.sqrt(extra.numel())
    assert float(extra.std()) == pytest.approx(0.02, rel=5 / math.sqrt(2 * extra.numel()))
    assert float(noisy.log_likelihood(problem.x_true)) != float(plain.log_likelihood(problem.x_true))
