"""Phantoms and bundled real images; no network access."""

from invprior.data.images import camera, ct_slice
from invprior.data.phantoms import random_ellipses, shepp_logan

__all__ = ["random_ellipses", "shepp_logan", "ct_slice", "camera"]
