"""Experimental design: greedy information gains against their closed form on a linear-Gaussian model, no repeated
candidates, the informative candidate first, row restrictions of operators, and the acquisition loop."""

from __future__ import annotations

import json
import math
import tomllib

import numpy as np
import pytest
import torch

from invprior.core.interfaces import PosteriorApproximation
from invprior.core.operator import RowSelection, adjoint_mismatch
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.design import (
    CandidatePool,
    DesignSettings,
    GaussianFactor,
    equidistant,
    greedy_batch,
    information_gains,
    run_design,
    whitened_projections,
)
from invprior.errors import ConfigError, ShapeError
from invprior.methods.classical import Tikhonov
from invprior.operators.compressed_sensing import GaussianCS


def _toy(n: int = 6, candidates: int = 5, rows: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A prior covariance ``C`` (n x n) and candidate matrices ``B`` (M, d, n)."""
    g = torch.Generator().manual_seed(seed)
    root = torch.randn(n, n, generator=g, dtype=torch.float64)
    return root @ root.T / n + 0.1 * torch.eye(n, dtype=torch.float64), \
        torch.randn(candidates, rows, n, generator=g, dtype=torch.float64)


def _projections(covariance: torch.Tensor, blocks: torch.Tensor, noise: float) -> torch.Tensor:
    n = covariance.shape[0]
    gaussian = GaussianFactor.from_covariance(torch.zeros(1, 1, n, dtype=torch.float64), covariance)
    return whitened_projections(gaussian, lambda images: torch.einsum("mdn,rcn->rmd", blocks, images), noise)


def _closed_form_gain(covariance: torch.Tensor, blocks: torch.Tensor, noise: float, chosen: list[int], j: int) -> float:
    """``1/2 log det(I + B_j C_A B_j^T / s^2)`` with ``C_A`` the covariance after measuring ``chosen``."""
    c = covariance
    if chosen:
        b = blocks[chosen].reshape(-1, c.shape[0])
        gain = c @ b.T @ torch.linalg.inv(b @ c @ b.T + noise ** 2 * torch.eye(b.shape[0], dtype=c.dtype))
        c = c - gain @ b @ c
    bj = blocks[j]
    return 0.5 * float(torch.logdet(torch.eye(bj.shape[0], dtype=c.dtype) + bj @ c @ bj.T / noise ** 2))


def test_greedy_gains_equal_the_closed_form_information_gains():
    covariance, blocks = _toy()
    noise = 0.3
    picked = greedy_batch(_projections(covariance, blocks, noise), batch=4)
    for k, (j, gain) in enumerate(zip(picked.chosen, picked.gains)):
        before = list(picked.chosen[:k])
        closed = {i: _closed_form_gain(covariance, blocks, noise, before, i) for i in range(5) if i not in before}
        assert gain == pytest.approx(closed[j], rel=1e-10)
        assert j == max(closed, key=closed.get)          # the best remaining candidate
    # chain rule: the gains add up to the mutual information of the whole design
    b = blocks[list(picked.chosen)].reshape(-1, 6)
    total = 0.5 * float(torch.logdet(torch.eye(b.shape[0], dtype=b.dtype) + b @ covariance @ b.T / noise ** 2))
    assert sum(picked.gains) == pytest.approx(total, rel=1e-10)


def test_information_gains_use_the_smaller_dimension_consistently():
    covariance, blocks = _toy(n=4, candidates=3, rows=7)      # d = 7 > r = 4
    gains = information_gains(_projections(covariance, blocks, 0.5), torch.eye(4, dtype=torch.float64))
    expected = [_closed_form_gain(covariance, blocks, 0.5, [], j) for j in range(3)]
    assert gains.tolist() == pytest.approx(expected, rel=1e-10)


def test_no_candidate_is_chosen_twice_nor_a_measured_one():
    covariance, blocks = _toy(candidates=6)
    blocks[1] = blocks[0]                                   # a duplicate stays attractive after its twin is chosen
    projections = _projections(covariance, blocks, 0.1)
    picked = greedy_batch(projections, batch=4, exclude=[2, 5])
    assert sorted(picked.chosen) == [0, 1, 3, 4]
    with pytest.raises(ConfigError, match="cannot choose 5 more of 6 candidates when 2 are taken"):
        greedy_batch(projections, batch=5, exclude=[2, 5])


def test_a_fully_informative_candidate_is_chosen_first():
    covariance, blocks = _toy(n=4, candidates=4, rows=4)
    blocks[2] = 20 * torch.eye(4, dtype=torch.float64)       # measures every pixel, well above the noise
    picked = greedy_batch(_projections(covariance, blocks, 1.0), batch=2)
    assert picked.chosen[0] == 2
    assert picked.gains[1] < 0.01 * picked.gains[0]         # after it, little is left to learn


def test_conditioning_a_prior_on_measured_candidates_equals_greedy_under_its_posterior():
    """``condition_on=A`` with the prior's projections picks and scores as the exact posterior after ``A``."""
    covariance, blocks = _toy(n=6, candidates=7)
    noise, measured = 0.4, [1, 4]
    b = blocks[measured].reshape(-1, 6)
    kalman = covariance @ b.T @ torch.linalg.inv(b @ covariance @ b.T + noise ** 2 * torch.eye(4, dtype=b.dtype))
    posterior = covariance - kalman @ b @ covariance
    expected = greedy_batch(_projections(posterior, blocks, noise), 3, exclude=measured)
    picked = greedy_batch(_projections(covariance, blocks, noise), 3, exclude=measured, condition_on=measured)
    assert picked.chosen == expected.chosen
    assert picked.gains == pytest.approx(expected.gains, rel=1e-8)
    with pytest.raises(ConfigError, match="conditioning candidates must be indices below 7"):
        greedy_batch(_projections(covariance, blocks, noise), 1, condition_on=[7])


def test_the_smoothness_prior_lives_in_laplacian_eigenvectors_with_the_image_energy():
    g = torch.Generator().manual_seed(2)
    image = torch.randn(1, 1, 6, 5, generator=g, dtype=torch.float64)
    prior = GaussianFactor.smoothness_prior(image, length=1.5, modes=30)          # every mode
    columns = prior.factor.T.reshape(30, 6, 5).numpy()
    padded = np.pad(columns, ((0, 0), (1, 1), (1, 1)), mode="edge")               # Neumann boundary
    laplacian = (4 * columns - padded[:, :-2, 1:-1] - padded[:, 2:, 1:-1]
                 - padded[:, 1:-1, :-2] - padded[:, 1:-1, 2:])
    norms2 = (columns ** 2).sum(axis=(1, 2))
    eigen = (laplacian * columns).sum(axis=(1, 2)) / norms2                      # Rayleigh quotients
    np.testing.assert_allclose(laplacian, eigen[:, None, None] * columns, atol=1e-10)
    np.testing.assert_allclose(norms2 / norms2.max(), (1 + 1.5 ** 2 * eigen) ** -2.0, rtol=1e-10)
    gram = prior.factor.T @ prior.factor                                         # orthogonal columns
    assert torch.allclose(gram, torch.diag(gram.diagonal()), atol=1e-12)
    assert torch.all(gram.diagonal()[1:] <= gram.diagonal()[:-1] + 1e-15)       # smoothest first
    # with every mode, the amplitude matches the image's energy about its mean: trace(L L^T) = ||x - mean||^2
    assert float(gram.trace()) == pytest.approx(float((image - image.mean()).pow(2).sum()), rel=1e-10)
    fewer = GaussianFactor.smoothness_prior(image, length=1.5, modes=4)              # the four smoothest
    first = prior.factor[:, :4]
    assert torch.allclose(fewer.factor / fewer.factor.norm(dim=0), first / first.norm(dim=0))


def test_factor_from_samples_is_the_sample_covariance():
    samples = torch.randn(40, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gaussian = GaussianFactor.from_samples(samples)
    flat = samples.flatten(1)
    assert torch.allclose(gaussian.factor @ gaussian.factor.T, torch.cov(flat.T), atol=1e-12)
    assert torch.allclose(gaussian.mean.flatten(), flat.mean(dim=0))
    with pytest.raises(ConfigError, match="at least two samples"):
        GaussianFactor.from_samples(samples[:1])


def test_row_selection_measures_rows_and_is_adjoint():
    op = GaussianCS(size=6, m=10, seed=0)
    selected = op.rows([1, 4, 7])
    x = torch.randn(2, *op.domain_shape, dtype=torch.float64)
    assert torch.equal(selected(x), op(x)[:, [1, 4, 7]])
    assert adjoint_mismatch(selected) < 1e-12
    for bad in ([4, 1], [1, 1], [10], []):
        with pytest.raises(ShapeError, match="strictly increasing indices in 0..9"):
            RowSelection(op, bad)


def test_ct_rows_are_the_scan_at_those_angles():
    pytest.importorskip("astra")
    from invprior.operators.ct import ParallelBeamCT

    op = ParallelBeamCT(size=16, num_angles=12)
    rows = [0, 3, 4, 11]
    selected = op.rows(rows)
    x = torch.rand(1, *op.domain_shape, generator=torch.Generator().manual_seed(0))
    assert selected.range_shape == (1, 4, op.range_shape[2])
    assert torch.allclose(selected(x), op(x)[:, :, rows], rtol=1e-5, atol=1e-6)
    assert torch.allclose(selected.layout()["angles"], op.layout()["angles"][rows])
    with pytest.raises(ConfigError, match="at least two projection angles"):
        op.rows([5])


def test_equidistant_spreads_the_candidates():
    assert equidistant(180, 10) == tuple(range(9, 180, 18))
    assert equidistant(7, 7) == tuple(range(7))
    with pytest.raises(ConfigError, match="cannot spread 8 measurements over 7 candidates"):
        equidistant(7, 8)


class _ExactGaussian(PosteriorApproximation):
    """The exact posterior of ``y = A x + e`` under ``x ~ N(0, prior^2 I)``: a linear-Gaussian reference."""

    def __init__(self, prior: float = 1.0) -> None:
        self.prior = prior

    def fit(self, reconstruction: Reconstruction, problem: InverseProblem) -> _ExactGaussian:
        n = math.prod(problem.operator.domain_shape)
        a = problem.operator(torch.eye(n, dtype=torch.float64).view(n, *problem.operator.domain_shape))
        a = a.reshape(n, -1).T
        s2 = float(problem.noise_std[0]) ** 2
        self._covariance = torch.linalg.inv(a.T @ a / s2 + torch.eye(n, dtype=torch.float64) / self.prior ** 2)
        mean = self._covariance @ a.T @ problem.y.double().flatten() / s2
        self._mean = mean.view(1, *problem.operator.domain_shape)
        return self

    @property
    def covariance(self) -> torch.Tensor:
        return self._covariance

    @property
    def mean(self) -> torch.Tensor:
        return self._mean

    @property
    def std(self) -> torch.Tensor:
        return self.covariance.diagonal().sqrt().view_as(self._mean)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        raise AssertionError("the exact covariance is used")


def _cs_pool(rows: int = 12, size: int = 4) -> CandidatePool:
    op = GaussianCS(size=size, m=rows, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, *op.domain_shape, generator=g, dtype=torch.float64)
    y = op(x) + 0.05 * torch.randn(1, *op.range_shape, generator=g, dtype=torch.float64)
    return CandidatePool(InverseProblem(op, y, noise_std=0.05, x_true=x))


def test_the_loop_acquires_by_greedy_gain_under_the_posterior():
    pool = _cs_pool()
    settings = DesignSettings(budget=8, start=2, batch=3)
    result = run_design(pool, Tikhonov(weight=0.01), "lin_dip", settings, posterior=_ExactGaussian(),
                        progress=False)
    assert [len(step.design) for step in result.steps] == [2, 5, 8]
    assert result.steps[0].design == equidistant(12, 2)
    assert len(set(result.design)) == 8
    for step, after in zip(result.steps, result.steps[1:]):
        assert after.design == step.design + step.chosen
        # what the loop chose is the greedy choice under the exact posterior of the measured rows
        posterior = _ExactGaussian().fit(None, pool.subproblem(step.design))
        blocks = pool.problem.operator(torch.eye(16, dtype=torch.float64).view(16, 1, 4, 4)).reshape(16, 12).T
        blocks = blocks.reshape(12, 1, 16)
        expected = greedy_batch(_projections(posterior.covariance, blocks, 0.05), 3, exclude=step.design)
        assert step.chosen == expected.chosen
        assert step.gains == pytest.approx(expected.gains, rel=1e-8)
    assert result.steps[-1].chosen == () and "psnr" in result.steps[-1].scores


def test_non_adaptive_strategies_and_bad_settings():
    pool = _cs_pool()
    settings = DesignSettings(budget=7, start=3, batch=2)
    equal = run_design(pool, Tikhonov(weight=0.01), "equidistant", settings, progress=False)
    assert [step.design for step in equal.steps] == [equidistant(12, k) for k in (3, 5, 7)]
    drawn = run_design(pool, Tikhonov(weight=0.01), "random", settings, progress=False)
    designs = [step.design for step in drawn.steps]
    assert designs[1][:3] == designs[0] and designs[2][:5] == designs[1] and len(set(designs[2])) == 7
    smooth = run_design(pool, Tikhonov(weight=0.01), "tikhonov", settings, progress=False)
    assert [len(step.design) for step in smooth.steps] == [3, 5, 7] and len(set(smooth.design)) == 7
    assert all(len(step.gains) == 2 and min(step.gains) > 0 for step in smooth.steps[:-1])
    with pytest.raises(ConfigError, match="budget \\(13\\) exceeds the 12 candidates"):
        run_design(pool, Tikhonov(weight=0.01), "random", DesignSettings(budget=13), progress=False)
    with pytest.raises(ConfigError, match="start \\(9\\) exceeds the budget \\(8\\)"):
        DesignSettings(budget=8, start=9)
    with pytest.raises(ConfigError, match="design: strategy"):
        run_design(pool, Tikhonov(weight=0.01), "best", settings, progress=False)


CS_DESIGN = """seed = 0
[problem]
operator = "cs_gaussian"
operator_params = { m = 12 }
image = "ellipses"
size = 4
noise = { std = 0.05 }
[method]
name = "tikhonov"
params = { weight = 0.01 }
[design]
strategies = ["equidistant", "random"]
budget = 7
start = 3
batch = 2
"""


def test_design_configuration_errors_name_the_key(tmp_path):
    from invprior.design.config import parse_design_config

    base = tomllib.loads(CS_DESIGN)
    config = parse_design_config(base)
    assert config.strategies == ("equidistant", "random") and config.settings.counts() == [3, 5, 7]
    assert config.posterior.name == "linearized_laplace"
    cases = [({"strategies": ["lin_dip", "best"]}, r"design.strategies: expected a non-empty a list of lin_dip"),
             ({"strategies": ["random", "random"]}, "a strategy is listed twice"),
             ({"budget": "20"}, r"design.budget: expected a positive int, got '20'"),
             ({"rounds": 3}, "design.rounds: unknown key"),
             ({"batch": 0}, r"design: batch must be a positive int")]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            parse_design_config({**base, "design": {**base["design"], **change}})
    with pytest.raises(ConfigError, match="baseline: invprior design compares designs"):
        parse_design_config({**base, "baseline": {"name": "fbp"}})


def test_design_command_writes_the_comparison_and_resumes(tmp_path, capsys):
    from invprior.cli import main

    config = tmp_path / "design.toml"
    config.write_text(CS_DESIGN)
    out = tmp_path / "out"
    assert main(["design", str(config), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("measurements  PSNR") == 6                     # 3 steps x 2 strategies
    summary = json.loads((out / "design.json").read_text())
    assert summary["strategies"]["equidistant"]["design"] == list(equidistant(12, 7))
    assert summary["strategies"]["random"]["measurements"] == [3, 5, 7]
    assert (out / "design.png").stat().st_size > 10_000
    # a second run reuses both records; a damaged one is run again
    record = out / "strategies" / "random.json"
    record.write_text(record.read_text().replace('"random"', '"rand0m"', 1))
    with pytest.warns(UserWarning, match="random.json"):
        assert main(["design", str(config), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "equidistant  done before" in printed and printed.count("measurements  PSNR") == 3
    again = json.loads((out / "design.json").read_text())
    for strategy in ("equidistant", "random"):                          # the same seed draws the same design
        for key in ("design", "measurements", "scores"):
            assert again["strategies"][strategy][key] == summary["strategies"][strategy][key]


DIP_METHOD = """[method]
name = "dip"
params = { generator = "two_layer", generator_params = { width = 16 }, max_iterations = 20, weight = 1e-4, \
init = "none" }
"""


@pytest.mark.parametrize("method", ["tikhonov", "dip"])
def test_a_stopped_comparison_continues_after_its_last_recorded_step(tmp_path, method):
    """A DIP refit starts from the previous fit's network (warm start), which the record keeps: the continued
    run is the uninterrupted one, bit for bit."""
    from invprior.design.compare import compare_designs
    from invprior.design.config import parse_design_config

    text = CS_DESIGN if method == "tikhonov" else CS_DESIGN.replace(
        '[method]\nname = "tikhonov"\nparams = { weight = 0.01 }\n', DIP_METHOD)
    config = parse_design_config(tomllib.loads(text))
    whole = compare_designs(config, tmp_path / "whole", progress=False, report=lambda line: None)
    lines: list[str] = []

    def stop_at_the_second_step(line: str) -> None:
        lines.append(line)
        if len(lines) == 5:                             # equidistant's 3 steps, then random's second
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare_designs(config, tmp_path / "stopped", progress=False, report=stop_at_the_second_step)
    lines.clear()
    again = compare_designs(config, tmp_path / "stopped", progress=False, report=lines.append)
    assert lines[0].strip().startswith("equidistant  done before")
    assert lines[1].strip() == "random       continues after 5 measurements"
    assert len(lines) == 3                              # only the last step of random was run
    assert [s.design for s in again.steps["random"]] == [s.design for s in whole.steps["random"]]
    assert [s.scores for s in again.steps["random"]] == [s.scores for s in whole.steps["random"]]
    assert np.array_equal(again.images["random"], whole.images["random"])
    warm_files = sorted(path.name for path in (tmp_path / "stopped" / "strategies").glob("*.warm"))
    assert warm_files == ([] if method == "tikhonov" else ["equidistant-7.warm", "random-7.warm"])


def test_a_lost_warm_start_is_reported_and_the_refit_starts_afresh(tmp_path):
    from invprior.design.compare import compare_designs
    from invprior.design.config import parse_design_config

    text = CS_DESIGN.replace('[method]\nname = "tikhonov"\nparams = { weight = 0.01 }\n', DIP_METHOD)
    config = parse_design_config(tomllib.loads(text.replace('["equidistant", "random"]', '["random"]')))
    lines: list[str] = []

    def stop_at_the_second_step(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare_designs(config, tmp_path, progress=False, report=stop_at_the_second_step)
    warm = tmp_path / "strategies" / "random-5.warm"
    assert sorted(p.name for p in warm.parent.glob("*.warm")) == ["random-5.warm"]  # the first step's is gone
    warm.write_bytes(warm.read_bytes()[:-3])
    with pytest.warns(UserWarning, match="random-5.warm: truncated.*starts afresh"):
        again = compare_designs(config, tmp_path, progress=False, report=lambda line: None)
    assert [len(s.design) for s in again.steps["random"]] == [3, 5, 7]
