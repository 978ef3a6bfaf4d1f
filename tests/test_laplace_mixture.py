"""lin-DIP around every ensemble member: the mixture's moments, its samples, and its errors."""

from __future__ import annotations

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.analysis.calibration import posterior_calibration
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError, NotFittedError
from invprior.methods import DIP
from invprior.posterior.ensemble import DeepEnsemble
from invprior.posterior.laplace_mixture import LaplaceMixture
from invprior.posterior.linearized_laplace import LinearizedLaplace

SETTINGS = dict(generator_params={"preset": "small", "channels": 4, "scales": 2}, stopping="fixed", weight=0.0,
                init="none", average=0.0, stopping_params={"iterations": 40}, lr=1e-2)
LAPLACE = {"evidence": {"iterations": 5, "lr": 0.05}, "prior": {"variance": "auto"}}


@pytest.fixture(scope="module")
def fitted():
    """An 8x8 CT problem (12 angles, 5 % noise), a DIP fit and a 3-member mixture around it (exact path)."""
    op = registry.get("operators", "ct_parallel", size=8, num_angles=12)
    x = registry.get("datasets", "ellipses", size=8, n=1, seed=1)
    problem = InverseProblem.simulate(op, x, GaussianNoise(relative=0.05), seed=0)
    result = DIP(seed=3, **SETTINGS).reconstruct(problem, progress=False)
    mixture = LaplaceMixture(members=3, seed_offset=100, laplace=LAPLACE, progress=False).fit(result, problem)
    return problem, result, mixture


def test_the_mixture_moments_are_those_of_its_components(fitted):
    problem, result, mixture = fitted
    assert len(mixture.components) == 3 and mixture.wall_time > 0
    # component 0 is lin-DIP around the given fit
    alone = LinearizedLaplace(**LAPLACE, progress=False).fit(result, problem)
    assert torch.allclose(mixture.components[0].covariance, alone.covariance)
    means = torch.stack([c.mean for c in mixture.components]).double()
    assert (means[1:] - means[0]).abs().max() > 1e-3  # other seeds, other fits
    mu = means.mean(dim=0)
    by_hand = sum(c.covariance + (m - mu).flatten().outer((m - mu).flatten()) for c, m in
                  zip(mixture.components, means)) / 3
    assert torch.allclose(mixture.mean.double(), mu)
    assert torch.allclose(mixture.covariance, by_hand)
    assert torch.allclose(mixture.std.double().flatten() ** 2, by_hand.diagonal())
    # the spread adds variance: the mixture is wider than the average component
    assert (mixture.covariance.diagonal() >= torch.stack([c.covariance.diagonal() for c in mixture.components])
            .mean(dim=0) - 1e-15).all()
    summary = posterior_calibration(mixture, problem.x_true)
    assert set(summary) >= {"ll_p1", "ll_p2", "coverage_95"}


def test_fit_around_a_fitted_ensembles_members_gives_the_same_mixture(fitted):
    problem, result, mixture = fitted
    ensemble = DeepEnsemble(members=3, seed_offset=100, progress=False).fit(result, problem)
    assert len(ensemble.fits) == 3 and ensemble.fits[0] is result
    assert torch.equal(torch.stack([f.image for f in ensemble.fits]), ensemble.samples)
    again = LaplaceMixture(members=3, laplace=LAPLACE, progress=False).fit_around(ensemble.fits, problem)
    assert torch.allclose(again.mean, mixture.mean) and torch.allclose(again.covariance, mixture.covariance)
    with pytest.raises(ConfigError, match="needs 3 member fits"):
        LaplaceMixture(members=3, laplace=LAPLACE, progress=False).fit_around(ensemble.fits[:2], problem)


def test_mixture_samples_have_the_mixture_moments(fitted):
    _, _, mixture = fitted
    n = 30000
    draws = mixture.sample(n, seed=5).double().flatten(1)
    assert draws.shape[0] == n
    variance = mixture.covariance.diagonal()
    # Monte-Carlo error of a mean: sqrt(var / n); of a variance: about var sqrt(2 / n) (heavier for a mixture)
    assert ((draws.mean(dim=0) - mixture.mean.double().flatten()).abs() <= 5 * (variance / n).sqrt()).all()
    assert ((draws.var(dim=0) - variance).abs() <= 8 * variance * (2 / n) ** 0.5).all()


def test_scalable_components_pool_their_samples():
    op = registry.get("operators", "ct_parallel", size=8, num_angles=12)
    x = registry.get("datasets", "ellipses", size=8, n=1, seed=1)
    problem = InverseProblem.simulate(op, x, GaussianNoise(relative=0.05), seed=0)
    result = DIP(seed=3, **SETTINGS).reconstruct(problem, progress=False)
    laplace = {**LAPLACE, "solver": {"kind": "scalable", "dtype": "float64"},
               "evidence": {**LAPLACE["evidence"], "preconditioner_rank": 60},
               "sampling": {"num_samples": 16, "cg_rtol": 1e-2}}
    mixture = LaplaceMixture(members=2, laplace=laplace, progress=False).fit(result, problem)
    assert mixture.samples.shape == (32, *result.image.shape)
    assert torch.equal(mixture.samples[:16], mixture.components[0].samples)
    assert torch.allclose(mixture.std, (mixture.samples - mixture.mean).pow(2).mean(dim=0).sqrt())
    with pytest.raises(ConfigError, match="no dense covariance"):
        mixture.covariance


def test_bad_settings_and_inputs_are_refused(fitted):
    problem, _, _ = fitted
    with pytest.raises(ConfigError, match="members must be >= 2"):
        LaplaceMixture(members=1)
    with pytest.raises(ConfigError, match="solver"):
        LaplaceMixture(laplace={"solver": "dense"})
    with pytest.raises(ConfigError, match="on the mixture"):
        LaplaceMixture(laplace={"seed": 1})
    with pytest.raises(NotFittedError, match="fit"):
        LaplaceMixture().mean
    foreign = Reconstruction(problem.x_true.clone(), "fbp")
    with pytest.raises(ConfigError, match="LaplaceMixture: the ensemble needs a DIP reconstruction"):
        LaplaceMixture(members=2, progress=False).fit(foreign, problem)
    assert isinstance(registry.get("posteriors", "laplace_mixture", members=2), LaplaceMixture)
