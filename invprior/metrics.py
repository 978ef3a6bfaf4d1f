"""Image-quality metrics, one value per image of a batch ``(B, ...)``.

Each metric compares a reconstruction ``x`` with the truth ``x_true`` of the same shape, keeps
their device, and computes in the promoted dtype of both (at least float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from invprior.errors import ConfigError, ShapeError

__all__ = ["psnr", "ssim", "relative_error"]

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): a Gaussian truncated at 3.5 sigma, window 11
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def _prepare(x: Tensor, x_true: Tensor, metric: str, min_ndim: int = 2) -> tuple[Tensor, Tensor]:
    if x.shape != x_true.shape:
        raise ShapeError(f"{metric}: x has shape {tuple(x.shape)} but x_true has shape {tuple(x_true.shape)}")
    if x.ndim < min_ndim:
        raise ShapeError(f"{metric}: expected a batch with at least {min_ndim} dims (B, ...), "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ShapeError(f"{metric}: got an empty batch of shape {tuple(x.shape)}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, x_true.dtype), torch.float32)
    return x.to(dtype), x_true.to(device=x.device, dtype=dtype)


def _data_range(x_true: Tensor, data_range: float | Tensor | None, metric: str) -> Tensor:
    """Per-image data range, shape ``(B,)``: given, or ``max(x_true) - min(x_true)`` per image."""
    batch = x_true.shape[0]
    if data_range is None:
        flat = x_true.flatten(1)
        rng = flat.amax(dim=1) - flat.amin(dim=1)
    else:
        rng = torch.as_tensor(data_range, dtype=x_true.dtype, device=x_true.device)
        if rng.numel() not in (1, batch):
            raise ShapeError(f"{metric}: data_range must be a number or hold one value per image ({batch}), "
                             f"got {rng.numel()}")
        rng = rng.reshape(-1).expand(batch)
    if not bool((rng > 0).all()) or not bool(torch.isfinite(rng).all()):
        raise ConfigError(
            f"{metric}: data range must be finite and > 0 for every image, got {rng.tolist()}"
            + (" (x_true is constant; pass data_range explicitly)" if data_range is None else "")
        )
    return rng


def psnr(x: Tensor, x_true: Tensor, data_range: float | Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio per image in dB, shape ``(B,)``.

    ``PSNR = 20 log10(R) - 10 log10(MSE)`` with ``MSE`` the mean of ``(x - x_true)^2`` over each image
    and ``R = data_range`` (default ``max - min`` of each true image); ``inf`` where ``x == x_true``.
    """
    x, x_true = _prepare(x, x_true, "psnr")
    rng = _data_range(x_true, data_range, "psnr")
    mse = (x - x_true).square().flatten(1).mean(dim=1)
    return 20.0 * torch.log10(rng) - 10.0 * torch.log10(mse)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> Tensor:
    offsets = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / _SSIM_SIGMA) ** 2)
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def ssim(x: Tensor, x_true: Tensor, data_range: float | Tensor | None = None) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image, shape ``(B,)``, for batches ``(B, C, H, W)``.

    ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with local
    moments from a Gaussian window (sigma 1.5, 11 x 11), ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2`` and
    ``R`` as in ``psnr``; the map is averaged over channels and pixels at least 5 from the border,
    which equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``.
    """
    x, x_true = _prepare(x, x_true, "ssim", min_ndim=4)
    if x.ndim != 4:
        raise ShapeError(f"ssim: expected shape (B, C, H, W), got {tuple(x.shape)}")
    window = 2 * _SSIM_RADIUS + 1
    if min(x.shape[-2:]) < window:
        raise ShapeError(f"ssim: images must be at least {window} x {window} pixels, got {tuple(x.shape[-2:])}")
    rng = _data_range(x_true, data_range, "ssim").view(-1, 1, 1, 1).double()
    out_dtype = x.dtype
    x, x_true = x.double(), x_true.double()  # E[x^2] - mu^2 cancels badly in float32
    batch, channels = x.shape[:2]
    g = _gaussian_window(x.dtype, x.device)

    def local_mean(img: Tensor) -> Tensor:
        flat = img.reshape(batch * channels, 1, *img.shape[-2:])
        flat = F.conv2d(flat, g.view(1, 1, -1, 1))
        flat = F.conv2d(flat, g.view(1, 1, 1, -1))
        return flat.reshape(batch, channels, *flat.shape[-2:])

    mu_x, mu_y = local_mean(x), local_mean(x_true)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(x_true * x_true) - mu_y**2
    cov = local_mean(x * x_true) - mu_x * mu_y
    c1, c2 = (_SSIM_K1 * rng) ** 2, (_SSIM_K2 * rng) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).to(out_dtype)


def relative_error(x: Tensor, x_true: Tensor) -> Tensor:
    """Relative error ``||x - x_true||_2 / ||x_true||_2`` per image, shape ``(B,)``."""
    x, x_true = _prepare(x, x_true, "relative_error")
    norm_true = torch.linalg.vector_norm(x_true.flatten(1), dim=1)
    if not bool((norm_true > 0).all()):
        raise ConfigError("relative_error: x_true is zero for some image, so the relative error is undefined")
    return torch.linalg.vector_norm((x - x_true).flatten(1), dim=1) / norm_true

