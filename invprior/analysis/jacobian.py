"""Spectra of generator Jacobians without forming them: randomised SVD through jvp/vjp.

``J = dG(theta; z)/dtheta`` (``n`` pixels x ``P`` weights) is reached only through ``J v`` and
``J^T u``, through ``invprior.linalg.randomized_svd``.
"""

from __future__ import annotations

from torch import Tensor

from invprior.core.interfaces import Generator
from invprior.errors import ConfigError
from invprior.linalg import randomized_svd
from invprior.posterior.linearization import Linearization


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
