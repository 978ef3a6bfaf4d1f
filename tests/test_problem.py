"""Noise model and InverseProblem: statistics, seeds, recorded noise level, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from invprior import GaussianNoise, InverseProblem
from invprior.errors import ConfigError, ShapeError
from invprior.operators.compressed_sensing import SubsampledDCT
from invprior.operators.denoising import Denoising


def test_absolute_noise_statistics():
    op = Denoising(size=128)
    x = torch.zeros(2, 1, 128, 128, dtype=torch.float64)
    problem = InverseProblem.simulate(op, x, GaussianNoise(std=0.1), seed=5)
    eta = problem.y - x
    n = eta[0].numel()
    # sample std within 5 standard errors of 0.1; mean within 5 standard errors of 0
    assert abs(eta.std().item() - 0.1) < 5 * 0.1 / math.sqrt(2 * 2 * n)
    assert abs(eta.mean().item()) < 5 * 0.1 / math.sqrt(2 * n)
    assert torch.allclose(problem.noise_norm, eta.flatten(1).norm(dim=1))
    assert torch.allclose(problem.noise_std, torch.full((2,), 0.1, dtype=torch.float64))
    # ||eta|| concentrates at s sqrt(n)
    assert problem.noise_norm.div(0.1 * math.sqrt(n)).sub(1).abs().max() < 0.02


def test_relative_noise_scales_with_mean_abs_data():
    op = SubsampledDCT(size=32, ratio=0.5)
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64) * torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1, 1)
    problem = InverseProblem.simulate(op, x, GaussianNoise(relative=0.05), seed=0)
    clean = op(x)
    expected = 0.05 * clean.abs().mean(dim=1)
    assert torch.allclose(problem.noise_std, expected)
    measured = (problem.y - clean).std(dim=1)
    assert torch.allclose(measured, expected, rtol=0.1)


def test_seeds_reproduce():
    op, x = Denoising(size=16), torch.rand(1, 1, 16, 16)
    a = InverseProblem.simulate(op, x, GaussianNoise(std=0.1), seed=1)
    b = InverseProblem.simulate(op, x, GaussianNoise(std=0.1), seed=1)
    c = InverseProblem.simulate(op, x, GaussianNoise(std=0.1), seed=2)
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)


def test_noise_norm_defaults_to_expectation_when_only_std_known():
    op = Denoising(size=10)
    problem = InverseProblem(op, torch.zeros(1, 1, 10, 10), noise_std=0.2)
    assert problem.noise_norm.item() == pytest.approx(0.2 * 10)


def test_bad_inputs_are_refused():
    op = Denoising(size=4)
    with pytest.raises(ValueError, match="NaN"):
        InverseProblem(op, torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(ShapeError, match=r"\(B, 1, 4, 4\)"):
        InverseProblem(op, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="noise_std must be finite and >= 0"):
        InverseProblem(op, torch.zeros(1, 1, 4, 4), noise_std=-0.1)
    with pytest.raises(ConfigError, match="noise.std must be >= 0"):
        GaussianNoise(std=-1.0)
    for bad in (True, "0.1", [0.1], float("nan")):
        with pytest.raises(ConfigError, match="noise.std must be a finite number"):
            GaussianNoise(std=bad)
    with pytest.raises(ValueError, match="x_true contains NaN"):
        InverseProblem(op, torch.zeros(1, 1, 4, 4), x_true=torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(ShapeError, match="measurement y of shape"):
        op.pseudo_inverse(torch.zeros(3, 5))
    with pytest.raises(ShapeError, match="real floating-point"):
        op.pseudo_inverse(torch.zeros(1, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ConfigError, match="exactly one"):
        GaussianNoise(std=0.1, relative=0.1)
    with pytest.raises(ShapeError, match="x_true"):
        InverseProblem(op, torch.zeros(2, 1, 4, 4), x_true=torch.zeros(1, 1, 4, 4))
    with pytest.raises(TypeError, match="ForwardOperator"):
        InverseProblem("not an operator", torch.zeros(1, 1, 4, 4))  # type: ignore[arg-type]


def test_problem_moves_to_dtype():
    op = Denoising(size=4)
    problem = InverseProblem.simulate(op, torch.rand(1, 1, 4, 4), GaussianNoise(std=0.1)).to("cpu", torch.float64)
    assert problem.y.dtype == problem.x_true.dtype == problem.noise_norm.dtype == torch.float64
