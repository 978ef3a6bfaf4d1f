"""Conductivity phantoms: circular inclusions on a background, as pixel images and on meshes, and
simulated EIT problems whose data come from a finer mesh than the reconstruction's (no inverse crime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from invprior.core.noise import GaussianNoise
from invprior.core.problem import InverseProblem
from invprior.data.resample import check_request
from invprior.eit.mesh import disc_mesh
from invprior.eit.model import EITModel
from invprior.eit.operator import EIT
from invprior.errors import ConfigError

__all__ = ["Inclusion", "inclusion_values", "inclusion_image", "inclusion_problem", "random_inclusions"]

#: ``(x0, y0, radius, conductivity)`` of one circular inclusion.
Inclusion = tuple[float, float, float, float]


def _check(inclusions: Sequence[Inclusion], background: float) -> list[Inclusion]:
    if background <= 0:
        raise ConfigError(f"inclusions: the background conductivity must be positive, got {background}")
    out = []
    for k, item in enumerate(inclusions):
        try:
            x0, y0, radius, value = (float(v) for v in item)
        except (TypeError, ValueError):
            raise ConfigError(f"inclusions: entry {k} must be (x0, y0, radius, conductivity), got {item!r}") from None
        if radius <= 0 or value <= 0:
            raise ConfigError(f"inclusions: entry {k} needs a positive radius and conductivity, got {item!r}")
        out.append((x0, y0, radius, value))
    return out


def inclusion_values(points: np.ndarray, inclusions: Sequence[Inclusion], background: float = 1.0) -> np.ndarray:
    """The conductivity at ``points`` (K, 2): ``background`` outside, the inclusion's value inside
    (a later inclusion covers an earlier one)."""
    values = np.full(len(points), float(background))
    for x0, y0, radius, value in _check(inclusions, background):
        values[np.hypot(points[:, 0] - x0, points[:, 1] - y0) <= radius] = value
    return values


def random_inclusions(size: int = 32, n: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32,
                      count: int | tuple[int, int] = (1, 3), radius: tuple[float, float] = (0.15, 0.3),
                      contrast: tuple[float, float] = (0.5, 1.5), domain_radius: float = 0.9) -> Tensor:
    """``n`` log-conductivity images ``log(sigma / background)`` of ``count`` random circular inclusions
    (dataset ``inclusions``, for the ``eit`` operator with ``parametrization="exp"``) on ``[-1, 1]^2``:
    radii uniform on ``radius``, log-contrasts of random sign with magnitude uniform on ``contrast``,
    each disc inside the circle of ``domain_radius``; a later inclusion covers an earlier one."""
    check_request(size, n, dtype, "inclusions")
    low, high = (count, count) if isinstance(count, int) else count
    if not 1 <= low <= high:
        raise ConfigError(f"inclusions: count must be an integer or a (low, high) pair with 1 <= low <= high, "
                          f"got {count!r}")
    if not 0 < radius[0] <= radius[1] < domain_radius:
        raise ConfigError(f"inclusions: radius {radius!r} must satisfy 0 < low <= high < domain_radius")
    gen = np.random.default_rng(seed)
    centres = -1.0 + (2.0 * np.arange(size) + 1.0) / size
    grid = np.stack(np.meshgrid(centres, centres, indexing="ij"), axis=-1).reshape(-1, 2)
    images = []
    for _ in range(n):
        objects = []
        for _ in range(int(gen.integers(low, high + 1))):
            r = gen.uniform(*radius)
            distance, angle = np.sqrt(gen.uniform()) * (domain_radius - r), gen.uniform(0, 2 * np.pi)
            value = gen.choice([-1.0, 1.0]) * gen.uniform(*contrast)
            objects.append((distance * np.cos(angle), distance * np.sin(angle), r, float(np.exp(value))))
        images.append(np.log(inclusion_values(grid, objects, 1.0)).reshape(size, size))
    return torch.from_numpy(np.stack(images)[:, None]).to(dtype)


def inclusion_image(operator: EIT, inclusions: Sequence[Inclusion], background: float = 1.0,
                    dtype: torch.dtype = torch.float64) -> Tensor:
    """The conductivity as the operator's pixel image ``(1, 1, n, n)`` (the values, whatever the
    operator's parametrisation)."""
    xs, ys = operator.to_mesh.pixel_centres()
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)  # (x_i, y_j) row-major
    image = inclusion_values(grid, inclusions, background).reshape(operator.size, operator.size)
    return torch.from_numpy(image).to(dtype).view(1, 1, operator.size, operator.size)


def inclusion_problem(operator: EIT, inclusions: Sequence[Inclusion], background: float = 1.0,
                      noise: GaussianNoise | None = None, fine_h: float | None = None, seed: int = 0) -> InverseProblem:
    """Voltages of ``inclusions`` simulated on a finer disc mesh (``fine_h``, default half the longest
    edge of the operator's mesh; same electrodes and protocol) plus ``noise`` (none on the left-out
    measurements); ``x_true`` is the pixel image in the operator's parametrisation
    (``log(sigma / background)`` for ``"exp"``). The operator's mesh must be a disc centred at the origin."""
    mesh = operator.mesh
    fine_h = 0.5 * mesh.h if fine_h is None else float(fine_h)
    radius = disc_radius(mesh, "inclusion_problem",
                         " (simulate other domains with EITModel on a finer mesh of your own)")
    arcs = _electrode_arcs(mesh)
    fine = disc_mesh(h=fine_h, electrodes=arcs, radius=radius)
    model = EITModel(fine, operator.model.currents, operator.model.measurements, operator.model.electrode_model,
                     exclude_driven=bool((operator.model.mask == 0).any()))
    sigma = inclusion_values(fine.centroids, inclusions, background)
    clean = torch.from_numpy(model.voltages(sigma, operator.contact_impedance.numpy())).unsqueeze(0)
    image = operator.parameter(inclusion_image(operator, inclusions, background))
    noise = noise if noise is not None else GaussianNoise(std=0.0)
    eta, std = noise.sample(clean, seed)
    eta = eta * torch.from_numpy(model.mask)  # left-out measurements stay exactly zero
    return InverseProblem(operator, clean + eta, noise_std=std, noise_norm=eta.flatten(1).norm(dim=1), x_true=image,
                          metadata={"seed": seed, "noise": {"std": noise.std, "relative": noise.relative},
                                    "inclusions": [list(i) for i in inclusions], "background": background,
                                    "fine_h": fine_h})


def disc_radius(mesh, where: str, hint: str = "") -> float:
    """The radius of a disc mesh centred at the origin; ``ConfigError`` (from ``where``, plus ``hint``) otherwise."""
    radius = float(np.linalg.norm(mesh.nodes, axis=1).max())
    if not np.allclose(np.linalg.norm(mesh.nodes[np.unique(mesh.boundary)], axis=1), radius, rtol=1e-9):
        raise ConfigError(f"{where}: the operator's mesh must be a disc centred at the origin{hint}")
    return radius


def _electrode_arcs(mesh) -> list[tuple[float, float]]:
    """The electrodes of a disc mesh as arcs in turns (counter-clockwise ends)."""
    arcs = []
    for electrode in range(mesh.num_electrodes):
        points = mesh.nodes[np.unique(mesh.electrode_edges(electrode))]
        turns = np.sort(np.mod(np.arctan2(points[:, 1], points[:, 0]) / (2 * np.pi), 1.0))
        gaps = np.diff(np.append(turns, turns[0] + 1.0))
        start = int(np.argmax(gaps)) + 1                      # the arc begins after its largest gap
        arcs.append((float(turns[start % len(turns)]), float(turns[start - 1])))
    return arcs
