"""The compressed-sensing theory check for the two-layer generator ``G(C) = ReLU(U C) v``.

At a random initialisation ``C ~ N(0, I)`` the Jacobian ``J = dG/dC`` has Gram matrix
``J J^T = (1/k) sum_j diag(s_j) U U^T diag(s_j)`` with ``s_j = 1[U c_j > 0]``. Its expectation is
``S(U)_ab = ||u||^2 g(rho_ab)``, ``rho = (u (*) u)/||u||^2`` the normalised circular autocorrelation and
``g(z) = (1 - arccos(z)/pi) z / 2`` (``P(X > 0, Y > 0) = (1 - arccos(rho)/pi)/2`` for standard Gaussians with
correlation ``rho``). ``S(U)`` is circulant, so its eigenvectors are Fourier modes and the predicted
singular values of ``J`` are ``||u|| sqrt(|F g(u (*) u / ||u||^2)|)`` (Heckel & Soltanolkotabi, ICML 2020).
By the law of large numbers the empirical Gram approaches ``S(U)`` like ``1/sqrt(k)`` in the width ``k``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from invprior.generators.two_layer import TwoLayerGenerator
from invprior.posterior.linearization import Linearization


def relu_kernel(z: Tensor) -> Tensor:
    """``g(z) = (1 - arccos(z)/pi) z / 2`` on correlations ``z`` in ``[-1, 1]``."""
    z = z.clamp(-1.0, 1.0)
    return (1.0 - torch.arccos(z) / math.pi) * z / 2.0


def _autocorrelation(kernel: Tensor) -> Tensor:
    """``r(d) = sum_c u(c) u(c + d)`` (circular), the first column of ``U U^T``."""
    spectrum = torch.fft.fft(kernel.double())
    return torch.fft.ifft(spectrum.abs() ** 2).real


def predicted_gram(kernel: Tensor) -> Tensor:
    """``S(U) = ||u||^2 g(U U^T / ||u||^2)``, the expected ``J J^T`` at initialisation, as an ``(n, n)`` matrix."""
    r = _autocorrelation(kernel)
    norm2 = float(kernel.double().pow(2).sum())
    column = norm2 * relu_kernel(r / norm2)
    n = column.numel()
    index = (torch.arange(n).view(-1, 1) - torch.arange(n).view(1, -1)) % n
    return column[index]


def predicted_singular_values(kernel: Tensor) -> Tensor:
    """``||u|| sqrt(|F g(u (*) u / ||u||^2)|)``, sorted descending: the singular values of ``S(U)^{1/2}``."""
    r = _autocorrelation(kernel)
    norm2 = float(kernel.double().pow(2).sum())
    eigenvalues = torch.fft.fft(relu_kernel(r / norm2)).real.abs()
    return (math.sqrt(norm2) * eigenvalues.sqrt()).sort(descending=True).values


def empirical_gram(generator: TwoLayerGenerator) -> Tensor:
    """``J J^T`` of the generator at its current weights, from autograd in float64 (a dense ``n x n k``
    Jacobian: for small signals)."""
    network = copy.deepcopy(generator).double()
    lin = Linearization(network, torch.zeros(1, 0, dtype=torch.float64), ["weights"])
    jacobian = lin.jacobian()  # (n, n k)
    return jacobian @ jacobian.T


def gram_error(generator: TwoLayerGenerator) -> float:
    """Relative Frobenius distance ``||J J^T - S(U)||_F / ||S(U)||_F`` of the generator's empirical Gram."""
    predicted = predicted_gram(generator.kernel)
    return float(torch.linalg.matrix_norm(empirical_gram(generator) - predicted) / torch.linalg.matrix_norm(predicted))
