"""The [posterior] section: parsing, invprior.experiment.run with a posterior, and the CLI's files."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from invprior.cli import main
from invprior.config import ComponentSpec, parse_config
from invprior.errors import ConfigError
from invprior.experiment import RunResult, build_posterior, run
from invprior.posterior.ensemble import DeepEnsemble
from invprior.posterior.linearized_laplace import LinearizedLaplace

BASE = {
    "seed": 3,
    "problem": {"operator": "ct_parallel", "operator_params": {"num_angles": 4}, "image": "ellipses", "size": 8,
                "noise": {"relative": 0.05}},
    "method": {"name": "dip", "params": {"generator_params": {"preset": "small", "scales": 2, "channels": 4},
                                         "stopping": "fixed", "stopping_params": {"iterations": 30}, "lr": 1e-2,
                                         "weight": 0.0, "init": "none", "average": 0.0}},  # the fit is not under test
}


def _config(posterior: dict | None = None, **problem) -> dict:
    data = copy.deepcopy(BASE)
    data["problem"].update(problem)
    if posterior is not None:
        data["posterior"] = posterior
    return data


# -- 1. parsing --------------------------------------------------------------------------------

def test_posterior_section_is_parsed_and_validated():
    config = parse_config(_config({"name": "linearized_laplace",
                                   "params": {"evidence": {"iterations": 5}, "solver": "exact"}}))
    assert config.posterior == ComponentSpec("linearized_laplace", {"evidence": {"iterations": 5}, "solver": "exact"})
    assert parse_config(_config()).posterior is None
    assert parse_config(_config({"name": "mc_dropout"})).posterior == ComponentSpec("mc_dropout", {})
    with pytest.raises(ConfigError, match=r"^posterior\.parms: unknown key"):
        parse_config(_config({"name": "linearized_laplace", "parms": {}}))
    with pytest.raises(ConfigError, match=r"^posterior\.name: missing"):
        parse_config(_config({"params": {}}))
    with pytest.raises(ConfigError, match=r"^posterior\.params: expected a table"):
        parse_config(_config({"name": "linearized_laplace", "params": 5}))
    with pytest.raises(ConfigError, match=r"^posterior: .*num_images = 1 \(got 2\)"):
        parse_config(_config({"name": "linearized_laplace"}, num_images=2))
    assert parse_config(_config(num_images=2)).problem.num_images == 2  # fine without a posterior


def test_build_posterior_names_the_key_at_fault():
    post = build_posterior(ComponentSpec("linearized_laplace", {"evidence": {"iterations": 7}}), progress=False, seed=4)
    assert isinstance(post, LinearizedLaplace)
    assert (post.evidence.iterations, post.progress, post.seed) == (7, False, 4)
    # a default the constructor does not take is dropped, not passed
    assert isinstance(build_posterior(ComponentSpec("deep_ensemble", {"members": 2}), seed=4), DeepEnsemble)
    with pytest.raises(ConfigError, match=r"^posterior: no posteriors component named 'laplace'"):
        build_posterior(ComponentSpec("laplace"))
    with pytest.raises(ConfigError, match=r"^posterior\.params: cannot build posteriors 'linearized_laplace'.*solver"):
        build_posterior(ComponentSpec("linearized_laplace", {"solver": "dense"}))
    with pytest.raises(ConfigError, match=r"^posterior\.params: cannot build posteriors 'linearized_laplace'"):
        build_posterior(ComponentSpec("linearized_laplace", {"colour": 1}))


# -- 2. experiment.run -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lin_dip_run() -> RunResult:
    config = parse_config(_config({"name": "linearized_laplace", "params": {"evidence": {"iterations": 5}}}))
    return run(config, progress=False)


def test_run_fits_the_posterior_around_the_dip(lin_dip_run):
    done = lin_dip_run
    post = done.posterior
    assert isinstance(post, LinearizedLaplace)
    assert (post.seed, post.progress, post.solver_used, len(post.history)) == (3, False, "exact", 5)
    image = done.reconstruction.image
    assert image.shape == done.problem.x_true.shape == (1, 1, 8, 8)
    assert post.std.shape == image.shape and (post.std > 0).all() and torch.isfinite(post.std).all()
    # the lin-DIP mean is the DIP reconstruction (recomputed in float64 from the kept weights), or, when the DIP fit
    # leaves more than noise in the data (discrepancy principle), the linearised model's posterior mean, which fits
    # the data better
    problem = done.problem
    misfit = lambda x: float((problem.y - problem.operator(x.float())).pow(2).sum())  # noqa: E731
    m = problem.y.numel()
    assert post.discrepancy == pytest.approx(misfit(image) / (m * post.noise_variance), rel=1e-3)
    if post.discrepancy > max(1.1 ** 2, 1 + 2 * math.sqrt(2 / m)):
        assert post.mean_used == "linearized" and misfit(post.mean) < misfit(image)
    else:
        assert post.mean_used == "network" and torch.allclose(post.mean.float(), image, rtol=1e-4, atol=1e-5)
    # the std is the square root of the diagonal of the predictive covariance
    assert torch.allclose(post.std.flatten() ** 2, post.covariance.diagonal(), rtol=1e-12)
    # the noise level is known, so it is held there
    assert post.noise_variance == pytest.approx(float(done.problem.noise_std[0]) ** 2, rel=1e-5)


def test_run_wraps_posterior_fit_errors_with_the_posterior_name():
    config = parse_config(_config({"name": "mc_dropout", "params": {"num_samples": 4}}))
    with pytest.raises(ConfigError) as excinfo:
        run(config, progress=False)
    message = str(excinfo.value)
    assert message.startswith("posterior (mc_dropout): MCDropout: the generator has no dropout")


def test_run_with_a_deep_ensemble_of_two_members():
    done = run(parse_config(_config({"name": "deep_ensemble", "params": {"members": 2}})), progress=False)
    post = done.posterior
    assert isinstance(post, DeepEnsemble)
    samples = post.samples
    assert samples.shape == (2, 1, 1, 8, 8)
    assert torch.equal(samples[0], done.reconstruction.image)  # member 0 is the run's own DIP
    assert not torch.allclose(samples[0], samples[1])           # member 1 is a fit from another seed
    # two members: mean (a + b) / 2 and sample std |a - b| / sqrt(2)
    assert torch.allclose(post.mean, samples.mean(dim=0))
    assert torch.allclose(post.std, (samples[0] - samples[1]).abs() / math.sqrt(2), rtol=1e-5, atol=1e-7)


# -- 3. the CLI --------------------------------------------------------------------------------

TOML = """
seed = 1
[problem]
operator = "ct_parallel"
operator_params = { num_angles = 4 }
image = "ellipses"
size = 8
noise = { relative = 0.05 }
[method]
name = "dip"
[method.params]
generator_params = { preset = "small", scales = 2, channels = 4 }
stopping = "fixed"
stopping_params = { iterations = 30 }
lr = 1e-2
weight = 0.0
init = "none"
average = 0.0
[posterior]
name = "linearized_laplace"
params = { evidence = { iterations = 5 } }
"""


def test_cli_run_writes_posterior_metrics_std_and_figure(tmp_path, capsys):
    path = tmp_path / "lin_dip.toml"
    path.write_text(TOML)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--dtype", "float64"]) == 0
    printed = capsys.readouterr().out
    assert "posterior linearized_laplace" in printed and "uncertainty.png" in printed
    def strict(token):
        raise ValueError(f"non-standard JSON {token}")

    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=strict)
    posterior = metrics["posterior"]
    assert posterior["name"] == "linearized_laplace"
    assert {"ll_p1", "ll_p2", "coverage_95", "mean_std", "rmse"} <= set(posterior)
    assert "ll_p10" not in posterior  # 10x10 patches do not fit in an 8x8 image
    assert all(math.isfinite(posterior[key]) for key in ("ll_p1", "ll_p2", "coverage_95", "mean_std", "rmse"))
    assert 0.0 <= posterior["coverage_95"] <= 1.0
    arrays = np.load(out / "reconstruction.npz")
    assert {"std", "posterior_mean", "x_hat", "x_true"} <= set(arrays.files)
    std, mean, x_true = arrays["std"], arrays["posterior_mean"], arrays["x_true"]
    m = arrays["y"].size  # the mean's choice by the discrepancy principle is recorded and printed
    under_fit = posterior["discrepancy"] > max(1.1 ** 2, 1 + 2 * math.sqrt(2 / m))
    assert posterior["mean_used"] == ("linearized" if under_fit else "network")
    assert f"mean {posterior['mean_used']} (discrepancy {posterior['discrepancy']:.3f})" in printed
    assert np.allclose(mean, arrays["x_hat"], rtol=1e-4, atol=1e-5) == (not under_fit)
    assert std.shape == x_true.shape == (1, 1, 8, 8) and (std > 0).all()
    # independent recomputation from the saved arrays: mean per-pixel Normal log-density of the truth ...
    residual = (x_true - mean).astype(np.float64)
    sigma = std.astype(np.float64)
    ll_p1 = float(np.mean(-0.5 * np.log(2 * np.pi) - np.log(sigma) - 0.5 * (residual / sigma) ** 2))
    assert posterior["ll_p1"] == pytest.approx(ll_p1, abs=1e-6)
    # ... the 95% coverage, the mean std and the RMS error
    assert posterior["coverage_95"] == pytest.approx(float(np.mean(np.abs(residual) <= 1.96 * sigma)), abs=1e-12)
    assert posterior["mean_std"] == pytest.approx(float(sigma.mean()), rel=1e-9)
    assert posterior["rmse"] == pytest.approx(float(np.sqrt(np.mean(residual ** 2))), rel=1e-6)
    assert (out / "uncertainty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
