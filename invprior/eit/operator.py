"""The ``eit`` operator: pixel image -> element conductivities -> electrode voltages.

Images have shape ``(B, 1, n, n)`` on the bounding square of the mesh (``[-1, 1]^2`` for the unit
disc; ``x[b, 0, i, j]`` is the value at ``(x_i, y_j)`` as everywhere in invprior). The image is
sampled bilinearly at the element centroids (``PixelToMesh``, differentiable) and mapped to a
positive conductivity by the ``parametrization``: ``"identity"`` (the image is ``sigma``),
``"exp"`` (``sigma = background * exp(x)``) or ``"softplus"`` (``sigma = background * softplus(x) / log 2``,
so ``x = 0`` is the background). Voltages have shape ``(B, P, M)``: current pattern by measurement;
with ``channels`` (a boolean ``(P, M)`` mask of the measured entries) only those, ``(B, K)``, in
pattern-major order. With ``difference=True`` the operator gives ``V(sigma(x)) - V(background)``, the
model of difference data ``y - y_ref`` (the reference measured on the background object).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.eit.autograd import eit_voltages
from invprior.eit.mesh import Mesh, disc_mesh
from invprior.eit.model import EITModel
from invprior.errors import ConfigError, ShapeError
from invprior.validation import choice, positive_int, real

__all__ = ["PARAMETRIZATIONS", "PixelToMesh", "EIT"]

PARAMETRIZATIONS = ("identity", "exp", "softplus")


class PixelToMesh:
    """Bilinear interpolation of ``(B, C, n, n)`` images at the element centroids: ``(B, C, E)``.

    The pixel grid covers the square ``[c - r, c + r]^2`` around the mesh's bounding-box centre ``c``
    (``r`` half its longer side), pixel centres at ``c - r + (2 i + 1) r / n``; beyond the outer pixel
    centres the border value is kept. Four gathers and weights, so forward- and reverse-mode
    derivatives both work (``torch.func.jvp`` included).
    """

    def __init__(self, mesh: Mesh, size: int) -> None:
        low, high = mesh.nodes.min(axis=0), mesh.nodes.max(axis=0)
        self.centre, self.half, self.size = (low + high) / 2, float((high - low).max()) / 2, int(size)
        local = (mesh.centroids - self.centre) / self.half                     # in [-1, 1]^2
        bases, fractions = [], []
        for axis, stride in ((0, size), (1, 1)):                                 # x: first image axis
            position = np.clip((1 + local[:, axis]) * size / 2 - 0.5, 0, size - 1)
            base = np.minimum(np.floor(position).astype(np.int64), size - 2)
            bases.append((base * stride, stride))
            fractions.append(position - base)
        (bx, sx), (by, sy) = bases
        fx, fy = fractions
        self.index = torch.from_numpy(np.stack([bx + by, bx + by + sy, bx + sx + by, bx + sx + by + sy]))  # (4, E)
        self.weight = torch.from_numpy(np.stack([(1 - fx) * (1 - fy), (1 - fx) * fy, fx * (1 - fy), fx * fy]))

    def __call__(self, image: Tensor) -> Tensor:
        flat = image.flatten(2)                                                   # (B, C, n * n)
        weight = self.weight.to(device=image.device, dtype=image.dtype)
        index = self.index.to(image.device)
        total = flat[..., index[0]] * weight[0]
        for k in range(1, 4):
            total = total + flat[..., index[k]] * weight[k]
        return total

    def matrix(self) -> sp.csr_matrix:
        """The same interpolation as a sparse ``(E, n * n)`` matrix."""
        count = self.index.shape[1]
        return sp.csr_matrix((self.weight.numpy().ravel(), (np.tile(np.arange(count), 4), self.index.numpy().ravel())),
                             shape=(count, self.size * self.size))

    def pixel_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(x_i, y_j)`` of the pixel centres."""
        offsets = -1.0 + (2.0 * np.arange(self.size) + 1.0) / self.size
        return self.centre[0] + self.half * offsets, self.centre[1] + self.half * offsets


class EIT(ForwardOperator):
    """Electrical impedance tomography on a mesh (default: unit disc, ``h``, ``electrodes`` of the
    boundary fraction ``width``), with the complete electrode model (``contact_impedance``, a number
    or one per electrode) or point electrodes, and any current/measurement protocol
    (``invprior.eit.protocol``); measurements on driven electrodes are left out unless
    ``exclude_driven=False`` (see ``EITModel``). ``channels``: the measured entries, a boolean ``(P, M)``
    mask (missing channels drop out of the range); ``difference``: subtract the background's voltages.
    Nonlinear; its derivatives are the adjoint method's. Its pseudo-inverse is the linearised one-step
    reconstruction about the background ``x0``: ``x0 + (J^T J + lam D^T D)^-1 J^T (y - A(x0))`` with the
    smoothness prior at ``pseudo_inverse_weight`` (as ``one_step_gn``; the network input of EDIP).
    """

    is_linear = False

    def __init__(self, size: int = 64, mesh: Mesh | str | Path | None = None, h: float = 0.08,
                 electrodes: int = 16, width: float = 0.5, currents: Any = "adjacent",
                 measurements: Any = "adjacent", electrode_model: str = "cem",
                 contact_impedance: float | list[float] = 0.01, parametrization: str = "identity",
                 background: float = 1.0, amplitude: float = 1.0, exclude_driven: bool = True,
                 mesh_cache: str | Path | None = None, channels: Any = None, difference: bool = False,
                 pseudo_inverse_weight: float = 3e-2) -> None:
        size = positive_int(size, "eit: size")
        if size < 2:
            raise ConfigError(f"eit: size must be at least 2 (bilinear interpolation), got {size}")
        choice(parametrization, PARAMETRIZATIONS, "eit: parametrization")
        self.background = real(background, "eit: background", minimum=0.0, strict=True)
        self._settings = {"h": h, "electrodes": electrodes, "width": width, "currents": currents,
                          "measurements": measurements, "electrode_model": electrode_model,
                          "contact_impedance": contact_impedance, "parametrization": parametrization,
                          "background": background, "amplitude": amplitude, "exclude_driven": exclude_driven,
                          "mesh_cache": mesh_cache, "mesh": mesh, "channels": channels, "difference": difference,
                          "pseudo_inverse_weight": pseudo_inverse_weight}
        self.pseudo_inverse_weight = real(pseudo_inverse_weight, "eit: pseudo_inverse_weight", minimum=0.0, strict=True)
        if isinstance(mesh, (str, Path)):
            mesh = Mesh.load(mesh)
        self.mesh = mesh if mesh is not None else disc_mesh(h, electrodes, width, cache=mesh_cache)
        self.model = EITModel(self.mesh, currents, measurements, electrode_model, amplitude, exclude_driven)
        _, z = self.model.check(np.ones(len(self.mesh.elements)), contact_impedance)  # refuses bad impedances now
        self.contact_impedance = torch.from_numpy(z)
        self.parametrization, self.size = parametrization, size
        self.to_mesh = PixelToMesh(self.mesh, size)
        full = (self.model.num_patterns, self.model.num_measurements)
        self.channels = None if channels is None else self._channels(channels, full)
        self.difference = bool(difference)
        self._background_voltages: Tensor | None = None
        self._linearised: tuple[Tensor, np.ndarray, tuple] | None = None
        super().__init__((1, size, size), full if self.channels is None else (int(self.channels.sum()),))

    @staticmethod
    def _channels(channels: Any, full: tuple[int, int]) -> torch.Tensor:
        """The measured-channel mask as a flat boolean tensor over the ``P * M`` voltages (pattern-major)."""
        mask = np.asarray(channels.detach().cpu() if hasattr(channels, "detach") else channels)
        if mask.shape != full or mask.dtype != bool:
            raise ShapeError(f"eit: channels must be a boolean mask of shape (patterns, measurements) = {full}, "
                             f"got {mask.dtype} {mask.shape}")
        if not mask.any():
            raise ConfigError("eit: channels marks no measured entry; nothing is left to reconstruct from")
        return torch.from_numpy(mask.ravel().copy())

    def __repr__(self) -> str:
        q = self.mesh.quality()
        return (f"EIT(size={self.size}, elements={q['elements']}, electrodes={self.model.electrodes}, "
                f"electrode_model={self.model.electrode_model!r}, patterns={self.model.num_patterns}, "
                f"measurements={self.model.num_measurements}, parametrization={self.parametrization!r})")

    def on_grid(self, size: int) -> EIT:
        """The same electrodes, protocol and parametrisation for ``size x size`` images, on a mesh refined in
        proportion (``h * self.size / size``; a mesh given explicitly is kept): data simulated there are
        not produced by this operator (no inverse crime)."""
        settings = dict(self._settings)
        if settings["mesh"] is None:
            settings["h"] = settings["h"] * self.size / size
        return EIT(size, **settings)

    def conductivity(self, x: Tensor) -> Tensor:
        """Element conductivities ``(B, E)`` of images ``x`` (``(B, 1, n, n)``)."""
        return self._positive(self.to_mesh(x)[:, 0])

    def _positive(self, values: Tensor) -> Tensor:
        """The parametrisation ``sigma(v)``."""
        if self.parametrization == "exp":
            return self.background * torch.exp(values)
        if self.parametrization == "softplus":
            return self.background * F.softplus(values) / math.log(2.0)
        return values

    def voltages(self, sigma: Tensor) -> Tensor:
        """Voltages ``(B, P, M)`` for element conductivities ``sigma`` ``(B, E)``."""
        z = self.contact_impedance.to(sigma)
        return torch.stack([eit_voltages(self.model, s, z) for s in sigma])

    def measured(self, voltages: Tensor) -> Tensor:
        """The measured channels of voltages ``(B, P, M)``: ``(B, K)`` with ``channels``, else unchanged."""
        return voltages if self.channels is None else voltages.flatten(1)[:, self.channels.to(voltages.device)]

    def background_voltages(self, like: Tensor) -> Tensor:
        """The measured channels at the background conductivity (``x = 0`` for ``exp``/``softplus``), ``(1, ...)``."""
        if self._background_voltages is None:
            sigma = np.full(len(self.mesh.elements), self.background)
            full = torch.from_numpy(self.model.voltages(sigma, self.contact_impedance.numpy()).copy())[None]
            self._background_voltages = self.measured(full)
        return self._background_voltages.to(device=like.device, dtype=like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        voltages = self.measured(self.voltages(self.conductivity(x)))
        return voltages - self.background_voltages(voltages) if self.difference else voltages

    def jacobian(self, x: Tensor) -> Tensor:
        """``dA/dx`` at one image ``x`` (``(1, 1, n, n)``) as a dense ``(P * M, n * n)`` float64 matrix: the
        element Jacobian (adjoint fields) times ``dsigma/dv`` times the bilinear sampling matrix."""
        if tuple(x.shape) != (1, *self.domain_shape):
            shape = ", ".join(map(str, self.domain_shape))
            raise ShapeError(f"EIT.jacobian: expected one image of shape (1, {shape}), got {tuple(x.shape)}")
        sampling = self._sampling()
        values = torch.from_numpy(sampling @ x.detach().to("cpu", torch.float64).numpy().ravel())
        element = self.model.cached_jacobian(self._positive(values).numpy(), self.contact_impedance.numpy())
        weighted = element * self._slope(values).numpy()                       # (P M, E)
        if self.channels is not None:
            weighted = weighted[self.channels.numpy()]
        return torch.from_numpy(np.asarray(sampling.T @ weighted.T).T)

    def _start(self) -> Tensor:
        """The background image ``x0`` in the parametrisation (float64, ``(1, 1, n, n)``)."""
        value = self.background if self.parametrization == "identity" else 0.0
        return torch.full((1, *self.domain_shape), value, dtype=torch.float64)

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        if self._linearised is None:   # J at x0 and the Cholesky factor of J^T J + lam D^T D, formed once
            from invprior.eit.gauss_newton import smoothness_normal_matrix
            x0 = self._start()
            jac = self.jacobian(x0).numpy()
            factor = scipy.linalg.cho_factor(smoothness_normal_matrix(jac, self.pseudo_inverse_weight)[0])
            self._linearised = (x0, jac, factor)
        x0, jac, factor = self._linearised
        residual = (y.detach().to("cpu", torch.float64) - self(x0)).flatten(1).numpy()
        change = scipy.linalg.cho_solve(factor, jac.T @ residual.T).T
        return (x0 + torch.from_numpy(change).view(-1, *self.domain_shape)).to(y)

    def _sampling(self) -> sp.csr_matrix:
        if getattr(self, "_sampling_matrix", None) is None:
            self._sampling_matrix = self.to_mesh.matrix()
        return self._sampling_matrix

    def parameter(self, sigma: Tensor) -> Tensor:
        """The image values ``v`` whose parametrisation gives conductivities ``sigma`` (inverse of ``sigma(v)``)."""
        if self.parametrization == "exp":
            return torch.log(sigma / self.background)
        if self.parametrization == "softplus":
            return torch.log(torch.expm1(sigma / self.background * math.log(2.0)))
        return sigma

    def _slope(self, values: Tensor) -> Tensor:
        """``dsigma / dv`` of the parametrisation at element values ``v``."""
        if self.parametrization == "exp":
            return self.background * torch.exp(values)
        if self.parametrization == "softplus":
            return self.background * torch.sigmoid(values) / math.log(2.0)
        return torch.ones_like(values)
