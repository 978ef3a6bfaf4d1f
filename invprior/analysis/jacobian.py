"""Spectra of generator Jacobians without forming them: randomised SVD through jvp/vjp.

``J = dG(theta; z)/dtheta`` (``n`` pixels x ``P`` weights) is reached only through ``J v`` and
``J^T u``. ``randomized_svd`` is the range finder of Halko, Martinsson & Tropp (SIAM Rev. 2011,
Alg. 4.4 with ``q`` power iterations, then Alg. 5.1): ``Y = (J J^T)^q J Omega``, ``Q = orth(Y)``,
``B = Q^T J``, ``B = U_B S V^T`` and ``U = Q U_B``; its error is within a small factor of
``sigma_{k+1}`` (tighter with more power iterations).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from invprior.core.interfaces import Generator
from invprior.errors import ConfigError
from invprior.posterior.linearization import Linearization
from invprior.validation import positive_int


def randomized_svd(matvec: Callable[[Tensor], Tensor], rmatvec: Callable[[Tensor], Tensor], shape: tuple[int, int],
                   k: int, oversample: int = 10, power_iterations: int = 2, seed: int = 0,
                   dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Leading ``k`` singular triplets of a matrix ``M`` (``shape = (rows, cols)``) given only
    ``matvec: (b, cols) -> (b, rows)`` (``M v`` row-wise) and ``rmatvec: (b, rows) -> (b, cols)``.

    Returns ``U (rows, k)``, ``S (k,)`` descending and ``V (cols, k)``. Each power iteration costs one
    ``matvec`` and one ``rmatvec`` of ``k + oversample`` vectors; the algebra runs in float64.
    """
    rows, cols = (positive_int(s, "randomized_svd: shape") for s in shape)
    k = positive_int(k, "randomized_svd: k")
    if k > min(rows, cols):
        raise ConfigError(f"randomized_svd: k = {k} exceeds min(shape) = {min(rows, cols)}")
    if int(oversample) < 0 or int(power_iterations) < 0:
        raise ConfigError(f"randomized_svd: oversample and power_iterations must be >= 0, got {oversample}, "
                          f"{power_iterations}")
    width = min(k + int(oversample), rows, cols)
    gen = torch.Generator().manual_seed(int(seed))
    omega = torch.randn(width, cols, generator=gen, dtype=torch.float64).to(device)
    apply = lambda v: matvec(v.to(dtype)).double()     # noqa: E731
    apply_t = lambda u: rmatvec(u.to(dtype)).double()  # noqa: E731
    q = torch.linalg.qr(apply(omega).T).Q               # (rows, width)
    for _ in range(int(power_iterations)):            # re-orthonormalise between products (stability)
        w = torch.linalg.qr(apply_t(q.T).T).Q           # (cols, width)
        q = torch.linalg.qr(apply(w.T).T).Q
    b = apply_t(q.T)                                    # (width, cols) = Q^T M
    u_b, s, vh = torch.linalg.svd(b, full_matrices=False)
    return (q @ u_b)[:, :k], s[:k], vh[:k].T


def jacobian_svd(generator: Generator, z: Tensor, k: int, parameters: list[str] | None = None,
                 oversample: int = 10, power_iterations: int = 2, seed: int = 0
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Leading ``k`` singular values/vectors of ``dG(theta; z)/dtheta`` at the current weights, over
    ``parameters`` (default: every convolution kernel, see ``Linearization``), for one input ``z``.

    Returns ``U (n, k)`` (left singular vectors as flat images), ``S (k,)`` and ``V (P, k)``.
    """
    if z.shape[0] != 1:
        raise ConfigError(f"jacobian_svd: give one input (batch of 1), got a batch of {z.shape[0]}")
    lin = Linearization(generator, z, parameters)
    n, p = lin.output.numel(), lin.num_parameters
    matvec = lambda v: lin.jvps(v).reshape(v.shape[0], n)                 # noqa: E731
    rmatvec = lambda u: lin.vjps(u.view(-1, *lin.output.shape[1:]))        # noqa: E731
    return randomized_svd(matvec, rmatvec, (n, p), k, oversample, power_iterations, seed,
                          dtype=lin.output.dtype, device=lin.output.device)
