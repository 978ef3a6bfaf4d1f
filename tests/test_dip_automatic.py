"""DIP's automatic choices: averaged weights keep the right mixture of iterates, the TV start is the TV image of
the fit's own loss, the automatic weight is the cross-validated TV weight, and the default budget runs to the end."""

from __future__ import annotations

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.core.operator import ForwardOperator
from invprior.core.scaling import data_scale
from invprior.errors import ConfigError
from invprior.generators.linear import LinearGenerator
from invprior.methods.classical import TVLeastSquares
from invprior.methods.dip import DIP
from invprior.methods.edip import EDIP
from invprior.metrics import psnr

SIZE = 12


@pytest.fixture(scope="module")
def problem():
    op = registry.get("operators", "inpainting", size=SIZE, missing_fraction=0.3)
    x = registry.get("datasets", "ellipses", size=SIZE, seed=0)
    return InverseProblem.simulate(op, x, GaussianNoise(std=0.05), seed=0)


def _linear(**settings) -> DIP:
    """A DIP whose output is linear in its weights (x = J c), so averaged weights give averaged iterates."""
    return DIP(generator=LinearGenerator(size=SIZE, num_params=64, seed=1), regularizer="none", weight=0.0,
               init="none", lr=0.05, log_every=1, **settings)


@pytest.mark.parametrize("rule, params", [("fixed", {}), ("eswmv", {"window": 3, "patience": 4})])
def test_averaged_weights_keep_the_exponential_average_of_the_iterates(problem, rule, params):
    """theta_bar_k = b_k theta_bar_{k-1} + (1 - b_k) theta_{k-1}, b_k = min(decay, 1 - 1/k): with x linear in theta
    the kept image is that mixture of the raw iterates x_1..x_k (each from a separate run without averaging)."""
    decay, budget = 0.8, 14
    averaged = _linear(average=decay, stopping=rule, stopping_params=params, max_iterations=budget).reconstruct(
        problem, progress=False)
    kept = averaged.extras["best_iteration"][0]
    assert 1 <= kept <= averaged.iterations <= budget
    iterates = [_linear(average=0.0, stopping="fixed", max_iterations=k).reconstruct(problem, progress=False).image
                for k in range(1, kept + 1)]
    expected = iterates[0]
    for k in range(2, kept + 1):
        b = min(decay, 1.0 - 1.0 / k)
        expected = b * expected + (1.0 - b) * iterates[k - 1]
    assert torch.allclose(averaged.image, expected, atol=1e-5)
    assert not torch.allclose(averaged.image, iterates[-1], atol=1e-3)  # it is not the last raw iterate
    assert "weights averaged" in averaged.stop_reason


def test_default_budget_runs_to_max_iterations(problem):
    result = _linear(average=0.0, max_iterations=9).reconstruct(problem, progress=False)
    assert result.iterations == 9 and result.extras["best_iteration"] == [9]
    assert result.stop_reason == "max_iterations = 9 reached; kept iteration 9"


def test_tv_start_is_the_tv_image_of_the_fits_own_loss(problem):
    """init='tv' fits the network to argmin 1/2||Ax - y||^2 + (w m / 2) TV(x) (in the normalised units) before the
    data fit; after one data step the image is still that TV image, unlike a random start."""
    weight, m = 2e-3, problem.y[0].numel()
    settings = dict(generator_params={"preset": "small", "channels": 8}, weight=weight, average=0.0, lr=1e-2,
                    max_iterations=1, init_iterations=400)
    started = DIP(init="tv", **settings).reconstruct(problem, progress=False)
    cold = DIP(init="none", **settings).reconstruct(problem, progress=False)
    scale = float(data_scale(problem)[0])
    tv = TVLeastSquares(weight=weight * m / 2 * scale).reconstruct(problem, progress=False).image
    assert float(psnr(started.image, tv)) > 30.0 > float(psnr(cold.image, tv)) + 10.0


def test_auto_weight_is_the_cross_validated_tv_weight_and_the_start_its_image(problem):
    result = DIP(generator_params={"preset": "small", "channels": 8}, average=0.0, lr=1e-2, max_iterations=1,
                 init_iterations=400).reconstruct(problem, progress=False)
    scale = float(data_scale(problem)[0])
    cv = TVLeastSquares(weight="cv").reconstruct(problem.scaled(1.0 / scale), progress=False)
    assert result.params["weight"][0] == pytest.approx(2.0 * cv.params["weight"][0] / problem.y[0].numel(), rel=1e-9)
    assert float(psnr(result.image, cv.image * scale)) > 30.0


def _second_step(problem: InverseProblem, warmup: int, init: str) -> float:
    """The largest parameter change of the second data-fit step (kept weights theta_1 -> final theta_2)."""
    fit = DIP(generator=LinearGenerator(size=SIZE, num_params=64, seed=1), weight=1e-3, init=init, init_iterations=5,
              warmup=warmup, lr=0.05, average=0.0, max_iterations=2)
    result = fit.reconstruct(problem, progress=False)
    after = result.networks[0].generator.state_dict()
    return max(float((after[k] - v).abs().max()) for k, v in result.networks[0].state.items())


def test_learning_rate_warms_up_after_the_tv_start_only(problem):
    """Adam moves every parameter by about lr per step whatever the gradient; after the TV start the step k
    uses lr * min(1, k / warmup), so step 2 moves by about 2 lr / warmup; a cold start is not slowed."""
    lr = 0.05
    assert _second_step(problem, 0, "tv") == pytest.approx(lr, rel=0.3)
    assert _second_step(problem, 100, "tv") == pytest.approx(lr * 2 / 100, rel=0.3)
    assert _second_step(problem, 100, "none") == pytest.approx(lr, rel=0.3)


class _Square(ForwardOperator):
    def __init__(self) -> None:
        super().__init__((1, 4, 4), (1, 4, 4))

    def forward(self, x):
        return x * x


def test_automatic_choices_refuse_what_they_cannot_do():
    nonlinear = InverseProblem(_Square(), torch.ones(1, 1, 4, 4), noise_std=0.1)
    with pytest.raises(ConfigError, match="weight='auto' cross-validates TV least squares, which needs a linear"):
        DIP().reconstruct(nonlinear, progress=False)
    # a nonlinear operator with a given weight starts from the generator's own weights (no TV least squares)
    fit = DIP(generator=LinearGenerator(size=4), weight=0.0, max_iterations=2).reconstruct(nonlinear, progress=False)
    assert fit.iterations == 2
    for bad in ({"average": 1.0}, {"average": -0.1}, {"init": "fbp"}, {"init_iterations": 0},
                {"warmup": -1}, {"warmup": 1.5}):
        with pytest.raises(ConfigError):
            DIP(**bad)
    with pytest.raises(ConfigError, match="init would overwrite the pretrained weights"):
        EDIP(pretrained="model.pt", init="tv")
