"""Deep ensemble of DIP runs: members, moments, reproducibility, errors and an ensemble-averaging bound."""

from __future__ import annotations

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError, NotFittedError
from invprior.methods import DIP
from invprior.metrics import psnr
from invprior.posterior.ensemble import DeepEnsemble
from invprior.posterior.mc_dropout import MCDropout
from invprior.posterior.sample_predictive import SamplePredictive

SETTINGS = dict(generator_params={"preset": "small", "channels": 4}, stopping="fixed", weight=0.0, init="none",
                average=0.0, stopping_params={"iterations": 30}, lr=1e-2)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """An 8x8 denoising problem with two images, a checkpointed DIP fit of it and a 4-member ensemble."""
    op = registry.get("operators", "denoising", size=8)
    x = registry.get("datasets", "ellipses", size=8, n=2, seed=0)
    problem = InverseProblem.simulate(op, x, GaussianNoise(std=0.1), seed=0)
    folder = tmp_path_factory.mktemp("ensemble")
    method = DIP(seed=3, checkpoint=folder / "run.pt", **SETTINGS)
    result = method.reconstruct(problem, progress=False)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    post = DeepEnsemble(members=4, seed_offset=100, progress=False).fit(result, problem)
    return problem, method, result, post, folder, files


def test_members_differ_and_the_moments_are_theirs(fitted):
    problem, method, result, post, _, _ = fitted
    samples = post.sample(4)
    assert samples.shape == (4, *problem.x_true.shape) and post.mean.shape == post.std.shape == problem.x_true.shape
    assert torch.equal(samples[0], result.image)
    assert (post.std > 0).all()
    assert torch.equal(post.mean, samples.mean(dim=0)) and torch.equal(post.std, samples.std(dim=0))
    assert torch.equal(post.sample(2, seed=7), samples[:2])
    assert torch.allclose(post.covariance.diagonal(), post.std.double().pow(2).flatten(), rtol=1e-6)
    assert post.wall_time > 0
    # member k is a fresh DIP with seed + seed_offset * k and otherwise the same settings
    assert torch.equal(DIP(seed=3 + 100 * 2, **SETTINGS).reconstruct(problem, progress=False).image, samples[2])


def test_the_ensemble_is_reproducible_and_leaves_the_original_alone(fitted):
    problem, method, result, post, folder, files = fitted
    again = DeepEnsemble(members=4, seed_offset=100, progress=False).fit(result, problem)
    assert torch.equal(again.sample(4), post.sample(4))
    assert method.seed == 3 and method.params["seed"] == 3 and method.checkpoint == folder / "run.pt"
    assert result.fitted_by is method
    # the checkpoint files of the original run were neither rewritten nor joined by the members'
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files and files


def test_log_likelihood_is_an_independent_normal(fitted):
    problem, _, _, post, _, _ = fitted
    samples = post.sample(4).double()
    mean = samples.mean(dim=0)
    std = ((samples - mean).pow(2).sum(dim=0) / 3).sqrt()
    x = problem.x_true.double()
    by_hand = (-0.5 * ((x - mean) / std) ** 2 - std.log() - 0.5 * torch.log(torch.tensor(2 * torch.pi))).flatten(1)
    # the posterior's moments are float32 (the images'), these float64: agreement to float32 precision
    assert torch.allclose(post.log_likelihood(problem.x_true), by_hand.mean(dim=1), rtol=1e-5, atol=1e-6)
    assert post.log_likelihood(problem.x_true).shape == (2,)


def test_the_mean_is_no_worse_than_the_worst_member(fitted):
    # ||mean - x||^2 <= average_k ||x_k - x||^2 <= max_k ||x_k - x||^2 (convexity), per image
    problem, _, _, post, _, _ = fitted
    members = post.sample(4)
    x = problem.x_true
    member_psnr = torch.stack([psnr(m, x) for m in members])  # (members, B)
    mean_psnr = psnr(post.mean, x)
    assert (mean_psnr >= member_psnr.min(dim=0).values - 1e-9).all()
    member_mse = (members - x).pow(2).flatten(2).mean(dim=2)
    assert ((post.mean - x).pow(2).flatten(1).mean(dim=1) <= member_mse.mean(dim=0) + 1e-12).all()
    assert (mean_psnr > 10).all()  # the members are real reconstructions, not noise


def test_ensemble_errors(fitted):
    problem, _, result, post, _, _ = fitted
    with pytest.raises(ConfigError, match="needs a DIP reconstruction"):
        DeepEnsemble().fit(Reconstruction(torch.zeros(1, 1, 8, 8), "tv"), problem)
    with pytest.raises(ConfigError, match="members must be >= 2"):
        DeepEnsemble(members=1)
    with pytest.raises(ConfigError, match="members"):
        DeepEnsemble(members=0)
    with pytest.raises(ConfigError, match="members"):
        DeepEnsemble(members=2.5)
    with pytest.raises(ConfigError, match="seed_offset"):
        DeepEnsemble(seed_offset=0)
    with pytest.raises(ConfigError, match="4 members were fitted.*raise members"):
        post.sample(5)
    with pytest.raises(NotFittedError, match="DeepEnsemble: call fit"):
        _ = DeepEnsemble().std


def test_mc_dropout_and_the_ensemble_share_the_sample_predictive():
    assert issubclass(DeepEnsemble, SamplePredictive) and issubclass(MCDropout, SamplePredictive)
    with pytest.raises(NotFittedError, match="MCDropout: call fit"):
        _ = MCDropout().mean
