"""Analytic ellipse phantoms: seeded random ellipses and the Shepp-Logan head phantom.

Images live on the square ``[-1, 1]^2``. The first array axis is ``x`` and the second is ``y``
(ODL's convention, used by the CT operators): ``image[i, j] = f(x_i, y_j)`` with pixel centres
``x_i = -1 + (2 i + 1) / size``. Plotted upright (``y`` pointing up) this is
``numpy.rot90(image)``, or ``imshow(image.T, origin="lower")``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from invprior.data.resample import check_request
from invprior.errors import ConfigError, ShapeError

# Shepp-Logan ellipses as (a, b, x0, y0, theta in degrees): semi-axes a along x and b along y
# before a counter-clockwise rotation by theta about the centre (x0, y0).
_SHEPP_LOGAN_GEOMETRY = (
    (0.69, 0.92, 0.0, 0.0, 0.0),
    (0.6624, 0.874, 0.0, -0.0184, 0.0),
    (0.11, 0.31, 0.22, 0.0, -18.0),
    (0.16, 0.41, -0.22, 0.0, 18.0),
    (0.21, 0.25, 0.0, 0.35, 0.0),
    (0.046, 0.046, 0.0, 0.1, 0.0),
    (0.046, 0.046, 0.0, -0.1, 0.0),
    (0.046, 0.023, -0.08, -0.605, 0.0),
    (0.023, 0.023, 0.0, -0.606, 0.0),
    (0.023, 0.046, 0.06, -0.605, 0.0),
)
# Intensities of the same ellipses: Shepp & Logan (1974) and Toft's higher-contrast variant.
_SHEPP_LOGAN_INTENSITIES = (2.0, -0.98, -0.02, -0.02, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01)
_MODIFIED_INTENSITIES = (1.0, -0.8, -0.2, -0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1)

# Centres of random ellipses are uniform on [-_CENTRE_EXTENT, _CENTRE_EXTENT]^2.
_CENTRE_EXTENT = 0.6
# The optional body ellipse: semi-axes uniform on _BODY_AXES, centre uniform on [-_BODY_CENTRE, _BODY_CENTRE]^2.
_BODY_AXES = (0.7, 1.5)
_BODY_CENTRE = 0.1


def _check_supersample(supersample: int, dataset: str) -> None:
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise ConfigError(f"{dataset}: 'supersample' must be an integer >= 1, got {supersample!r}")


def cell_centres(size: int) -> Tensor:
    """Pixel-centre coordinates ``-1 + (2 i + 1) / size``, ``i = 0..size-1``, of a grid on [-1, 1] (float64)."""
    return (2.0 * torch.arange(size, dtype=torch.float64) + 1.0) / size - 1.0


def rasterize_ellipses(ellipses: Tensor, size: int, supersample: int = 1,
                       value_range: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Render ``f = clip(sum_k v_k 1[E_k], lo, hi)`` on a ``size x size`` grid over [-1, 1]^2 (float64),
    ``(lo, hi) = value_range`` (default ``(0, 1)``; signed values, e.g. conductivity changes, need a wider one).

    ``ellipses`` has shape ``(K, 6)`` with rows ``(v, a, b, x0, y0, theta)``: ``E`` is the set
    ``((c dx + s dy) / a)^2 + ((c dy - s dx) / b)^2 <= 1`` where ``dx = x - x0``, ``dy = y - y0``,
    ``c = cos theta`` and ``s = sin theta`` (``theta`` in radians, counter-clockwise). Each pixel is the
    mean of ``f`` over ``supersample x supersample`` evenly spaced points (cell midpoints of a finer
    grid); ``supersample=1`` samples ``f`` at the pixel centre. The result is indexed ``[x, y]``.
    """
    if ellipses.ndim != 2 or ellipses.shape[1] != 6:
        raise ShapeError(f"ellipses must have shape (K, 6) with rows (v, a, b, x0, y0, theta), "
                         f"got {tuple(ellipses.shape)}")
    _check_supersample(supersample, "rasterize_ellipses")
    params = ellipses.detach().to(device="cpu", dtype=torch.float64)
    if bool((params[:, 1:3] <= 0).any()):
        raise ConfigError("rasterize_ellipses: semi-axes a and b must be > 0")
    coords = cell_centres(size * supersample)
    x, y = coords[:, None], coords[None, :]
    total = torch.zeros(coords.numel(), coords.numel(), dtype=torch.float64)
    for value, a, b, x0, y0, theta in params.tolist():
        c, s = math.cos(theta), math.sin(theta)
        dx, dy = x - x0, y - y0
        inside = ((c * dx + s * dy) / a) ** 2 + ((c * dy - s * dx) / b) ** 2 <= 1.0
        total.add_(inside.to(torch.float64), alpha=value)  # a bool mask times a float would round to float32
    total.clamp_(*value_range)
    if supersample > 1:
        total = F.avg_pool2d(total[None, None], supersample)[0, 0]
    return total


def _check_range(value: object, key: str, *, integer: bool = False, positive: bool = False) -> tuple[float, float]:
    """Validate a ``(low, high)`` pair (or a single number, meaning ``(v, v)``) for random_ellipses."""
    pair: Any = (value, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        low, high = pair
    except (TypeError, ValueError):
        raise ConfigError(f"ellipses: '{key}' must be a number or a (low, high) pair, got {value!r}") from None
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"ellipses: '{key}' entries must be finite numbers, got {value!r}")
        if integer and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"ellipses: '{key}' entries must be integers >= 1, got {value!r}")
        if positive and v <= 0:
            raise ConfigError(f"ellipses: '{key}' entries must be > 0, got {value!r}")
    if low > high:
        raise ConfigError(f"ellipses: '{key}' needs low <= high, got {value!r}")
    return low, high


def random_ellipse_parameters(
    n: int = 1,
    seed: int = 0,
    num_ellipses: int | tuple[int, int] = (5, 12),
    intensity_range: tuple[float, float] = (0.1, 0.6),
    axis_range: tuple[float, float] = (0.05, 0.4),
    background: float | tuple[float, float] | None = None,
) -> list[Tensor]:
    """The continuous random-ellipse objects behind ``random_ellipses``: ``n`` tensors of shape ``(K_i, 6)``.

    ``background`` (an intensity range) puts a body ellipse first in every object: semi-axes uniform on
    ``[0.7, 1.5]``, so it often fills the image as a CT slice does, and the other ellipses add to it (a
    negative ``intensity_range`` then carves darker structures out of it). Draws are independent of
    any image size; image ``i`` is the same for every ``n > i``.
    """
    count_lo, count_hi = _check_range(num_ellipses, "num_ellipses", integer=True)
    v_lo, v_hi = _check_range(intensity_range, "intensity_range")
    ax_lo, ax_hi = _check_range(axis_range, "axis_range", positive=True)
    body = None if background is None else _check_range(background, "background")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    objects = []
    for _ in range(n):
        count = int(torch.randint(int(count_lo), int(count_hi) + 1, (1,), generator=gen))
        u = torch.rand(count, 6, generator=gen, dtype=torch.float64)
        rows = [_ellipse_rows(u, (v_lo, v_hi), (ax_lo, ax_hi), _CENTRE_EXTENT)]
        if body is not None:
            rows.insert(0, _ellipse_rows(torch.rand(1, 6, generator=gen, dtype=torch.float64), body, _BODY_AXES,
                                         _BODY_CENTRE))
        objects.append(torch.cat(rows))
    return objects


def _ellipse_rows(u: Tensor, intensity: tuple[float, float], axes: tuple[float, float], extent: float) -> Tensor:
    """Rows ``(v, a, b, x0, y0, theta)`` from uniforms ``u`` of shape ``(K, 6)``."""
    (v_lo, v_hi), (ax_lo, ax_hi) = intensity, axes
    return torch.stack([
        v_lo + (v_hi - v_lo) * u[:, 0],
        ax_lo + (ax_hi - ax_lo) * u[:, 1],
        ax_lo + (ax_hi - ax_lo) * u[:, 2],
        extent * (2.0 * u[:, 3] - 1.0),
        extent * (2.0 * u[:, 4] - 1.0),
        math.pi * u[:, 5],
    ], dim=1)


def random_ellipses(
    size: int = 64,
    n: int = 1,
    seed: int = 0,
    num_ellipses: int | tuple[int, int] = (5, 12),
    intensity_range: tuple[float, float] = (0.1, 0.6),
    axis_range: tuple[float, float] = (0.05, 0.4),
    supersample: int = 1,
    dtype: torch.dtype = torch.float32,
    background: float | tuple[float, float] | None = None,
) -> Tensor:
    """``n`` random-ellipse phantoms ``f = clip(sum_k v_k 1[E_k], 0, 1)``, shape ``(n, 1, size, size)``.

    Per image, the count ``K`` is uniform on the integers of ``num_ellipses`` (a number fixes it),
    intensities ``v`` uniform on ``intensity_range``, semi-axes uniform on ``axis_range``, centres
    uniform on ``[-0.6, 0.6]^2`` and rotations uniform on ``[0, pi)``; ``background`` adds a body ellipse
    under them (see ``random_ellipse_parameters``). The objects are drawn in
    continuous coordinates from a generator seeded with ``seed``, so a seed gives the same object
    at every ``size`` (render the truth finer than the reconstruction grid to avoid the inverse
    crime). ``supersample`` averages that many sub-samples per pixel axis; see
    ``rasterize_ellipses`` and the module docstring for the axis convention.
    """
    check_request(size, n, dtype, "ellipses")
    _check_supersample(supersample, "ellipses")
    objects = random_ellipse_parameters(n, seed, num_ellipses, intensity_range, axis_range, background)
    images = torch.stack([rasterize_ellipses(obj, size, supersample) for obj in objects])
    return images[:, None].to(dtype)


def shepp_logan(
    size: int = 64,
    n: int = 1,
    seed: int = 0,
    modified: bool = True,
    supersample: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The Shepp-Logan head phantom divided by its skull intensity, shape ``(n, 1, size, size)``; ``n`` copies.

    ``modified=True`` uses Toft's intensities (skull 1, brain 0.2, features 0 to 0.4), otherwise
    Shepp & Logan's (skull 2, brain 1.02, so brain 0.51 after scaling). ``seed`` is accepted for a
    uniform dataset signature and unused: the phantom is fixed. The ellipse with semi-axis 0.92 runs
    along ``y``, the second array axis; ``numpy.rot90(image)`` is the usual upright picture
    (``skimage.data.shepp_logan_phantom()`` is that picture of the modified phantom).
    """
    check_request(size, n, dtype, "shepp_logan")
    _check_supersample(supersample, "shepp_logan")
    intensities = _MODIFIED_INTENSITIES if modified else _SHEPP_LOGAN_INTENSITIES
    scale = intensities[0]
    table = torch.tensor(
        [(v / scale, a, b, x0, y0, math.radians(t))
         for v, (a, b, x0, y0, t) in zip(intensities, _SHEPP_LOGAN_GEOMETRY)],
        dtype=torch.float64,
    )
    image = rasterize_ellipses(table, size, supersample).to(dtype)
    return image.expand(n, 1, size, size).clone()
