"""DIP: every generator x stopping rule, checkpoint/resume, divergence, shape refusal."""

from __future__ import annotations

import itertools

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, Regularizer, registry
from invprior.core.problem import NoiseEstimateWarning
from invprior.core.reconstruction import WarmStart
from invprior.errors import ConfigError, FitDivergedError, ShapeError
from invprior.generators.linear import LinearGenerator
from invprior.generators.output_map import OutputMap
from invprior.generators.unet import UNet
from invprior.io import load_torch_state
from invprior.methods.dip import DIP

SIZE = 16
GENERATORS = {"unet": {"preset": "small", "channels": 8}, "deep_decoder": {"channels": 8, "layers": 2},
              "two_layer": {"width": 16}, "linear": {}}
RULES = {"fixed": {"iterations": 4}, "discrepancy": {"tau": 1.5}, "eswmv": {"window": 2, "patience": 2},
         "patience": {"monitor": "loss", "patience": 2}}


@pytest.fixture(scope="module")
def problem():
    op = registry.get("operators", "inpainting", size=SIZE, missing_fraction=0.3)
    x = registry.get("datasets", "ellipses", size=SIZE, seed=0)
    return InverseProblem.simulate(op, x, GaussianNoise(std=0.05), seed=0)


def test_generators_are_registered():
    assert set(registry.names("generators")) >= set(GENERATORS)


@pytest.mark.parametrize("generator, rule", list(itertools.product(GENERATORS, RULES)))
def test_every_generator_with_every_rule(problem, generator, rule):
    dip = DIP(generator=generator, generator_params=GENERATORS[generator], stopping=rule,
              stopping_params=RULES[rule], weight=1e-4, lr=1e-2, max_iterations=6, log_every=2)
    result = dip.reconstruct(problem, progress=False)
    assert result.image.shape == problem.x_true.shape and torch.isfinite(result.image).all()
    assert 1 <= result.iterations <= 6 and result.stop_reason
    assert result.trace["iteration"][-1] == result.iterations
    assert len(result.networks) == 1 and result.fitted_by is dip
    # the kept image is the generator's output at the kept iteration
    best = result.extras["best_iteration"][0]
    assert 1 <= best <= result.iterations


def test_fit_reduces_the_data_residual(problem):
    result = DIP(generator_params={"preset": "small", "channels": 8}, stopping="fixed", init="none",
                 stopping_params={"iterations": 60}, lr=1e-2, max_iterations=60,
                 log_every=1).reconstruct(problem, progress=False)
    residuals = result.trace["residual"]
    assert residuals[-1] < 0.5 * residuals[0]


def test_linear_generator_converges_to_the_minimum_norm_solution():
    """Gradient descent on ||A J c - y||^2 from c = 0 converges to x = J (A J)^+ y."""
    op = registry.get("operators", "cs_gaussian", size=4, m=6, seed=0)
    y = torch.randn(1, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    problem = InverseProblem(op, y)
    generator = LinearGenerator(size=4, num_params=24, seed=2)
    j = generator.matrix.double()
    lipschitz = 2 / 6 * torch.linalg.matrix_norm(op.matrix @ j, ord=2).item() ** 2  # of the mean-squared loss
    result = DIP(generator=generator, regularizer="none", optimizer="gd", stopping="fixed", init="none", average=0.0,
                 stopping_params={"iterations": 4000}, lr=1 / lipschitz,
                 max_iterations=4000).reconstruct(problem, progress=False)
    expected = j @ torch.linalg.pinv(op.matrix @ j) @ y[0]
    assert torch.allclose(result.image.flatten(), expected, atol=1e-4)


def test_checkpoint_resume_is_bit_identical(problem, tmp_path, monkeypatch):
    settings = dict(generator_params={"preset": "small", "channels": 8}, stopping="eswmv",
                    stopping_params={"window": 3, "patience": 1000}, weight=1e-4, lr=1e-2, input_noise=0.05,
                    log_every=3, checkpoint_every=5, max_iterations=30)
    full = DIP(**settings).reconstruct(problem, progress=False)
    path = tmp_path / "run.pt"
    original_log = DIP._log

    def killed_at_24(self, record, problem, state, *rest):
        if state.iteration == 24:
            raise KeyboardInterrupt  # the process dies between checkpoints (last one: iteration 20)
        original_log(self, record, problem, state, *rest)

    monkeypatch.setattr(DIP, "_log", killed_at_24)
    with pytest.raises(KeyboardInterrupt):
        DIP(checkpoint=path, **settings).reconstruct(problem, progress=False)
    monkeypatch.setattr(DIP, "_log", original_log)
    assert load_torch_state(path, "dip_checkpoint", "", weights_only=False)["iteration"] == 20
    resumed = DIP(checkpoint=path, resume=True, **settings).reconstruct(problem, progress=False)
    assert torch.equal(resumed.image, full.image)
    assert resumed.trace.keys() == full.trace.keys()
    for key in full.trace:  # NaN-aware comparison (the rule's statistic is NaN until its window fills)
        assert torch.equal(torch.tensor(resumed.trace[key]).nan_to_num(-1.0),
                           torch.tensor(full.trace[key]).nan_to_num(-1.0))
    assert resumed.extras["best_iteration"] == full.extras["best_iteration"]
    for key, value in full.networks[0].state.items():
        assert torch.equal(resumed.networks[0].state[key], value)
    # a finished run is returned from its checkpoint without fitting again
    again = DIP(checkpoint=path, resume=True, **settings).reconstruct(problem, progress=False)
    assert torch.equal(again.image, full.image) and again.iterations == full.iterations
    other = InverseProblem(problem.operator, problem.y + 1, noise_std=0.05, x_true=problem.x_true)
    with pytest.raises(ConfigError, match="belongs to another"):
        DIP(checkpoint=path, resume=True, **settings).reconstruct(other, progress=False)
    with pytest.raises(ConfigError, match="belongs to another"):  # other stopping settings
        DIP(checkpoint=path, resume=True, **{**settings, "stopping_params": {"window": 3, "patience": 7}}
            ).reconstruct(problem, progress=False)


@pytest.mark.parametrize("rule, params", [("fixed", {"iterations": 7}), ("eswmv", {"window": 50, "patience": 5})])
def test_kept_image_is_what_the_kept_weights_produce(problem, rule, params):
    generator = UNet(preset="small", channels=8)
    result = DIP(generator=generator, stopping=rule, stopping_params=params, weight=1e-4, lr=1e-2,
                 max_iterations=7).reconstruct(problem, progress=False)
    network = result.networks[0]  # the generator behind its output map (data scale, constraints)
    assert isinstance(network.generator, OutputMap) and network.generator.network is not generator
    with torch.no_grad():
        assert torch.allclose(network.kept()(network.input), result.image, atol=1e-6)


class _NaNAfter(Regularizer):
    """A regularizer that turns NaN on its n-th call (to simulate a diverging fit)."""

    def __init__(self, n: int) -> None:
        self.calls, self.n = 0, n

    def __call__(self, x):
        self.calls += 1
        value = x.abs().flatten(1).sum(dim=1)
        return value * float("nan") if self.calls >= self.n else value


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_iterate(problem):
    dip = DIP(generator_params={"preset": "small", "channels": 8}, regularizer=_NaNAfter(5), weight=1e-3,
              stopping="fixed", stopping_params={"iterations": 50}, max_iterations=50)
    with pytest.raises(FitDivergedError, match="iteration 5") as caught:
        dip.reconstruct(problem, progress=False)
    kept = caught.value.reconstruction
    assert kept.iterations == 4 and kept.image.shape == problem.x_true.shape and torch.isfinite(kept.image).all()


def test_generator_shape_mismatch_is_refused_before_fitting(problem):
    with pytest.raises(ShapeError, match=r"outputs images of shape \(1, 1, 8, 8\)"):
        DIP(generator=LinearGenerator(size=8), max_iterations=5).reconstruct(problem, progress=False)
    with pytest.raises(ShapeError, match=r"\(1, 2, 16, 16\)"):
        DIP(generator=UNet(preset="small", channels=4, out_channels=2),
            max_iterations=5).reconstruct(problem, progress=False)


def test_small_images_and_rule_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="layers <= 3"):
        registry.get("generators", "deep_decoder", size=16)
    with pytest.raises(ConfigError, match="window must be >= 2"):
        registry.get("stopping", "eswmv", window=1)


def test_bad_settings_are_refused(problem):
    for bad in ({"lr": 0.0}, {"weight": -1.0}, {"max_iterations": 0}, {"generator": "unett"},
                {"stopping": "discrepancy", "stopping_params": {"tau": 0.9}}):
        with pytest.raises(ConfigError):
            DIP(**bad)
    bare = InverseProblem(problem.operator, problem.y)
    for rule, params in (("discrepancy", {}), ("eswmv", {"discrepancy_tau": 1.1})):  # the rule needs the noise
        with pytest.warns(NoiseEstimateWarning, match="dip: no noise level given; estimated from the data"):
            DIP(generator_params={"preset": "small", "channels": 4}, stopping=rule, stopping_params=params,
                weight=1e-4, init="none", max_iterations=2).reconstruct(bare, progress=False)


def test_seeded_runs_repeat_and_leave_the_global_rng_alone(problem):
    state = torch.get_rng_state()
    runs = [DIP(generator_params={"preset": "small", "channels": 8}, stopping="fixed",
                stopping_params={"iterations": 5}, seed=3).reconstruct(problem, progress=False) for _ in range(2)]
    assert torch.equal(runs[0].image, runs[1].image)
    assert torch.equal(torch.get_rng_state(), state)


def test_restarts_refit_an_unexplained_fit_from_the_next_seeds_and_keep_the_smallest_misfit(problem):
    settings = dict(generator_params={"preset": "small", "channels": 8}, stopping="fixed", init="none",
                    stopping_params={"iterations": 3}, lr=1e-2, max_iterations=3)
    # three Adam steps cannot explain the data: every attempt runs
    result = DIP(**settings, seed=5, restarts=2).reconstruct(problem, progress=False)
    attempts = result.extras["restarts"][0]
    assert [a["seed"] for a in attempts] == [5, 6, 7]
    singles = [DIP(**settings, seed=s).reconstruct(problem, progress=False) for s in (5, 6, 7)]
    misfits = [float((problem.operator(r.image) - problem.y).norm()) for r in singles]
    assert [a["misfit"] for a in attempts] == pytest.approx(misfits, rel=1e-5)
    best = min(range(3), key=misfits.__getitem__)
    assert torch.allclose(result.image, singles[best].image)
    assert f"seed {5 + best} of 3 attempts" in result.stop_reason
    # a fit that explains the data (misfit below restart_misfit * ||noise||) is not refitted
    lenient = DIP(**settings, seed=5, restarts=2, restart_misfit=1e6).reconstruct(problem, progress=False)
    assert len(lenient.extras["restarts"][0]) == 1 and torch.equal(lenient.image, singles[0].image)
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="restarts"):
            DIP(restarts=bad)



def test_a_warm_started_fit_starts_at_the_earlier_image_and_refines_it(problem):
    """With averaging, the kept weights after one iteration are the start's (theta_bar_1 = theta_0): the refit's
    first image is the earlier fit's, in the earlier fit's units; more iterations on new data move it."""
    settings = {"generator_params": {"preset": "small", "channels": 8}, "weight": 1e-4, "lr": 1e-2,
                "init": "none", "seed": 3}
    dip = DIP(**settings, max_iterations=30)
    earlier = dip.reconstruct(problem, progress=False)
    start = WarmStart.of(earlier)
    assert start is not None and start.scale == earlier.extras["data_scale"][0]
    warm = dip.warm_started(start)
    assert warm is not dip and dip.warm_start is None and warm.params["warm_start"]
    first = DIP(**settings, max_iterations=1).warm_started(start).reconstruct(problem, progress=False)
    torch.testing.assert_close(first.image, earlier.image, rtol=0, atol=1e-6)
    brighter = problem.scaled(1.5)  # new data of the same object: the refit moves towards it
    refit = warm.reconstruct(brighter, progress=False)
    before = (problem.operator(earlier.image) - brighter.y).norm()
    assert (problem.operator(refit.image) - brighter.y).norm() < 0.8 * before
    # the payload round-trips; a batch of two images and a malformed payload are refused
    again = WarmStart.from_payload(start.payload())
    assert all(torch.equal(again.state[k], v) for k, v in start.state.items()) and again.scale == start.scale
    two = InverseProblem(problem.operator, torch.cat([problem.y, problem.y]), noise_std=0.05)
    with pytest.raises(ConfigError, match="one image"):
        warm.reconstruct(two, progress=False)
    with pytest.raises(ConfigError, match="'state'"):
        WarmStart.from_payload({"state": {}, "input": torch.zeros(1)})
