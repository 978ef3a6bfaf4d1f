"""invprior-blur against independent truths: scipy's wrap-around convolution, adjoint identities,
kernel moments, and clear errors for bad settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from invprior.core.operator import adjoint_mismatch
from invprior.errors import ConfigError
from invprior_blur import Blur, SuperResolution, gaussian_kernel, motion_kernel

ASYMMETRIC = np.array([[0.0, 1.0, 2.0], [0.5, 3.0, 0.0], [0.0, 0.0, 1.5]])


@pytest.mark.parametrize("options", [{"kernel": "gaussian", "sigma": 2.0},
                                     {"kernel": "motion", "length": 7, "angle": 30},
                                     {"kernel": "custom", "weights": ASYMMETRIC}])
def test_blur_is_scipys_wraparound_convolution_with_an_exact_adjoint(options):
    op = Blur(size=24, **options)
    x = torch.rand(2, 1, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = np.stack([ndimage.convolve(img[0], op.kernel.numpy(), mode="wrap") for img in x.numpy()])
    assert np.allclose(op(x)[:, 0].numpy(), expected, atol=1e-12)
    assert adjoint_mismatch(op) < 1e-12
    assert adjoint_mismatch(op, dtype=torch.float32) < 1e-5
    assert torch.autograd.gradcheck(op, (x[:1].clone().requires_grad_(),))


def test_super_resolution_blurs_then_keeps_every_factor_th_pixel():
    op = SuperResolution(size=24, factor=3, sigma=1.2)
    x = torch.rand(1, 1, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert op.range_shape == (1, 8, 8)
    assert torch.allclose(op(x), op.blur(x)[..., ::3, ::3], atol=1e-14)
    assert torch.allclose(op(torch.full_like(x, 0.7)), torch.full((1, 1, 8, 8), 0.7, dtype=torch.float64))
    assert adjoint_mismatch(op) < 1e-12


def test_kernels_sum_to_one_and_have_the_right_moments():
    g = gaussian_kernel(1.5)
    offsets = torch.arange(g.shape[0], dtype=torch.float64) - g.shape[0] // 2
    assert float(g.sum()) == pytest.approx(1.0) and torch.allclose(g, g.T)
    assert float((g.sum(1) * offsets ** 2).sum()) == pytest.approx(1.5 ** 2, rel=1e-2)  # sigma^2, truncated at 3 sigma
    m = motion_kernel(9, angle=0.0)
    rows = m.sum(1)
    centre = m.shape[0] // 2
    offsets = torch.arange(m.shape[0], dtype=torch.float64) - centre
    assert float((rows * offsets).sum()) == pytest.approx(0.0, abs=1e-12)
    assert float((rows * offsets ** 2).sum()) == pytest.approx(9 ** 2 / 12, rel=0.05)  # uniform segment
    assert float(m.sum(0)[centre]) == pytest.approx(1.0)  # all mass on the centre column at angle 0
    turned = motion_kernel(9, angle=90.0)
    assert torch.allclose(turned, m.T, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    ({"kernel": "custom", "weights": np.ones((2, 3))}, "odd"),
    ({"kernel": "custom", "weights": -np.ones((3, 3))}, "non-negative"),
    ({"kernel": "custom"}, "needs 'weights'"),
    ({"kernel": "box"}, "kernel must be one of"),
    ({"sigma": -1.0}, "sigma"),
    ({"size": 8, "sigma": 3.0}, "larger than"),
])
def test_bad_blur_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Blur(**{"size": 16, **kwargs})


def test_super_resolution_needs_a_divisible_size():
    with pytest.raises(ConfigError, match="multiple of factor"):
        SuperResolution(size=10, factor=3)
    assert math.isfinite(float(SuperResolution(size=12, factor=3).norm()))
