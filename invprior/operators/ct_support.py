"""The support of a disc-shaped object from a CT sinogram: the rays that graze its silhouette.

In every projection the object's shadow spans detector coordinates ``[u_0, u_1]``; the rays through
``u_0`` and ``u_1`` are tangent to a disc of centre ``c`` and radius ``r``: with ``n`` the unit
normal of such a ray pointing into the shadow and ``P`` a point on it, ``n . (c - P) = r``. Every
measured angle gives two such equations, linear in ``(c, r)``, solved by least squares (one round
of outlier rejection). The fit uses the whole sinogram, so it holds for limited-angle scans too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from invprior.errors import ConfigError
from invprior.operators.ct import CTOperator

__all__ = ["Disc", "fit_disc"]


@dataclass(frozen=True)
class Disc:
    """A disc in the image's coordinates (the units of the geometry, e.g. mm; ``x`` is the first array axis)."""

    centre: tuple[float, float]
    radius: float

    def sinogram(self, operator: CTOperator, value: float = 1.0) -> np.ndarray:
        """The disc's exact line integrals ``value * 2 sqrt(r^2 - d^2)`` for every ray of ``operator``
        (``d``: the ray's distance to the centre), shape ``(angles, detectors)``; rays from ODL's geometry."""
        geometry, rays = operator.geometry, operator.odl_geometry
        centre = np.asarray(self.centre)
        assert geometry.num_detectors is not None  # an operator's geometry is resolved for its grid
        out = np.zeros((geometry.num_angles, geometry.num_detectors))
        for i, angle in enumerate(geometry.angles()):
            for j, u in enumerate(geometry.detector_positions()):
                point, direction = _ray(rays, geometry.beam, angle, u)
                w = centre - point
                distance = abs(w[0] * direction[1] - w[1] * direction[0])
                out[i, j] = 2 * value * np.sqrt(max(self.radius**2 - distance**2, 0.0))
        return out

    def mask(self, operator: CTOperator, margin: float = 0.0) -> Tensor:
        """Pixels of ``operator``'s grid whose centres lie within ``radius + margin`` pixels, shape ``(N, N)``."""
        extent, size = operator.geometry.extent, operator.size
        pixel = 2 * extent / size
        t = torch.arange(size, dtype=torch.float64) * pixel - extent + pixel / 2
        xx, yy = torch.meshgrid(t, t, indexing="ij")
        return (xx - self.centre[0]) ** 2 + (yy - self.centre[1]) ** 2 <= (self.radius + margin * pixel) ** 2


def _ray(rays, beam: str, angle: float, u: float) -> tuple[np.ndarray, np.ndarray]:
    """A point on the ray that meets the detector at ``u``, and its unit direction."""
    point = rays.det_point_position(angle, u)
    direction = point - rays.src_position(angle) if beam == "fan" else rays.det_to_src(angle, u)
    return point, direction / np.linalg.norm(direction)


def _edges(row: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """Fractional detector indices of the shadow's two edges in ``row`` (``None`` where the shadow reaches the
    detector's end, so that edge is not seen).

    Near the edge of a disc the line integral grows like ``sqrt(distance)``, so its square is linear: the
    edge is where the line through the squares of the first two values above ``threshold`` reaches 0
    (never more than one cell outside the first of them).
    """
    above = np.flatnonzero(row > threshold)
    if above.size < 2:
        return None, None

    def edge(inner: int, step: int) -> float | None:
        outer = inner - step
        if outer < 0 or outer >= row.size or inner + step < 0 or inner + step >= row.size:
            return None
        a, b = row[inner] ** 2, row[inner + step] ** 2
        distance = a / (b - a) if b > a else 1.0
        return inner - step * min(max(distance, 0.0), 1.0)

    return edge(int(above[0]), 1), edge(int(above[-1]), -1)


def fit_disc(operator: CTOperator, sinogram: Tensor, noise_std: float, threshold: float | None = None) -> Disc:
    """The disc tangent to the silhouette rays of ``sinogram`` ``(angles, detectors)`` measured by ``operator``.

    The shadow's edges are found from the values above ``threshold`` (default ``max(5 noise_std, 2 % of
    the sinogram's maximum)``), extrapolated to zero between detector cells (see ``_edges``).
    """
    if not isinstance(operator, CTOperator):
        raise ConfigError(f"a fitted disc support needs a CT operator, got {type(operator).__name__}")
    data = sinogram.detach().cpu().double().reshape(operator.range_shape[-2:]).numpy()
    threshold = max(5 * noise_std, 0.02 * float(data.max())) if threshold is None else float(threshold)
    geometry, rays = operator.geometry, operator.odl_geometry
    positions = geometry.detector_positions()
    cell = positions[1] - positions[0]
    rows, rhs = [], []
    for angle, row in zip(geometry.angles(), data):
        for edge, side in zip(_edges(row, threshold), (1.0, -1.0)):
            if edge is None:
                continue
            u = positions[0] + edge * cell
            point, direction = _ray(rays, geometry.beam, angle, u)
            axis = rays.det_axis(angle)
            normal = axis - (axis @ direction) * direction
            normal = side * normal / np.linalg.norm(normal)
            rows.append([normal[0], normal[1], -1.0])
            rhs.append(normal @ point)
    if len(rows) < 3:
        raise ConfigError(f"cannot fit a disc: the sinogram shows fewer than 3 silhouette edges above {threshold:.3g} "
                          "(is the object inside the field of view, and the data line integrals?)")
    a, b = np.asarray(rows), np.asarray(rhs)
    solution = np.linalg.lstsq(a, b, rcond=None)[0]
    residual = a @ solution - b
    spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    keep = np.abs(residual) <= max(3 * spread, 1e-12)
    if keep.sum() >= 3:
        solution = np.linalg.lstsq(a[keep], b[keep], rcond=None)[0]
    cx, cy, radius = (float(v) for v in solution)
    if radius <= 0:
        raise ConfigError(f"the fitted disc has radius {radius:.3g} <= 0: the sinogram is not a disc's")
    return Disc((cx, cy), radius)
