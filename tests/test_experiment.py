"""Problems built from configurations: finer-grid simulation, shapes, component errors."""

from __future__ import annotations

import pytest
import torch

from invprior.config import ComponentSpec, ProblemSpec
from invprior.core.noise import GaussianNoise
from invprior.errors import ConfigError
from invprior.experiment import build_problem


def _spec(operator="ct_parallel", image="ellipses", fine_factor=1, std=0.0, **operator_params):
    return ProblemSpec(ComponentSpec(operator, operator_params), ComponentSpec(image), size=32,
                       noise=GaussianNoise(std=std), fine_factor=fine_factor)


def test_finer_grid_data_differ_from_the_reconstruction_operator_but_only_slightly():
    coarse = build_problem(_spec(num_angles=20), seed=3)
    assert torch.equal(coarse.y, coarse.operator(coarse.x_true))  # the inverse crime, by construction
    fine = build_problem(_spec(num_angles=20, fine_factor=3), seed=3)
    gap = (fine.y - fine.operator(fine.x_true)).norm() / fine.y.norm()
    assert 1e-4 < gap.item() < 0.05
    assert fine.x_true.shape == (1, 1, 32, 32)
    # the truth is the 3x3 average of the fine image: same mean as the fine rendering
    assert torch.allclose(fine.x_true.mean(), coarse.x_true.mean(), atol=0.02)


def test_float64_problems_are_simulated_in_float64():
    problem = build_problem(_spec(operator="denoising", std=0.1), seed=0, dtype=torch.float64)
    assert problem.y.dtype == problem.x_true.dtype == torch.float64
    single = build_problem(_spec(operator="denoising", std=0.1), seed=0)
    assert torch.allclose(problem.y.float(), single.y, atol=1e-6)
    assert not torch.equal(problem.y, single.y.double())  # drawn in float64, not cast from float32


def test_finer_grid_needs_an_operator_that_supports_it():
    with pytest.raises(ConfigError, match="fine_factor"):
        build_problem(_spec(operator="denoising", fine_factor=2))


def test_component_errors_name_the_key():
    with pytest.raises(ConfigError, match="problem.operator: no operators component named 'ct'"):
        build_problem(_spec(operator="ct"))
    with pytest.raises(ConfigError, match="problem.operator_params: cannot build"):
        build_problem(_spec(operator="denoising", wrong=1))
    with pytest.raises(ConfigError, match=r"problem.operator_params: .*missing_fraction must lie in \[0, 1\]"):
        build_problem(_spec(operator="inpainting", missing_fraction=1.5))
    with pytest.raises(ConfigError, match="gives images of shape"):
        build_problem(ProblemSpec(ComponentSpec("cs_gaussian", {"size": 16}), ComponentSpec("ellipses"), size=32,
                                  noise=GaussianNoise(std=0.1)))
