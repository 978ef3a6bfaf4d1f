"""Helpers shared by the dataset functions: argument checks and image resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from invprior.errors import ConfigError


def check_request(size: int, n: int, dtype: torch.dtype, dataset: str) -> None:
    """Raise ``ConfigError`` unless ``size >= 1``, ``n >= 1`` and ``dtype`` is floating point."""
    for key, value in (("size", size), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{dataset}: '{key}' must be an integer >= 1, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"{dataset}: 'dtype' must be a floating-point torch.dtype, got {dtype!r}")


def resize(images: Tensor, size: int) -> Tensor:
    """Resize a batch ``(B, C, H, W)`` of images in [0, 1] to ``(B, C, size, size)``, clipped to [0, 1].

    Shrinking uses antialiased bilinear interpolation (the filter widens with the scale factor);
    enlarging uses bicubic interpolation. Pixels are treated as cells (``align_corners=False``),
    so the image keeps covering the same square.
    """
    if images.shape[-2:] == (size, size):
        return images
    shrinking = size < min(images.shape[-2:])
    mode = "bilinear" if shrinking else "bicubic"
    out = F.interpolate(images, size=(size, size), mode=mode, align_corners=False, antialias=shrinking)
    return out.clamp(0.0, 1.0)
