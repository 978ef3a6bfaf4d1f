"""Image-space noise for a Gaussian predictive: the observation noise seen through the operator.

``eta^2 = s^2 / n * sum_{i <= k} sigma_i^{-2}`` with ``sigma_1 >= sigma_2 >= ...`` the singular values of
``A`` (``n`` pixels): the mean diagonal of ``s^2 (A^T A)^+`` over ``A``'s ``k`` leading right singular
vectors, i.e. the pixel-wise variance that noise of variance ``s^2`` leaves in a least-squares image
restricted to the directions the data resolve best. Added as ``eta^2 I`` to lin-DIP's predictive
covariance (the reference implementation's "image noise correction").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.errors import ConfigError
from invprior.linalg import randomized_svd
from invprior.validation import positive_int, real

#: Singular values below this fraction of the largest are left out: the sum stays on directions resolved
#: within a condition number of 100 (a severely ill-posed operator such as EIT has sigma_100 ~ 1e-6 sigma_1,
#: whose sigma^-2 would swamp every image value; parallel-beam CT keeps sigma_100 above 0.1 sigma_1).
RELATIVE_RANK_TOLERANCE = 1e-2


def usable_rank(rank: int, measurements: int) -> int:
    """``k`` actually used: at most half the measurements, so that the sum stays on the well-resolved part
    of the spectrum (the tail of an under-sampled CT operator holds near-zero singular values)."""
    return max(1, min(positive_int(rank, "image noise: rank"), measurements // 2))


def leading_singular_values(operator: ForwardOperator, k: int, dense: Tensor | None = None, seed: int = 0,
                            device: torch.device | str = "cpu") -> Tensor:
    """The ``k`` largest singular values of a linear ``operator`` (float64, descending): from its dense
    matrix ``dense`` when given, else by a randomised SVD through ``operator`` and ``operator.adjoint`` on
    ``device`` (``3 k`` vectors, three power iterations: CT spectra are flat, and a narrower sketch
    underestimates the tail that dominates ``sum sigma^{-2}``; ``24 k`` operator products in all)."""
    if dense is not None:
        return torch.linalg.svdvals(dense.double())[:k]
    if not operator.is_linear:
        raise ConfigError(f"image noise: {operator.name} is nonlinear; pass its tangent operator.linearized(x)")
    domain, measured = operator.domain_shape, operator.range_shape
    n, m = math.prod(domain), math.prod(measured)
    k = min(k, m, n)  # as many as there are (the dense path's svdvals stop there too)
    matvec = lambda v: operator(v.view(-1, *domain)).reshape(v.shape[0], m)             # noqa: E731
    rmatvec = lambda u: operator.adjoint(u.view(-1, *measured)).reshape(u.shape[0], n)  # noqa: E731
    _, s, _ = randomized_svd(matvec, rmatvec, (m, n), k, oversample=2 * k, power_iterations=3,
                             seed=seed, dtype=torch.float64, device=device)
    return s


def projected_noise_variance(operator: ForwardOperator, noise_variance: float, rank: int = 100,
                             dense: Tensor | None = None, seed: int = 0, device: torch.device | str = "cpu") -> float:
    """``eta^2 = s^2 / n * sum_{i <= k} sigma_i^{-2}`` over the ``k = usable_rank(rank, m)`` leading
    singular values of ``operator`` (``dense``: its ``(m, n)`` matrix, if already formed)."""
    noise_variance = real(noise_variance, "image noise: noise variance", minimum=0.0)
    n, m = math.prod(operator.domain_shape), math.prod(operator.range_shape)
    k = usable_rank(rank, m)
    sigma = leading_singular_values(operator, k, dense, seed, device)
    sigma = sigma[sigma > RELATIVE_RANK_TOLERANCE * sigma[0]]
    return noise_variance * float(sigma.pow(-2).sum()) / n
