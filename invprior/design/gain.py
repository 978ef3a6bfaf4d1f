"""Expected information gain of candidate measurements under a Gaussian predictive over images.

The predictive is ``x = m + L w`` with ``w ~ N(0, I_r)`` (``GaussianFactor``: ``L`` from a dense covariance,
from posterior samples, ``L = (x_s - mean) / sqrt(S - 1)``, or from a smoothness prior in cosine modes).
Candidate ``j`` measures ``y_j = B_j x + e_j``, ``e_j ~ N(0, s_j^2 I)``; with ``P_j = B_j L / s_j`` its gain
given the chosen set ``A`` is

    IG_j | A = 1/2 log det(I + P_j Lambda_A^{-1} P_j^T),  Lambda_A = I_r + sum_{k in A} P_k^T P_k,

the mutual information between ``y_j`` and ``x`` after measuring ``A`` (closed form for a linear-Gaussian
model). Greedy selection adds the best candidate and updates ``Lambda_A``; everything lives in ``r x r``. For a
prior (a predictive that has not seen the measured candidates) ``A`` starts with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import scipy.fft
import torch
from torch import Tensor

from invprior.core.interfaces import PosteriorApproximation
from invprior.errors import ConfigError, ShapeError
from invprior.validation import positive_int

#: Largest image whose dense predictive covariance is factorised exactly (the factor has a column per pixel);
#: larger ones are sampled.
MAX_EXACT_PIXELS = 1024


@dataclass(frozen=True)
class GaussianFactor:
    """``x = mean + factor @ w``, ``w ~ N(0, I_r)``: ``mean`` ``(1, *image)``, ``factor`` ``(n, r)``."""

    mean: Tensor
    factor: Tensor

    def __post_init__(self) -> None:
        n = self.mean.numel()
        if self.factor.ndim != 2 or self.factor.shape[0] != n:
            raise ShapeError(f"GaussianFactor: factor must have shape ({n}, r), got {tuple(self.factor.shape)}")

    @classmethod
    def from_covariance(cls, mean: Tensor, covariance: Tensor) -> GaussianFactor:
        """The exact factor ``L = V sqrt(max(lambda, 0))`` of a symmetric covariance ``C = V diag(lambda) V^T``."""
        values, vectors = torch.linalg.eigh(covariance.double())
        keep = values > values.max() * 1e-12
        return cls(mean, vectors[:, keep] * values[keep].sqrt())

    @classmethod
    def from_samples(cls, samples: Tensor) -> GaussianFactor:
        """The sample mean and ``L = (x_s - mean) / sqrt(S - 1)`` of ``S >= 2`` samples ``(S, 1, *image)``."""
        if samples.shape[0] < 2:
            raise ConfigError(f"GaussianFactor: at least two samples are needed, got {samples.shape[0]}")
        flat = samples.double().flatten(1)
        mean = flat.mean(dim=0)
        return cls(mean.view(samples.shape[1:]), ((flat - mean) / (flat.shape[0] - 1) ** 0.5).T)

    @classmethod
    def independent(cls, mean: Tensor, std: Tensor, samples: int, seed: int = 0) -> GaussianFactor:
        """A sampled factor of ``N(mean, diag(std^2))``: the pixel-wise variance without correlations."""
        noise = torch.randn(positive_int(samples, "samples"), *std.shape,
                            generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return cls.from_samples(mean.double().cpu() + noise * std.double().cpu())

    @classmethod
    def smoothness_prior(cls, image: Tensor, length: float, modes: int) -> GaussianFactor:
        """The Gaussian prior behind Tikhonov regularisation with a smoothness penalty, in its ``modes`` smoothest
        cosine modes: ``x = image + sum_k c_k u_k``, ``c_k ~ N(0, a^2 (1 + length^2 mu_k)^-2)``, with ``u_k`` the
        orthonormal DCT-II images (eigenvectors of the Neumann Laplacian, eigenvalues
        ``mu_k = 4 sin^2(pi i / 2h) + 4 sin^2(pi j / 2w)``) and ``a^2`` matching the energy of ``image``
        ``(1, 1, h, w)`` (a reconstruction) about its mean in those modes. ``length`` in pixels."""
        h, w = image.shape[-2:]
        if image.numel() != h * w:
            raise ShapeError(f"GaussianFactor: a smoothness prior is made for one 2-D image, got {tuple(image.shape)}")
        modes = min(positive_int(modes, "modes"), h * w)
        mu = (4 * np.sin(np.pi * np.arange(h) / (2 * h)) ** 2)[:, None] + \
            (4 * np.sin(np.pi * np.arange(w) / (2 * w)) ** 2)[None, :]
        weight = (1.0 + length ** 2 * mu) ** -2.0
        kept = np.argsort(-weight, axis=None, kind="stable")[:modes]
        pixels = image.detach().double().cpu().numpy().reshape(h, w)
        energy = scipy.fft.dctn(pixels - pixels.mean(), norm="ortho").ravel()[kept]
        amplitude2 = float((energy ** 2).sum() / weight.ravel()[kept].sum())
        unit = np.zeros((len(kept), h * w))
        unit[np.arange(len(kept)), kept] = np.sqrt(amplitude2 * weight.ravel()[kept])
        basis = scipy.fft.idctn(unit.reshape(-1, h, w), axes=(1, 2), norm="ortho").reshape(len(kept), h * w)
        return cls(image.detach().double().cpu(), torch.from_numpy(basis.T.copy()))

    @classmethod
    def from_posterior(cls, posterior: PosteriorApproximation, samples: int = 64, seed: int = 0,
                       correlations: bool = True) -> GaussianFactor:
        """The factor of a fitted posterior: its low-rank factor ``F`` when it has one (lin-DIP's subspace path;
        the pixel-wise remainder ``diag(d)`` is left out), exact from its dense covariance when it forms one of at
        most ``MAX_EXACT_PIXELS`` pixels, else from ``samples`` of its draws; ``correlations=False`` keeps only its
        pixel-wise std (``independent``)."""
        if not correlations:
            return cls.independent(posterior.mean, posterior.std, samples, seed)
        low_rank = getattr(posterior, "low_rank_factor", None)
        if low_rank is not None:
            return cls(posterior.mean.double(), low_rank.double())
        if posterior.mean.numel() <= MAX_EXACT_PIXELS and hasattr(type(posterior), "covariance"):
            try:  # the class has a ``covariance`` (not part of the interface)
                return cls.from_covariance(posterior.mean, cast(Any, posterior).covariance)
            except ConfigError:  # a path that keeps samples only
                pass
        return cls.from_samples(posterior.sample(positive_int(samples, "samples"), seed=seed))


def whitened_projections(gaussian: GaussianFactor, project: Callable[[Tensor], Tensor],
                         noise_std: float) -> Tensor:
    """``P_j = B_j L / s`` for every candidate: ``project`` maps images ``(r, *image)`` (the columns of ``L``) to
    candidate measurements ``(r, M, d)``; the result is ``(M, d, r)`` in float64."""
    r = gaussian.factor.shape[1]
    measured = project(gaussian.factor.T.reshape(r, *gaussian.mean.shape[1:]))
    if measured.ndim != 3 or measured.shape[0] != r:
        raise ShapeError(f"design: the candidate projection must return (r, M, d), got {tuple(measured.shape)}")
    if not noise_std > 0:
        raise ConfigError(f"design: the noise std must be positive, got {noise_std}")
    return (measured.double() / noise_std).permute(1, 2, 0).contiguous()


def information_gains(projections: Tensor, precision: Tensor) -> Tensor:
    """``IG_j = 1/2 log det(I + P_j Lambda^{-1} P_j^T)`` for every candidate ``P_j`` of ``(M, d, r)``, given the
    latent precision ``Lambda`` ``(r, r)``; the determinant is taken in the smaller of ``d`` and ``r``."""
    root = torch.linalg.cholesky(precision)
    # Q_j = P_j R^{-T} with Lambda = R R^T, so P_j Lambda^{-1} P_j^T = Q_j Q_j^T
    q = torch.linalg.solve_triangular(root, projections.transpose(1, 2), upper=False).transpose(1, 2)
    d, r = q.shape[1:]
    gram = q.transpose(1, 2) @ q if r <= d else q @ q.transpose(1, 2)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.cholesky(eye + gram).diagonal(dim1=1, dim2=2).log().sum(dim=1)  # 1/2 log det


@dataclass(frozen=True)
class GreedyChoice:
    """The candidates ``chosen`` in order and ``gains[k]`` (nats), the gain of ``chosen[k]`` given those before
    it."""

    chosen: tuple[int, ...]
    gains: tuple[float, ...]


def greedy_batch(projections: Tensor, batch: int, exclude: Sequence[int] = (),
                 condition_on: Sequence[int] = ()) -> GreedyChoice:
    """Choose ``batch`` candidates one by one, each the one of largest ``IG_j | A``, ``A`` those chosen so far
    and ``condition_on`` (candidates measured that the predictive has not seen: empty for a posterior, the
    measured ones for a prior); no candidate is chosen twice, nor one of ``exclude`` (those measured)."""
    m, _, r = projections.shape
    batch = positive_int(batch, "design: batch")
    excluded = sorted({int(k) for k in exclude})
    conditioned = sorted({int(k) for k in condition_on})
    for name, indices in (("excluded", excluded), ("conditioning", conditioned)):
        if any(not 0 <= k < m for k in indices):
            raise ConfigError(f"design: {name} candidates must be indices below {m}, got {indices}")
    if batch > m - len(excluded):
        raise ConfigError(f"design: cannot choose {batch} more of {m} candidates when {len(excluded)} are taken")
    precision = torch.eye(r, dtype=projections.dtype, device=projections.device)
    for k in conditioned:
        precision = precision + projections[k].T @ projections[k]
    taken = torch.zeros(m, dtype=torch.bool, device=projections.device)
    taken[excluded] = True
    chosen: list[int] = []
    gains: list[float] = []
    for _ in range(batch):
        scores = information_gains(projections, precision).masked_fill(taken, -torch.inf)
        best = int(scores.argmax())
        chosen.append(best)
        gains.append(float(scores[best]))
        taken[best] = True
        precision = precision + projections[best].T @ projections[best]
    return GreedyChoice(tuple(chosen), tuple(gains))
