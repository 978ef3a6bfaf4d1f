"""Peer methods registered for benchmark suites: deepinv's DIP."""

from __future__ import annotations

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry

pytest.importorskip("deepinv")


@pytest.fixture(scope="module")
def problem() -> InverseProblem:
    x = registry.get("datasets", "ellipses", size=16, n=2, seed=4, dtype=torch.float64)
    return InverseProblem.simulate(registry.get("operators", "denoising", size=16), x, GaussianNoise(std=0.05), seed=0)


def test_deepinv_dip_fits_the_data_reproducibly_without_touching_the_global_rng(problem):
    method = registry.get("methods", "deepinv_dip", iterations=150, channels=16, layers=4, seed=3)
    state = torch.get_rng_state()
    first = method.reconstruct(problem, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    again = method.reconstruct(problem, progress=False)
    assert torch.equal(first.image, again.image)
    assert first.image.shape == problem.y.shape and first.image.dtype == problem.y.dtype
    assert first.iterations == 150 and "150 iterations" in first.stop_reason
    # the fit moves G(z) towards y: its misfit is a fraction of the one after a single step
    one_step = registry.get("methods", "deepinv_dip", iterations=1, channels=16, layers=4, seed=3).reconstruct(
        problem, progress=False)
    misfit = lambda r: (r.image - problem.y).flatten(1).norm(dim=1)  # noqa: E731
    assert bool((misfit(first) < 0.5 * misfit(one_step)).all())


def test_deepinv_dip_refuses_bad_settings():
    from invprior.errors import ConfigError
    with pytest.raises(ConfigError, match="iterations"):
        registry.get("methods", "deepinv_dip", iterations=0)
    with pytest.raises(ConfigError, match="lr"):
        registry.get("methods", "deepinv_dip", lr=-1.0)
