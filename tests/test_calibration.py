"""Calibration metrics against independent truths: the samples path of the patch log-likelihood
against the exact Gaussian, the batched dense path against a per-patch loop, and the summary on a
perfectly calibrated synthetic predictive."""

from __future__ import annotations

import math

import pytest
import torch

from invprior.analysis.calibration import calibration_summary, patch_log_likelihood, std_factor
from invprior.errors import ConfigError, ShapeError


def _spd(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T / n + 0.5 * torch.eye(n, dtype=torch.float64)


def _brute_force(x, mean, cov, patch):
    """Per-pixel log-likelihood of non-overlapping patches, one MultivariateNormal per patch."""
    h, w = x.shape[-2:]
    image, centre = x.reshape(h, w), mean.reshape(h, w)
    total, count = 0.0, 0
    for i in range(0, h - patch + 1, patch):
        for j in range(0, w - patch + 1, patch):
            pixels = [(a, b) for a in range(i, i + patch) for b in range(j, j + patch)]
            flat = [a * w + b for a, b in pixels]  # row-major index of pixel (a, b)
            sub = torch.tensor([[cov[u, v].item() for v in flat] for u in flat], dtype=torch.float64)
            values = torch.stack([image[a, b] for a, b in pixels])
            centres = torch.stack([centre[a, b] for a, b in pixels])
            total += torch.distributions.MultivariateNormal(centres, covariance_matrix=sub).log_prob(values).item()
            count += len(pixels)
    return total / count


@pytest.mark.parametrize("shape", [(7, 7), (7, 5)])
def test_batched_dense_path_matches_a_per_patch_loop(shape):
    h, w = shape
    gen = torch.Generator().manual_seed(1)
    cov = _spd(h * w, seed=2)
    mean = torch.randn(1, 1, h, w, generator=gen, dtype=torch.float64)
    x = mean + torch.randn(1, 1, h, w, generator=gen, dtype=torch.float64)
    for patch in (1, 2, 3):
        expected = _brute_force(x, mean, cov, patch)
        assert patch_log_likelihood(x, mean, cov, patch) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        # keyword form and (H, W) images give the same number
        assert patch_log_likelihood(x[0, 0], mean[0, 0], covariance=cov, patch=patch) == pytest.approx(
            expected, rel=1e-12)


def test_samples_path_converges_to_the_dense_path():
    h = w = 6
    n, num = h * w, 200_000
    cov = _spd(n, seed=3)
    gen = torch.Generator().manual_seed(4)
    mean = torch.randn(1, 1, h, w, generator=gen, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    x = mean + (chol @ torch.randn(n, generator=gen, dtype=torch.float64)).view(1, 1, h, w)
    samples = mean + (torch.randn(num, n, generator=gen, dtype=torch.float64) @ chol.T).view(num, 1, h, w)
    for patch in (1, 2, 3, 6):
        exact = patch_log_likelihood(x, mean, cov, patch)
        estimate = patch_log_likelihood(x, mean, patch=patch, samples=samples)
        # Monte-Carlo error of log N(r; 0, C_hat) with C_hat the sample covariance of S samples about
        # the true mean: to first order its sd is 0.5 sqrt((2 (1 - q)^2 + 2 (d - 1)) / S) with
        # q = r^T C^-1 r and d = p^2 (whitened Wishart), and its bias is about
        # 0.5 (d + 1)(d / 2 + q) / S. The per-pixel value averages the patch terms over n pixels,
        # so its sd is at most sum_k sd_k / n; allow 5 sd plus the bias.
        d = patch * patch
        sd_sum, bias_sum = 0.0, 0.0
        for i in range(0, h, patch):
            for j in range(0, w, patch):
                flat = torch.tensor([a * w + b for a in range(i, i + patch) for b in range(j, j + patch)])
                r = (x - mean).flatten()[flat]
                q = float(r @ torch.linalg.solve(cov[flat][:, flat], r))
                sd_sum += 0.5 * math.sqrt((2 * (1 - q) ** 2 + 2 * (d - 1)) / num)
                bias_sum += 0.5 * (d + 1) * (d / 2 + q) / num
        tolerance = (5 * sd_sum + bias_sum) / n
        assert tolerance < 0.01
        assert estimate == pytest.approx(exact, abs=tolerance)


def test_samples_path_survives_a_singular_sample_covariance():
    gen = torch.Generator().manual_seed(5)
    mean = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    samples = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)  # S = 3 < p^2 = 16: rank 3
    x = samples[0:1]
    value = patch_log_likelihood(x, mean, patch=4, samples=samples)
    assert math.isfinite(value)
    with pytest.raises(ConfigError, match="jitter"):
        patch_log_likelihood(x, mean, patch=4, samples=samples, jitter=0.0)
    # a constant pixel (zero variance) with the default jitter stays finite too
    constant = samples.clone()
    constant[:, 0, 0, 0] = 0.0
    assert math.isfinite(patch_log_likelihood(torch.zeros(4, 4), mean, patch=1, samples=constant))


def test_std_factor_is_the_sigma_scaling_that_maximises_the_pixel_log_likelihood():
    gen = torch.Generator().manual_seed(7)
    shape = (1, 1, 64, 64)
    mean = torch.randn(shape, generator=gen, dtype=torch.float64)
    true_std = 0.05 + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)
    x = mean + true_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    narrow = true_std / 3  # over-confident by 3x
    factor = std_factor(x, mean, narrow)
    # factor = 3 sqrt(mean z^2) over n = 4096 pixels: sd about 3 sqrt(2 / n) / 2 = 0.033; 0.17 is 5 sd
    assert factor == pytest.approx(3.0, abs=0.17)
    summary = calibration_summary(x, mean, narrow)
    assert summary["std_factor"] == factor
    base, best = summary["ll_p1"], calibration_summary(x, mean, factor * narrow)["ll_p1"]
    for c in (0.5, factor / 1.1, factor, factor * 1.1, 10.0):
        scaled = calibration_summary(x, mean, c * narrow)["ll_p1"]
        assert scaled == pytest.approx(base - math.log(c) + 0.5 * (1 - 1 / c ** 2) * factor ** 2, rel=1e-12)
        assert scaled <= best + 1e-12
    with pytest.raises(ShapeError, match="std_factor"):
        std_factor(x, mean, narrow[..., :10])
    # a pixel with zero std: no error there counts 0 (not NaN), an error there makes the factor infinite
    exact, deaf = x.clone(), narrow.clone()
    exact[0, 0, 0, 0], deaf[0, 0, 0, 0] = mean[0, 0, 0, 0], 0.0
    rest = ((x - mean) / narrow)[0, 0].flatten()[1:]
    assert std_factor(exact, mean, deaf) == pytest.approx(math.sqrt(float(rest.pow(2).sum()) / x.numel()), rel=1e-12)
    assert std_factor(x, mean, deaf) == math.inf


def test_summary_of_a_calibrated_predictive():
    gen = torch.Generator().manual_seed(6)
    size = 64
    mean = torch.randn(1, 1, size, size, generator=gen, dtype=torch.float64)
    std = 0.05 + 0.5 * torch.rand(1, 1, size, size, generator=gen, dtype=torch.float64)
    x = mean + std * torch.randn(1, 1, size, size, generator=gen, dtype=torch.float64)
    summary = calibration_summary(x, mean, std)
    assert set(summary) == {"ll_p1", "coverage_95", "mean_std", "rmse", "std_factor"}  # no joint covariance: only p = 1
    n = size * size
    # coverage is a binomial proportion: sd sqrt(0.95 * 0.05 / n) = 0.0034, so 0.02 is ~6 sd
    assert summary["coverage_95"] == pytest.approx(0.95, abs=0.02)
    # E[log N(x; mean, std^2)] = -0.5 log(2 pi) - log std - 0.5; the per-pixel -z^2 / 2 terms have
    # variance 1/2, so the mean over n pixels has sd sqrt(0.5 / n) = 0.011; allow 5 sd
    analytic = -0.5 * math.log(2 * math.pi) - std.log().mean().item() - 0.5
    assert summary["ll_p1"] == pytest.approx(analytic, abs=5 * math.sqrt(0.5 / n))
    assert summary["mean_std"] == pytest.approx(std.mean().item())
    assert summary["rmse"] == pytest.approx((x - mean).pow(2).mean().sqrt().item())

    # with the diagonal covariance diag(std^2) every patch size gives the independent log-likelihood
    # of the pixels it covers (64 = 32 * 2, while p = 10 covers the 60 x 60 corner)
    normal = torch.distributions.Normal(mean, std).log_prob(x)[0, 0]
    diagonal = calibration_summary(x, mean, std, covariance=torch.diag(std.flatten() ** 2), patches=(1, 2, 10, 65))
    # 65 > 64 is skipped
    assert set(diagonal) == {"ll_p1", "ll_p2", "ll_p10", "coverage_95", "mean_std", "rmse", "std_factor"}
    assert diagonal["ll_p1"] == pytest.approx(normal.mean().item(), rel=1e-10)
    assert diagonal["ll_p2"] == pytest.approx(normal.mean().item(), rel=1e-10)
    assert diagonal["ll_p10"] == pytest.approx(normal[:60, :60].mean().item(), rel=1e-10)

    # samples drawn from the predictive: ll_p1 matches the analytic value within the MC error too
    samples = mean + std * torch.randn(2000, 1, size, size, generator=gen, dtype=torch.float64)
    sampled = calibration_summary(x, mean, std, samples=samples, patches=(1, 2))
    assert set(sampled) >= {"ll_p1", "ll_p2"}
    assert sampled["ll_p1"] == pytest.approx(summary["ll_p1"], abs=0.01)


def test_errors_name_the_problem():
    gen = torch.Generator().manual_seed(7)
    mean = torch.randn(1, 1, 4, 4, generator=gen, dtype=torch.float64)
    x = mean + 0.1
    cov = torch.eye(16, dtype=torch.float64)
    samples = torch.randn(10, 1, 4, 4, generator=gen, dtype=torch.float64)
    with pytest.raises(ConfigError, match="exactly one of 'covariance' and 'samples'.*both"):
        patch_log_likelihood(x, mean, cov, 2, samples=samples)
    with pytest.raises(ConfigError, match="exactly one of 'covariance' and 'samples'.*neither"):
        patch_log_likelihood(x, mean, patch=2)
    with pytest.raises(ShapeError, match=r"covariance must have shape \(16, 16\)"):
        patch_log_likelihood(x, mean, torch.eye(15, dtype=torch.float64), 2)
    with pytest.raises(ShapeError, match="16 entries per sample"):
        patch_log_likelihood(x, mean, patch=2, samples=torch.randn(10, 1, 4, 5))
    with pytest.raises(ShapeError, match="mean has 15 entries"):
        patch_log_likelihood(x, mean.flatten()[:15], cov, 2)
    with pytest.raises(ShapeError, match="patch size"):
        patch_log_likelihood(x, mean, cov, 5)
    with pytest.raises(ShapeError, match="patch size"):
        patch_log_likelihood(x, mean, cov, 0)
    with pytest.raises(ConfigError, match="jitter"):
        patch_log_likelihood(x, mean, cov, 2, jitter=-1.0)
    with pytest.raises(ConfigError, match="not positive definite"):
        patch_log_likelihood(x, mean, torch.zeros(16, 16, dtype=torch.float64), 2)
    with pytest.raises(ConfigError, match="at most one"):
        calibration_summary(x, mean, torch.ones_like(mean), samples=samples, covariance=cov)
    with pytest.raises(ShapeError):
        calibration_summary(x, mean, torch.ones(3))


def test_uncertainty_figure_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from invprior.figures import uncertainty_figure

    gen = torch.Generator().manual_seed(8)
    x = torch.rand(1, 1, 24, 24, generator=gen)
    std = 0.02 + 0.1 * torch.rand(1, 1, 24, 24, generator=gen)
    mean = x + std * torch.randn(1, 1, 24, 24, generator=gen)
    path = uncertainty_figure(tmp_path / "unc.png", x, mean, std, title="test", curve_bins=8)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    both = uncertainty_figure(tmp_path / "sub" / "both.png", x[0, 0], mean[0, 0], std[0, 0], label="lin-DIP",
                              extra=[("MC dropout", mean + 0.01, 0.5 * std)])
    assert both.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and both.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["both.png", "sub", "unc.png"]  # no temporary files left
    with pytest.raises(ShapeError):
        uncertainty_figure(tmp_path / "bad.png", x, mean[..., :20], std)
    with pytest.raises(ShapeError):
        uncertainty_figure(tmp_path / "bad.png", x, mean, std, extra=[("dropout", mean)])
