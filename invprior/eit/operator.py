"""The ``eit`` operator: pixel image -> element conductivities -> electrode voltages.

Images have shape ``(B, 1, n, n)`` on the bounding square of the mesh (``[-1, 1]^2`` for the unit
disc; ``x[b, 0, i, j]`` is the value at ``(x_i, y_j)`` as everywhere in invprior). The image is
sampled bilinearly at the element centroids (:class:`PixelToMesh`, differentiable) and mapped to a
positive conductivity by the ``parametrization``: ``"identity"`` (the image is ``sigma``),
``"exp"`` (``sigma = background * exp(x)``) or ``"softplus"`` (``sigma = background * softplus(x) / log 2``,
so ``x = 0`` is the background). Voltages have shape ``(B, P, M)``: current pattern by measurement.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.eit.autograd import eit_voltages
from invprior.eit.mesh import Mesh, disc_mesh
from invprior.eit.model import EITModel
from invprior.errors import ConfigError
from invprior.validation import positive_int, real

__all__ = ["PARAMETRIZATIONS", "PixelToMesh", "EIT"]

PARAMETRIZATIONS = ("identity", "exp", "softplus")


class PixelToMesh:
    """Bilinear sampling of ``(B, C, n, n)`` images at the element centroids: ``(B, C, E)``.

    The pixel grid covers the square ``[c - r, c + r]^2`` around the mesh's bounding-box centre ``c``
    (``r`` half its longer side), pixel centres at ``c - r + (2 i + 1) r / n``.
    """

    def __init__(self, mesh: Mesh) -> None:
        low, high = mesh.nodes.min(axis=0), mesh.nodes.max(axis=0)
        self.centre, self.half = (low + high) / 2, float((high - low).max()) / 2
        local = (mesh.centroids - self.centre) / self.half          # in [-1, 1]^2
        # grid_sample reads (width, height) = (last axis, second last) = (y, x) in invprior's layout
        self.grid = torch.from_numpy(np.stack([local[:, 1], local[:, 0]], axis=-1)).view(1, 1, -1, 2)

    def __call__(self, image: Tensor) -> Tensor:
        grid = self.grid.to(device=image.device, dtype=image.dtype).expand(image.shape[0], -1, -1, -1)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]

    def pixel_centres(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(x_i, y_j)`` of the pixel centres of an ``size x size`` image."""
        offsets = -1.0 + (2.0 * np.arange(size) + 1.0) / size
        return self.centre[0] + self.half * offsets, self.centre[1] + self.half * offsets


class EIT(ForwardOperator):
    """Electrical impedance tomography on a mesh (default: unit disc, ``h``, ``electrodes`` of the
    boundary fraction ``width``), with the complete electrode model (``contact_impedance``, a number
    or one per electrode) or point electrodes, and any current/measurement protocol
    (:mod:`invprior.eit.protocol`); measurements on driven electrodes are left out unless
    ``exclude_driven=False`` (see :class:`~invprior.eit.model.EITModel`). Nonlinear; its derivatives
    are the adjoint method's.
    """

    is_linear = False

    def __init__(self, size: int = 64, mesh: Mesh | str | Path | None = None, h: float = 0.08,
                 electrodes: int = 16, width: float = 0.5, currents: Any = "adjacent",
                 measurements: Any = "adjacent", electrode_model: str = "cem",
                 contact_impedance: float | list[float] = 0.01, parametrization: str = "identity",
                 background: float = 1.0, amplitude: float = 1.0, exclude_driven: bool = True,
                 mesh_cache: str | Path | None = None) -> None:
        size = positive_int(size, "eit: size")
        if parametrization not in PARAMETRIZATIONS:
            raise ConfigError(f"eit: parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        self.background = real(background, "eit: background", minimum=0.0, strict=True)
        if isinstance(mesh, (str, Path)):
            mesh = Mesh.load(mesh)
        self.mesh = mesh if mesh is not None else disc_mesh(h, electrodes, width, cache=mesh_cache)
        self.model = EITModel(self.mesh, currents, measurements, electrode_model, amplitude, exclude_driven)
        z = np.broadcast_to(np.asarray(contact_impedance, dtype=np.float64), (self.model.electrodes,))
        self.model.check(np.ones(len(self.mesh.elements)), z)  # refuses non-positive impedances now
        self.contact_impedance = torch.from_numpy(z.copy())
        self.parametrization, self.size = parametrization, size
        self.to_mesh = PixelToMesh(self.mesh)
        super().__init__((1, size, size), (self.model.num_patterns, self.model.num_measurements))

    def __repr__(self) -> str:
        q = self.mesh.quality()
        return (f"EIT(size={self.size}, elements={q['elements']}, electrodes={self.model.electrodes}, "
                f"electrode_model={self.model.electrode_model!r}, patterns={self.model.num_patterns}, "
                f"measurements={self.model.num_measurements}, parametrization={self.parametrization!r})")

    def conductivity(self, x: Tensor) -> Tensor:
        """Element conductivities ``(B, E)`` of images ``x`` (``(B, 1, n, n)``)."""
        values = self.to_mesh(x)[:, 0]
        if self.parametrization == "exp":
            return self.background * torch.exp(values)
        if self.parametrization == "softplus":
            return self.background * F.softplus(values) / math.log(2.0)
        return values

    def voltages(self, sigma: Tensor) -> Tensor:
        """Voltages ``(B, P, M)`` for element conductivities ``sigma`` ``(B, E)``."""
        z = self.contact_impedance.to(sigma)
        return torch.stack([eit_voltages(self.model, s, z) for s in sigma])

    def forward(self, x: Tensor) -> Tensor:
        return self.voltages(self.conductivity(x))
