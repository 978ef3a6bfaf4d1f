"""Calibration of a Gaussian predictive: patch log-likelihood, coverage, |error| vs std.

``LL_p = 1/n sum_patches log N(x_patch; mu_patch, C_patch)`` over non-overlapping ``p x p``
patches (the field's test log-likelihood, per pixel).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invprior.errors import ShapeError


def gaussian_log_likelihood(x: Tensor, mean: Tensor, covariance: Tensor) -> Tensor:
    """``log N(vec x; vec mean, covariance)`` divided by the number of pixels."""
    n = x.numel()
    if mean.numel() != n or covariance.shape != (n, n):
        raise ShapeError(f"gaussian_log_likelihood: x has {n} entries, mean {mean.numel()}, covariance {tuple(covariance.shape)}")
    dist = torch.distributions.MultivariateNormal(mean.flatten().double(), covariance_matrix=covariance.double())
    return dist.log_prob(x.flatten().double()) / n


def patch_log_likelihood(x: Tensor, mean: Tensor, covariance: Tensor, patch: int) -> float:
    """Test log-likelihood per pixel on non-overlapping ``patch x patch`` patches of a ``(1, 1, H, W)`` image
    (pixels left over at the right and bottom edges are skipped)."""
    h, w = x.shape[-2:]
    if patch < 1 or patch > min(h, w):
        raise ShapeError(f"patch_log_likelihood: patch size must lie in [1, {min(h, w)}], got {patch}")
    index = torch.arange(h * w).view(h, w)
    total, count = 0.0, 0
    for i in range(0, h - patch + 1, patch):
        for j in range(0, w - patch + 1, patch):
            idx = index[i: i + patch, j: j + patch].flatten()
            sub = covariance[idx][:, idx]
            total += float(gaussian_log_likelihood(x.flatten()[idx], mean.flatten()[idx], sub)) * idx.numel()
            count += idx.numel()
    return total / count


def coverage(x: Tensor, mean: Tensor, std: Tensor, z: float = 1.96) -> float:
    """Fraction of pixels with ``|x - mean| <= z * std`` (0.95 for a calibrated Gaussian at z = 1.96)."""
    return float(((x - mean).abs() <= z * std).double().mean())


def calibration_curve(x: Tensor, mean: Tensor, std: Tensor, bins: int = 10) -> tuple[list[float], list[float]]:
    """Pixels binned by predicted std (quantile bins): ``(mean std, RMS error)`` per bin."""
    error, sigma = (x - mean).flatten().double(), std.flatten().double()
    order = sigma.argsort()
    predicted, observed = [], []
    for chunk in order.chunk(bins):
        if chunk.numel():
            predicted.append(float(sigma[chunk].mean()))
            observed.append(float(error[chunk].pow(2).mean().sqrt()))
    return predicted, observed


def expected_coverage(z: float) -> float:
    """Coverage of ``+-z`` std under a Gaussian: ``erf(z / sqrt 2)``."""
    return math.erf(z / math.sqrt(2))
