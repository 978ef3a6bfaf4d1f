"""Jacobian spectra: randomised SVD against dense SVDs, and the two-layer theory S(U) against autograd."""

from __future__ import annotations

import math

import pytest
import torch

from invprior.analysis.jacobian import jacobian_svd
from invprior.analysis.two_layer import (
    empirical_gram,
    gram_error,
    predicted_gram,
    predicted_singular_values,
    relu_kernel,
)
from invprior.errors import ConfigError
from invprior.generators.two_layer import TwoLayerGenerator
from invprior.generators.unet import UNet
from invprior.linalg import randomized_svd
from invprior.posterior.linearization import Linearization

F64 = torch.float64


def _matrix_with_spectrum(rows: int, cols: int, singular_values: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, rows, generator=gen, dtype=F64)).Q[:, :singular_values.numel()]
    v = torch.linalg.qr(torch.randn(cols, cols, generator=gen, dtype=F64)).Q[:, :singular_values.numel()]
    return (u * singular_values) @ v.T


def test_randomized_svd_recovers_a_decaying_spectrum():
    s = 0.7 ** torch.arange(40, dtype=F64)
    m = _matrix_with_spectrum(60, 90, s, 0)
    u, found, v = randomized_svd(lambda x: x @ m.T, lambda y: y @ m, (60, 90), 8)
    assert torch.allclose(found, s[:8], rtol=1e-6)
    # singular vectors up to sign: |<u_i, u_i_true>| = 1
    exact_u, _, exact_vh = torch.linalg.svd(m)
    assert torch.allclose((u * exact_u[:, :8]).sum(0).abs(), torch.ones(8, dtype=F64), atol=1e-5)
    assert torch.allclose((v * exact_vh[:8].T).sum(0).abs(), torch.ones(8, dtype=F64), atol=1e-5)


def test_power_iterations_sharpen_a_flat_spectrum():
    s = torch.cat([torch.linspace(2.0, 1.0, 10, dtype=F64), 0.9 * torch.ones(50, dtype=F64)])
    m = _matrix_with_spectrum(80, 80, s, 1)
    errors = [float((randomized_svd(lambda x: x @ m.T, lambda y: y @ m, (80, 80), 10, oversample=5,
                                    power_iterations=q)[1] - s[:10]).abs().max()) for q in (0, 4)]
    assert errors[1] < 0.3 * errors[0]


def test_jacobian_svd_of_a_tiny_unet_matches_the_dense_jacobian():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet(preset="small", scales=2, channels=4, skip_channels=2).double()
    z = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    dense = Linearization(net, z).jacobian()           # (64, P)
    exact = torch.linalg.svdvals(dense)
    _, found, _ = jacobian_svd(net, z, k=6, power_iterations=3)
    assert torch.allclose(found, exact[:6], rtol=1e-3)


def test_bad_requests_are_refused():
    m = torch.eye(5, dtype=F64)
    with pytest.raises(ConfigError, match="exceeds"):
        randomized_svd(lambda x: x @ m, lambda y: y @ m, (5, 5), 6)
    net = UNet(preset="small", scales=2, channels=4).double()
    with pytest.raises(ConfigError, match="batch of 1"):
        jacobian_svd(net, torch.zeros(2, 1, 8, 8, dtype=F64), k=2)


# -- two-layer generator: S(U) ------------------------------------------------------------------

def test_relu_kernel_is_the_probability_of_two_positive_gaussians_times_rho():
    """g(rho) = rho P(X > 0, Y > 0) for standard Gaussians with correlation rho (Monte Carlo check)."""
    gen = torch.Generator().manual_seed(0)
    for rho in (-0.6, 0.0, 0.3, 0.9):
        a = torch.randn(400_000, generator=gen, dtype=F64)
        b = rho * a + math.sqrt(1 - rho ** 2) * torch.randn(400_000, generator=gen, dtype=F64)
        estimate = rho * float(((a > 0) & (b > 0)).double().mean())
        assert abs(float(relu_kernel(torch.tensor(rho))) - estimate) < 3e-3
    assert float(relu_kernel(torch.tensor(1.0))) == pytest.approx(0.5)


def test_predicted_singular_values_are_those_of_the_predicted_gram():
    kernel = TwoLayerGenerator(size=6, width=2).kernel
    gram = predicted_gram(kernel)
    assert torch.allclose(gram, gram.T)
    eigenvalues = torch.linalg.eigvalsh(gram).flip(0)
    assert torch.allclose(predicted_singular_values(kernel) ** 2, eigenvalues.abs(), rtol=1e-8, atol=1e-12)
    # Fourier modes are its eigenvectors
    n = kernel.numel()
    mode = torch.cos(2 * math.pi * 3 * torch.arange(n, dtype=F64) / n)
    image = gram @ mode
    assert torch.allclose(image, (image @ mode / (mode @ mode)) * mode, atol=1e-10)


def test_empirical_gram_approaches_s_of_u_as_the_width_grows():
    widths = (16, 64, 256, 1024)
    errors = [sum(gram_error(TwoLayerGenerator(size=6, width=k, kernel_width=1.5, seed=s)) for s in range(3)) / 3
              for k in widths]
    # law of large numbers: error ~ 1/sqrt(k), i.e. halves per 4x width
    assert all(b < 0.7 * a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05, errors
    ratio = errors[0] / errors[-1]
    assert 4.0 < ratio < 16.0, errors  # sqrt(1024 / 16) = 8
    # and the spectrum: the leading singular values of J match ||u|| sqrt(|F g(u (*) u / ||u||^2)|)
    generator = TwoLayerGenerator(size=6, width=1024, kernel_width=1.5, seed=0)
    found = torch.linalg.eigvalsh(empirical_gram(generator)).flip(0).clamp_min(0).sqrt()
    assert torch.allclose(found[:8], predicted_singular_values(generator.kernel)[:8], rtol=0.03)


def test_empirical_gram_is_j_j_transpose_from_the_closed_form():
    generator = TwoLayerGenerator(size=4, width=8, seed=3)
    u = generator.kernel.double()
    n = u.numel()
    circulant = torch.stack([torch.roll(u, shifts=i) for i in range(n)], dim=1)  # U, first column u
    c = generator.weights.detach().double()
    active = (circulant @ c > 0).double()                                      # (n, k)
    expected = sum(torch.diag(active[:, j]) @ circulant @ circulant.T @ torch.diag(active[:, j])
                   for j in range(8)) / 8
    assert torch.allclose(empirical_gram(generator), expected, atol=1e-10)
