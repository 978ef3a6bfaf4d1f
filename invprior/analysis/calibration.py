"""Calibration of a Gaussian predictive: patch log-likelihood, coverage, |error| vs std.

``LL_p = 1/n sum_patches log N(x_patch; mu_patch, C_patch)`` over non-overlapping ``p x p``
patches (the field's test log-likelihood, per pixel). ``C_patch`` comes either from a dense
covariance of the whole image or, where none fits in memory, from posterior samples.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from invprior.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from invprior.core.interfaces import PosteriorApproximation

#: Relative diagonal jitter added to sample covariances by default (times the patch's mean variance).
SAMPLE_JITTER = 1e-6
#: Patches times samples times patch pixels gathered at once on the samples path (bounds memory).
_CHUNK_ELEMENTS = 1 << 23


def gaussian_log_likelihood(x: Tensor, mean: Tensor, covariance: Tensor) -> Tensor:
    """``log N(vec x; vec mean, covariance)`` divided by the number of pixels."""
    n = x.numel()
    if mean.numel() != n or covariance.shape != (n, n):
        raise ShapeError(f"gaussian_log_likelihood: x has {n} entries, mean {mean.numel()}, "
                         f"covariance {tuple(covariance.shape)}")
    dist = torch.distributions.MultivariateNormal(mean.flatten().double(), covariance_matrix=covariance.double())
    return dist.log_prob(x.flatten().double()) / n


def patch_indices(h: int, w: int, patch: int) -> Tensor:
    """Flat indices (into a row-major ``h x w`` image) of its non-overlapping ``patch x patch`` patches,
    shape ``(num_patches, patch ** 2)``; rows and columns left over at the far edges are skipped."""
    nh, nw = h // patch, w // patch
    index = torch.arange(h * w).view(h, w)[: nh * patch, : nw * patch]
    return index.reshape(nh, patch, nw, patch).permute(0, 2, 1, 3).reshape(nh * nw, patch * patch)


def _gaussian_log_density_sum(residual: Tensor, cov: Tensor, what: str) -> float:
    """``sum_k log N(residual_k; 0, cov_k)`` for a batch ``residual (K, d)``, ``cov (K, d, d)`` (float64)."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        bad = int((info != 0).nonzero()[0, 0])
        raise ConfigError(f"patch_log_likelihood: the {what} of patch {bad} is not positive definite; "
                          f"pass a positive 'jitter'")
    z = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False).squeeze(-1)
    d = residual.shape[-1]
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum()
    return float(-0.5 * (z.pow(2).sum() + logdet + residual.shape[0] * d * math.log(2 * math.pi)))


def _add_jitter(cov: Tensor, jitter: float) -> Tensor:
    if jitter == 0.0:
        return cov
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(dim=-1)  # (K,) mean variance of each patch
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero patch still gets jitter * I
    return cov + (jitter * scale)[:, None, None] * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)


def patch_log_likelihood(x: Tensor, mean: Tensor, covariance: Tensor | None = None, patch: int = 1, *,
                         samples: Tensor | None = None, jitter: float | None = None) -> float:
    """Test log-likelihood per pixel on non-overlapping ``patch x patch`` patches of an image.

    ``x`` and ``mean`` are images whose last two axes are ``(H, W)`` (e.g. ``(1, 1, H, W)`` or
    ``(H, W)``), with ``H * W`` entries in all; pixels left over at the right and bottom edges are
    skipped. Give exactly one of

    * ``covariance``: the dense ``(H W, H W)`` predictive covariance (row-major pixel order); each
      patch uses its ``(p^2, p^2)`` sub-block;
    * ``samples``: posterior samples, shape ``(S, ...)`` with ``H * W`` entries per sample; each patch
      uses the sample covariance of its pixels centred on ``mean``,
      ``C_patch = 1/S sum_s (s - mean)(s - mean)^T`` (no dense covariance is ever formed).

    ``jitter`` is a relative diagonal jitter: ``jitter * mean(diag C_patch) * I`` is added to every
    patch covariance. It defaults to ``SAMPLE_JITTER`` (1e-6) on the samples path, so a singular
    sample covariance (``S < p^2``, constant pixels) still gives a finite number, and to 0 on the
    covariance path (the given covariance is used as it is). With ``S`` not much larger than ``p^2``
    the sample covariance is noisy and the log-likelihood is biased low (roughly
    ``-(p^2 + 1)(p^2 / 2 + chi2) / (2 S)`` per patch); use ``S >> p^2``.

    Cost: one batched Cholesky of ``(num_patches, p^2, p^2)``; the samples path also needs
    ``O(S n p^2)`` work to form the patch covariances, done in chunks of patches.
    """
    h, w = x.shape[-2:] if x.dim() >= 2 else (0, 0)
    n = h * w
    if x.dim() < 2 or x.numel() != n:
        raise ShapeError(f"patch_log_likelihood: x must be an image with last axes (H, W) and H * W entries, "
                         f"got shape {tuple(x.shape)}")
    if mean.numel() != n:
        raise ShapeError(f"patch_log_likelihood: mean has {mean.numel()} entries, x has {n}")
    if (covariance is None) == (samples is None):
        raise ConfigError("patch_log_likelihood: give exactly one of 'covariance' and 'samples' "
                          f"(got {'both' if covariance is not None else 'neither'})")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or patch > min(h, w):
        raise ShapeError(f"patch_log_likelihood: patch size must be an integer in [1, {min(h, w)}], got {patch!r}")
    if jitter is None:
        jitter = SAMPLE_JITTER if samples is not None else 0.0
    jitter = float(jitter)
    if not (math.isfinite(jitter) and jitter >= 0):
        raise ConfigError(f"patch_log_likelihood: 'jitter' must be a finite number >= 0, got {jitter!r}")

    idx = patch_indices(h, w, patch).to(x.device)  # (K, d)
    mu = mean.detach().flatten().double().to(x.device)
    residual = x.detach().flatten().double()[idx] - mu[idx]  # (K, d)
    count = idx.numel()
    if covariance is not None:
        if covariance.shape != (n, n):
            raise ShapeError(f"patch_log_likelihood: covariance must have shape ({n}, {n}), "
                             f"got {tuple(covariance.shape)}")
        cov = covariance.detach().to(x.device)
        sub = cov[idx[:, :, None], idx[:, None, :]].double()  # (K, d, d)
        return _gaussian_log_density_sum(residual, _add_jitter(sub, jitter), "covariance") / count

    assert samples is not None  # exactly one of covariance and samples is given (checked above)
    if samples.dim() < 2 or samples.shape[0] < 1 or samples[0].numel() != n:
        raise ShapeError(f"patch_log_likelihood: samples must have shape (S, ...) with {n} entries per sample, "
                         f"got {tuple(samples.shape)}")
    s = samples.detach().to(x.device).reshape(samples.shape[0], n)
    num, d = s.shape[0], idx.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // (num * d))
    total = 0.0
    for start in range(0, idx.shape[0], chunk):
        block = idx[start: start + chunk]  # (k, d)
        centred = s[:, block].double() - mu[block]  # (S, k, d)
        sub = torch.einsum("ski,skj->kij", centred, centred) / num
        total += _gaussian_log_density_sum(residual[start: start + chunk], _add_jitter(sub, jitter),
                                           "sample covariance")
    return total / count


def independent_log_likelihood(x: Tensor, mean: Tensor, std: Tensor) -> float:
    """Mean per-pixel ``log N(x; mean, std^2)`` of independent pixels (the ``p = 1`` log-likelihood)."""
    if not (x.numel() == mean.numel() == std.numel()):
        raise ShapeError(f"independent_log_likelihood: x, mean and std have {x.numel()}, {mean.numel()} "
                         f"and {std.numel()} entries")
    r = (x.detach().flatten() - mean.detach().flatten()).double()
    sigma = std.detach().flatten().double()
    return float((-0.5 * math.log(2 * math.pi) - sigma.log() - 0.5 * (r / sigma).pow(2)).mean())


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


def calibration_summary(x: Tensor, mean: Tensor, std: Tensor, samples: Tensor | None = None,
                        covariance: Tensor | None = None, patches: tuple[int, ...] = (1, 2, 10)) -> dict[str, float]:
    """Calibration numbers of a Gaussian predictive ``(mean, std)`` for the true image ``x``.

    Returns ``{"ll_p<p>": patch log-likelihood per pixel for each p in patches, "coverage_95":
    coverage at z = 1.96 (0.95 when calibrated), "mean_std": mean predicted std, "rmse": RMS error,
    "std_factor": sqrt(mean((x - mean)^2 / std^2))}``. ``std_factor`` (1 when calibrated) is the one
    factor on every std that maximises the ``p = 1`` log-likelihood (sigma scaling):
    ``LL_p1(c std) = LL_p1(std) - log c + (1 - 1/c^2) std_factor^2 / 2``.
    The patch log-likelihoods use ``samples`` or ``covariance`` (at most one of them, see
    ``patch_log_likelihood``); with neither, ``ll_p1`` is the independent Gaussian with ``std``
    and larger patches are left out, since ``std`` says nothing about correlations. Patches larger
    than the image are left out too.
    """
    n = x.numel()
    if x.dim() < 2 or mean.numel() != n or std.numel() != n:
        raise ShapeError(f"calibration_summary: x must be an image (..., H, W) and mean and std must have as many "
                         f"entries; got shapes {tuple(x.shape)}, {tuple(mean.shape)} and {tuple(std.shape)}")
    x = x.detach()
    mean, std = mean.detach().reshape(x.shape), std.detach().reshape(x.shape)
    if samples is not None and covariance is not None:
        raise ConfigError("calibration_summary: give at most one of 'samples' and 'covariance', got both")
    h, w = x.shape[-2:]
    summary: dict[str, float] = {}
    for p in patches:
        if p > min(h, w):
            continue
        if samples is None and covariance is None:
            if p == 1:
                summary["ll_p1"] = independent_log_likelihood(x, mean, std)
            continue
        summary[f"ll_p{p}"] = patch_log_likelihood(x, mean, covariance, p, samples=samples)
    error = (x - mean).double()
    summary["coverage_95"] = coverage(x, mean, std, 1.96)
    summary["mean_std"] = float(std.double().mean())
    summary["rmse"] = float(error.pow(2).mean().sqrt())
    summary["std_factor"] = std_factor(x, mean, std)
    return summary


def std_factor(x: Tensor, mean: Tensor, std: Tensor) -> float:
    """``sqrt(mean((x - mean)^2 / std^2))``: the factor on every std that maximises the independent
    (``p = 1``) log-likelihood of ``x``; below 1 the std is too wide, above 1 too narrow. A pixel with zero
    std counts 0 when its error is zero too, else makes the factor infinite."""
    if not (x.numel() == mean.numel() == std.numel()):
        raise ShapeError(f"std_factor: x, mean and std have {x.numel()}, {mean.numel()} and {std.numel()} entries")
    error = (x.detach().flatten() - mean.detach().flatten()).double()
    sigma = std.detach().flatten().double()
    z2 = torch.where(error == 0, torch.zeros_like(error), error.pow(2) / sigma.pow(2))
    return float(z2.mean().sqrt())


def expected_coverage(z: float) -> float:
    """Coverage of ``+-z`` std under a Gaussian: ``erf(z / sqrt 2)``."""
    return math.erf(z / math.sqrt(2))


def posterior_calibration(posterior: PosteriorApproximation, x: Tensor,
                          patches: tuple[int, ...] = (1, 2, 10)) -> dict[str, float]:
    """``calibration_summary`` of a fitted posterior for one image: its stored samples when it keeps
    them, else its dense covariance when it has one, else the independent Gaussian of its ``std``."""
    structure: dict[str, Tensor] = {}
    for name in ("samples", "covariance"):
        try:
            structure[name] = getattr(posterior, name)
            break
        except (AttributeError, ConfigError):
            continue
    mean, std = posterior.mean, posterior.std
    return calibration_summary(x.to(mean), mean, std, patches=patches, **structure)
