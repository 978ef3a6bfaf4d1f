"""Matrix-free linear algebra: batched conjugate gradients for symmetric positive definite systems (one
system per image) and a randomised SVD.

``randomized_svd`` is the range finder of Halko, Martinsson & Tropp (SIAM Rev. 2011, Alg. 4.4 with ``q``
power iterations, then Alg. 5.1): ``Y = (M M^T)^q M Omega``, ``Q = orth(Y)``, ``B = Q^T M``,
``B = U_B S V^T`` and ``U = Q U_B``; its error is within a small factor of ``sigma_{k+1}`` (tighter with
more power iterations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from invprior.errors import ConfigError
from invprior.validation import positive_int


@dataclass
class CGInfo:
    """Outcome per image: iterations used, final relative residual ``||b - M x|| / ||b||``, converged, and
    ``L x`` when the solve carried a companion map ``L`` (else ``None``)."""

    iterations: int
    relative_residual: Tensor
    converged: Tensor
    companion: Tensor | None = None


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(dim=1)


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None,
                       max_iterations: int = 200, rtol: float = 1e-6,
                       preconditioner: Callable[[Tensor], Tensor] | None = None,
                       companion: bool = False) -> tuple[Tensor, CGInfo]:
    """Solve ``M x = b`` for every image of the batch, ``M`` symmetric positive definite.

    ``preconditioner`` applies ``P^{-1}`` (``P`` SPD, ``P ~ M``): CG then runs on ``P^{-1} M``.
    Stops when every image reaches ``||b - M x|| <= rtol ||b||`` or after ``max_iterations``;
    the returned ``CGInfo`` says which images converged (non-convergence is never silent).
    With ``companion=True``, ``apply(p)`` returns ``(M p, L p)`` for a linear map ``L`` whose value
    comes for free with ``M p``; since ``x = sum_i alpha_i p_i``, ``L x = sum_i alpha_i L p_i`` is
    accumulated alongside and returned as ``info.companion`` (no extra application of ``L``).
    """
    if companion and x0 is not None:
        raise ValueError("conjugate_gradient: a companion map is accumulated from x0 = 0 only")
    precondition = preconditioner if preconditioner is not None else (lambda v: v)
    tiny = torch.finfo(b.dtype).tiny
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    z = precondition(r)
    p = z.clone()
    rz = _dot(r, z)
    b_norm = b.flatten(1).norm(dim=1).clamp_min(tiny)
    r_norm = r.flatten(1).norm(dim=1)
    # rounding can make r^T P^{-1} r or p^T M p non-positive (breakdown): such a system stops where it is
    broken = ~(rz > 0) & (r_norm > rtol * b_norm)
    iterations = 0
    carried = None
    for iterations in range(1, max_iterations + 1):
        active = (r_norm > rtol * b_norm) & ~broken
        if not bool(active.any()):
            iterations -= 1
            break
        mp = apply(p)
        if companion:
            mp, lp = mp
        curvature = _dot(p, mp)
        broken = broken | (active & ~(curvature > 0))
        active = active & ~broken
        alpha = torch.where(active, rz / curvature.clamp_min(tiny), torch.zeros_like(rz))
        x = x + _per_image(alpha, x) * p
        if companion:
            carried = _per_image(alpha, lp) * lp if carried is None else carried + _per_image(alpha, lp) * lp
        r = r - _per_image(alpha, r) * mp
        z = precondition(r)
        rz_new = _dot(r, z)
        broken = broken | (active & ~(rz_new > 0) & (r.flatten(1).norm(dim=1) > rtol * b_norm))
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + _per_image(beta, p) * p
        rz, r_norm = rz_new, r.flatten(1).norm(dim=1)
    relative = r_norm / b_norm
    if companion and carried is None:  # b = 0 for every image: x = 0, L x = 0
        carried = torch.zeros_like(apply(p)[1])
    return x, CGInfo(iterations, relative, relative <= rtol, carried)


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
