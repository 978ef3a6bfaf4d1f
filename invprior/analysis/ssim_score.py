"""The score of the Kuopio Tomography Challenge 2023 (KTC2023): per-class SSIM of label maps.

For each class ``c`` in ``{1, 2}`` the binary maps ``t = (truth == c)`` and ``r = (labels == c)`` are
compared by SSIM with a Gaussian window ``w`` of standard deviation ``window_std`` pixels (80 in the
challenge), truncated at twice that and renormalised at the border:
``mu_t = (w * t) / (w * 1)``, ``s_t^2 = (w * t^2) / (w * 1) - mu_t^2``, ``s_tr = (w * tr) / (w * 1) - mu_t mu_r``,
``SSIM = (2 mu_t mu_r + c1)(2 s_tr + c2) / ((mu_t^2 + mu_r^2 + c1)(s_t^2 + s_r^2 + c2))`` averaged over the
pixels, ``c1 = 1e-4``, ``c2 = 9e-4``. The score is the mean over the two classes (1 is perfect).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from invprior.errors import ShapeError

__all__ = ["C1", "C2", "WINDOW_STD", "class_ssim", "ktc_score"]

C1, C2, WINDOW_STD = 1e-4, 9e-4, 80.0
TRUNCATE = 2.0  # the window is cut at TRUNCATE * window_std


def _local_mean(image: np.ndarray, window_std: float) -> np.ndarray:
    """The Gaussian-weighted mean around every pixel, the weights renormalised where the window leaves the map."""
    smooth = lambda a: gaussian_filter(a, window_std, mode="constant", cval=0.0, truncate=TRUNCATE)  # noqa: E731
    return smooth(image) / smooth(np.ones_like(image))


def class_ssim(truth: np.ndarray, labels: np.ndarray, label: int, window_std: float = WINDOW_STD) -> float:
    """The mean SSIM of the binary maps ``truth == label`` and ``labels == label`` (module docstring)."""
    truth, labels = np.asarray(truth), np.asarray(labels)
    if truth.shape != labels.shape or truth.ndim != 2:
        raise ShapeError(f"class_ssim: truth and labels must be 2D maps of one shape, got {truth.shape} and "
                         f"{labels.shape}")
    t, r = (truth == label).astype(np.float64), (labels == label).astype(np.float64)
    mu_t, mu_r = _local_mean(t, window_std), _local_mean(r, window_std)
    var_t = _local_mean(t * t, window_std) - mu_t ** 2
    var_r = _local_mean(r * r, window_std) - mu_r ** 2
    cov = _local_mean(t * r, window_std) - mu_t * mu_r
    ssim = (2 * mu_t * mu_r + C1) * (2 * cov + C2) / ((mu_t ** 2 + mu_r ** 2 + C1) * (var_t + var_r + C2))
    return float(ssim.mean())


def ktc_score(truth: np.ndarray, labels: np.ndarray, window_std: float = WINDOW_STD) -> float:
    """The KTC2023 score: the mean of ``class_ssim`` over the resistive (1) and conductive (2) classes."""
    return 0.5 * (class_ssim(truth, labels, 1, window_std) + class_ssim(truth, labels, 2, window_std))
