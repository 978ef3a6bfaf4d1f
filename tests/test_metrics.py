"""PSNR, SSIM and relative error against analytic values and scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invprior.errors import ShapeError
from invprior.metrics import psnr, relative_error, ssim


def _skimage_ssim(x: np.ndarray, x_true: np.ndarray, data_range: float) -> float:
    metrics = pytest.importorskip("skimage.metrics")
    return metrics.structural_similarity(
        x, x_true, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
    )


def _random_pair(shape: tuple[int, ...], seed: int, noise: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    truth = torch.rand(shape, generator=gen, dtype=torch.float64)
    return truth + noise * torch.randn(shape, generator=gen, dtype=torch.float64), truth


# ---------------------------------------------------------------- PSNR


def test_psnr_of_constant_offset_is_analytic():
    _, truth = _random_pair((3, 1, 20, 24), seed=0)
    offsets = torch.tensor([0.05, -0.3, 1e-3], dtype=torch.float64)
    value = psnr(truth + offsets.view(-1, 1, 1, 1), truth)
    rng = truth.flatten(1).amax(1) - truth.flatten(1).amin(1)
    expected = 20 * torch.log10(rng) - 20 * torch.log10(offsets.abs())
    assert value.shape == (3,)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-10)


def test_psnr_given_data_range_scalar_and_per_image():
    _, truth = _random_pair((2, 5, 5), seed=1)
    shifted = truth + 0.1
    assert psnr(shifted, truth, data_range=1.0).tolist() == pytest.approx([20.0, 20.0])
    per_image = psnr(shifted, truth, data_range=torch.tensor([1.0, 10.0]))
    assert per_image.tolist() == pytest.approx([20.0, 40.0])


def test_psnr_identical_images_is_infinite():
    _, truth = _random_pair((2, 1, 8, 8), seed=2)
    assert torch.isinf(psnr(truth.clone(), truth)).all()


def test_psnr_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    x, truth = _random_pair((1, 1, 30, 30), seed=3)
    expected = metrics.peak_signal_noise_ratio(truth[0, 0].numpy(), x[0, 0].numpy(), data_range=1.0)
    assert float(psnr(x, truth, data_range=1.0)) == pytest.approx(expected, abs=1e-10)


# ---------------------------------------------------------------- SSIM


def test_ssim_matches_scikit_image_on_random_multichannel_images():
    x, truth = _random_pair((2, 3, 40, 52), seed=4)
    ours = ssim(x, truth, data_range=1.0)
    expected = [_skimage_ssim(x[i].numpy(), truth[i].numpy(), 1.0) for i in range(2)]
    assert ours.shape == (2,)
    assert ours.tolist() == pytest.approx(expected, abs=1e-10)


def test_ssim_matches_scikit_image_on_real_images_with_default_range():
    from invprior.data.images import camera, ct_slice

    pytest.importorskip("pydicom")
    pytest.importorskip("skimage.metrics")
    truth = torch.cat([camera(96, dtype=torch.float64), ct_slice(96, dtype=torch.float64)])
    gen = torch.Generator().manual_seed(5)
    x = (truth + 0.05 * torch.randn(truth.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(x, truth)
    expected = [_skimage_ssim(x[i].numpy(), truth[i].numpy(), float(truth[i].max() - truth[i].min())) for i in range(2)]
    assert ours.tolist() == pytest.approx(expected, abs=1e-10)
    ours32 = ssim(x.float(), truth.float())
    assert ours32.dtype == torch.float32
    assert ours32.tolist() == pytest.approx(expected, abs=1e-3)


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    x, truth = _random_pair((2, 1, 32, 32), seed=6)
    torch.testing.assert_close(ssim(truth, truth), torch.ones(2, dtype=torch.float64))
    assert (ssim(x, truth) < 0.9).all()


def test_metrics_pass_gradients():
    x, truth = _random_pair((1, 1, 16, 16), seed=7)
    x.requires_grad_(True)
    (psnr(x, truth) + ssim(x, truth) + relative_error(x, truth)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_half_precision_inputs_are_computed_in_float32():
    x, truth = _random_pair((1, 1, 16, 16), seed=8)
    assert psnr(x.half(), truth.half()).dtype == torch.float32
    assert float(psnr(x.half(), truth.half())) == pytest.approx(float(psnr(x, truth)), abs=0.05)


# ---------------------------------------------------------------- relative error


def test_relative_error_analytic_cases():
    _, truth = _random_pair((2, 1, 6, 6), seed=9)
    scaled = truth * torch.tensor([1.25, 0.4], dtype=torch.float64).view(-1, 1, 1, 1)
    torch.testing.assert_close(relative_error(scaled, truth), torch.tensor([0.25, 0.6], dtype=torch.float64))
    e1, e2 = torch.zeros(1, 4), torch.zeros(1, 4)
    e1[0, 0], e2[0, 1] = 3.0, 4.0
    assert float(relative_error(e2, e1)) == pytest.approx(5.0 / 3.0)
    assert float(relative_error(e1, e1)) == 0.0


# ---------------------------------------------------------------- bad inputs


def test_shape_mismatch_raises_value_error_naming_both_shapes():
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 15)
    for metric in (psnr, ssim, relative_error):
        with pytest.raises(ValueError, match=r"\(1, 1, 16, 16\).*\(1, 1, 16, 15\)"):
            metric(a, b)


def test_zero_data_range_raises():
    x, constant = torch.rand(2, 1, 16, 16), torch.full((2, 1, 16, 16), 0.5)
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match="constant"):
            metric(x, constant)
        with pytest.raises(ValueError, match="data range"):
            metric(x, x, data_range=0.0)
        with pytest.raises(ValueError, match="data range"):
            metric(x, x, data_range=torch.tensor([1.0, -1.0]))
        with pytest.raises(ShapeError, match="one value per image"):
            metric(x, x, data_range=torch.ones(3))


def test_ssim_rejects_wrong_layout_and_tiny_images():
    with pytest.raises(ShapeError, match="B, C, H, W"):
        ssim(torch.rand(2, 1, 16, 16, 1), torch.rand(2, 1, 16, 16, 1))
    with pytest.raises(ShapeError, match="at least"):
        ssim(torch.rand(1, 16, 16), torch.rand(1, 16, 16))
    with pytest.raises(ShapeError, match="11 x 11"):
        ssim(torch.rand(1, 1, 10, 30), torch.rand(1, 1, 10, 30))


def test_relative_error_of_zero_truth_raises():
    with pytest.raises(ValueError, match="zero"):
        relative_error(torch.rand(2, 3), torch.cat([torch.rand(1, 3), torch.zeros(1, 3)]))


def test_ssim_is_accurate_in_float32_for_offset_images():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(1, 1, 32, 32, generator=gen, dtype=torch.float64)
    x = 100 + 0.01 * (base + 0.1 * torch.rand(1, 1, 32, 32, generator=gen, dtype=torch.float64))
    x_true = 100 + 0.01 * base
    reference = ssim(x, x_true)
    assert ssim(x.float(), x_true.float()).dtype == torch.float32
    assert abs(ssim(x.float(), x_true.float()).item() - reference.item()) < 1e-3
