"""The EIT forward model: complete electrode model (CEM) or point electrodes, P1 FEM, sparse LU.

CEM (Somersalo, Cheney, Isaacson 1992): ``div(sigma grad u) = 0`` in the domain,
``sigma du/dn = 0`` off the electrodes, ``u + z_l sigma du/dn = U_l`` on electrode ``e_l`` and
``int_{e_l} sigma du/dn = I_l``. Its Galerkin system in ``x = (u, U)`` is ``A(sigma, z) x = R^T I``
with ``A = [[K(sigma) + sum_l M_l / z_l, -b_l / z_l], [-b_l^T / z_l, |e_l| / z_l]]`` (``M_l``, ``b_l``
the electrode's boundary mass matrix and load vector) and ``R`` the read-out ``U = R x``. Point
electrodes inject ``I_l`` at one boundary node each: ``A = K(sigma)`` and ``R`` picks those nodes.
The grounding ``sum_l U_l = 0`` borders the system with ``c = R^T 1`` (``A`` is singular on
constants). One LU factorisation per ``(sigma, z)`` serves every current pattern and the adjoint.

Derivatives (``V = Q R x`` for the measurement matrix ``Q``): with ``w_p`` solving the bordered
system for ``R^T Q^T g_p``, ``dL/dsigma_e = -sum_p |T_e| grad w_p . grad x_p`` and
``dL/dz_l = z_l^-2 sum_p int_{e_l} (w_p - W_{p,l}) (x_p - U_{p,l}) ds``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numpy.typing import ArrayLike

from invprior.eit.fem import Stiffness, edge_mass
from invprior.eit.mesh import Mesh
from invprior.eit.protocol import current_patterns, measurement_patterns
from invprior.errors import ConfigError, NonFiniteError, ShapeError
from invprior.validation import choice

__all__ = ["ELECTRODE_MODELS", "EITModel", "Solution"]

ELECTRODE_MODELS = ("cem", "point")


@dataclass
class Solution:
    """One forward solve: the bordered LU, the fields ``x`` (n_x, P) and the voltages ``V`` (P, M)."""

    lu: Any
    fields: np.ndarray
    voltages: np.ndarray
    jacobian: np.ndarray | None = None


class EITModel:
    """Voltages ``V[p, m] = (Q U_p)_m`` for element conductivities ``sigma`` and contact impedances ``z``.

    ``currents`` and ``measurements`` are protocols (see ``invprior.eit.protocol``);
    ``electrode_model`` is ``"cem"`` (contact impedances ``z``, one per electrode) or ``"point"``
    (each electrode is the boundary node nearest its midpoint; ``z`` is ignored). With
    ``exclude_driven`` the measurements that involve an electrode carrying current in a pattern are
    left out (set to zero in ``V``, 208 of 256 remain for 16 adjacent electrodes): they depend most on
    the contact impedance and on the mesh near the electrode edges.
    """

    def __init__(self, mesh: Mesh, currents: Any = "adjacent", measurements: Any = "adjacent",
                 electrode_model: str = "cem", amplitude: float = 1.0, exclude_driven: bool = True,
                 cache_size: int = 4) -> None:
        if not isinstance(mesh, Mesh):
            raise ConfigError(f"EIT: mesh must be an invprior.eit.Mesh, got {type(mesh).__name__}")
        choice(electrode_model, ELECTRODE_MODELS, "EIT: electrode_model")
        self.mesh, self.electrode_model = mesh, electrode_model
        self.electrodes = mesh.num_electrodes
        if self.electrodes < 2:
            raise ConfigError(f"EIT: the mesh has {self.electrodes} electrode(s); at least 2 are needed")
        self.currents = current_patterns(currents, self.electrodes, amplitude)          # (L, P)
        self.measurements = measurement_patterns(measurements, self.electrodes)        # (M, L)
        driven = np.abs(self.currents) > 0                                             # (L, P)
        self.mask = (((np.abs(self.measurements) > 0) @ driven) == 0).T.astype(np.float64) if exclude_driven \
            else np.ones((self.currents.shape[1], self.measurements.shape[0]))          # (P, M)
        if not self.mask.any():
            raise ConfigError("EIT: every measurement involves a driven electrode; use exclude_driven=False")
        self.stiffness = Stiffness(mesh)
        n = len(mesh.nodes)
        self.size = n + (self.electrodes if electrode_model == "cem" else 0)             # unknowns x
        if electrode_model == "cem":
            parts = [edge_mass(mesh, mesh.electrode_edges(electrode)) for electrode in range(self.electrodes)]
            self._mass = [p[0] for p in parts]
            self._load = np.stack([p[1] for p in parts], axis=1)                        # (N, L)
            self._length = np.array([p[2] for p in parts])
            self.readout = sp.csr_matrix((np.ones(self.electrodes), (np.arange(self.electrodes),
                                                                      n + np.arange(self.electrodes))),
                                         shape=(self.electrodes, self.size))
        else:
            self.nodes = self._point_nodes()
            self.readout = sp.csr_matrix((np.ones(self.electrodes), (np.arange(self.electrodes), self.nodes)),
                                         shape=(self.electrodes, self.size))
        self._border = np.asarray(self.readout.sum(axis=0)).ravel()                     # c = R^T 1
        self._cache: OrderedDict[bytes, Solution] = OrderedDict()
        self._cache_size = int(cache_size)
        self.last_inputs: tuple[np.ndarray, np.ndarray] | None = None  # (sigma, z) of the latest solve
        self.last_solution: Solution | None = None

    @property
    def num_patterns(self) -> int:
        return self.currents.shape[1]

    @property
    def num_measurements(self) -> int:
        return self.measurements.shape[0]

    def _point_nodes(self) -> np.ndarray:
        """The electrode node nearest the electrode's centre of length (edge midpoints weighted by length)."""
        nodes = []
        for electrode in range(self.electrodes):
            edges = self.mesh.electrode_edges(electrode)
            ends = self.mesh.nodes[edges]                                      # (K, 2, 2)
            lengths = np.linalg.norm(ends[:, 1] - ends[:, 0], axis=1)
            centre = (ends.mean(axis=1) * lengths[:, None]).sum(axis=0) / lengths.sum()
            candidates = np.unique(edges)
            nodes.append(candidates[np.argmin(np.linalg.norm(self.mesh.nodes[candidates] - centre, axis=1))])
        return np.array(nodes)

    # -- checks -------------------------------------------------------------------------
    def check(self, sigma: np.ndarray, z: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
        sigma = np.asarray(sigma, dtype=np.float64)
        if sigma.shape != (len(self.mesh.elements),):
            raise ShapeError(f"EIT: expected one conductivity per element ({len(self.mesh.elements)}), "
                             f"got shape {sigma.shape}")
        if not np.isfinite(sigma).all():
            raise NonFiniteError("EIT: the conductivity has non-finite values")
        if (sigma <= 0).any():
            raise ConfigError(f"EIT: the conductivity must be positive; min {float(sigma.min()):.3g} at element "
                              f"{int(sigma.argmin())} (use a positive parametrisation, e.g. 'exp')")
        if self.electrode_model == "point":
            return sigma, np.ones(self.electrodes)
        z = np.asarray(0.01 if z is None else z, dtype=np.float64)
        if z.ndim > 1 or z.size not in (1, self.electrodes):
            raise ConfigError(f"EIT: give one contact impedance or one per electrode ({self.electrodes}), "
                              f"got shape {z.shape}")
        z = np.broadcast_to(z, (self.electrodes,)).copy()
        if not np.isfinite(z).all() or (z <= 0).any():
            raise ConfigError(f"EIT: contact impedances must be positive and finite, got min {float(z.min()):.3g}")
        return sigma, z

    # -- assembly and solves ------------------------------------------------------------
    def system(self, sigma: np.ndarray, z: np.ndarray) -> sp.csc_matrix:
        """The bordered system ``[[A, c], [c^T, 0]]`` (size ``n_x + 1``)."""
        k = self.stiffness.matrix(sigma)
        if self.electrode_model == "cem":
            inverse = 1.0 / z
            uu = k + sum(m * w for m, w in zip(self._mass, inverse))
            uv = sp.csr_matrix(-self._load * inverse)
            a = sp.bmat([[uu, uv], [uv.T, sp.diags(self._length * inverse)]])
        else:
            a = k
        c = sp.csr_matrix(self._border[:, None])
        return sp.bmat([[a, c], [c.T, None]], format="csc")

    def solve(self, sigma: np.ndarray, z: np.ndarray | None = None) -> Solution:
        """Factorise once, solve for every current pattern, read out the voltages (memoised on the values)."""
        sigma, z = self.check(sigma, z)
        self.last_inputs = (sigma, z)
        key = sigma.tobytes() + z.tobytes()
        if key in self._cache:
            self._cache.move_to_end(key)
            self.last_solution = self._cache[key]
            return self.last_solution
        lu = spla.splu(self.system(sigma, z))
        rhs = np.vstack([self.readout.T @ self.currents, np.zeros((1, self.num_patterns))])
        fields = lu.solve(rhs)[:-1]
        voltages = (self.measurements @ (self.readout @ fields)).T * self.mask
        solution = Solution(lu, fields, voltages)
        self.last_solution = solution
        self._cache[key] = solution
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return solution

    def voltages(self, sigma: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        """``V`` (P, M)."""
        return self.solve(sigma, z).voltages

    def _adjoint_fields(self, solution: Solution, weights: np.ndarray) -> np.ndarray:
        """``w_p`` solving the bordered system for ``R^T Q^T weights_p`` (weights (M, P)); one solve."""
        rhs = np.vstack([self.readout.T @ (self.measurements.T @ weights), np.zeros((1, weights.shape[1]))])
        return solution.lu.solve(rhs)[:-1]

    def gradient(self, sigma: np.ndarray, z: np.ndarray | None, grad_voltages: np.ndarray,
                 contact: bool = False, solution: Solution | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(dL/dsigma (E,), dL/dz (L,) or None)`` for ``dL/dV = grad_voltages`` (P, M), by the adjoint
        (reusing ``solution``, the forward solve at ``(sigma, z)``, when given)."""
        sigma, z = self.check(sigma, z)
        solution = solution if solution is not None else self.solve(sigma, z)
        n = len(self.mesh.nodes)
        adjoint = self._adjoint_fields(solution, (np.asarray(grad_voltages, dtype=np.float64) * self.mask).T)
        d_sigma = -self.stiffness.element_products(adjoint[:n], solution.fields[:n])
        if not contact or self.electrode_model != "cem":
            return d_sigma, None
        d_z = np.empty(self.electrodes)
        for electrode in range(self.electrodes):
            w, x = adjoint[:n], solution.fields[:n]
            wl, xl = adjoint[n + electrode], solution.fields[n + electrode]
            mass, load = self._mass[electrode], self._load[:, electrode]
            value = (np.einsum("ip,ip->", w, mass @ x) - (load @ w) @ xl - wl @ (load @ x)
                     + self._length[electrode] * wl @ xl)
            d_z[electrode] = value / z[electrode] ** 2
        return d_sigma, d_z

    def jvp(self, sigma: np.ndarray, z: np.ndarray | None, tangent: np.ndarray) -> np.ndarray:
        """``dV`` (P, M) for a conductivity perturbation ``tangent`` (E,): ``dx = -A^-1 K(tangent) x``."""
        sigma, z = self.check(sigma, z)
        solution = self.solve(sigma, z)
        n = len(self.mesh.nodes)
        change = np.zeros((self.size + 1, self.num_patterns))
        change[:n] = -(self.stiffness.matrix(np.asarray(tangent, dtype=np.float64)) @ solution.fields[:n])
        dx = solution.lu.solve(change)[:-1]
        return (self.measurements @ (self.readout @ dx)).T * self.mask

    def jacobian(self, sigma: np.ndarray, z: np.ndarray | None = None, solution: Solution | None = None) -> np.ndarray:
        """``dV / dsigma`` as a dense ``(P * M, E)`` matrix (pattern-major rows), by reciprocity:
        ``-|T_e| grad w_m . grad x_p`` with ``w_m`` the field of measurement ``m`` driven as a current."""
        sigma, z = self.check(sigma, z)
        solution = solution if solution is not None else self.solve(sigma, z)
        n = len(self.mesh.nodes)
        adjoint = self._adjoint_fields(solution, np.eye(self.num_measurements))      # (n_x, M)
        gx = self.stiffness.element_gradients(solution.fields[:n])                  # (E, 2, P)
        gw = self.stiffness.element_gradients(adjoint[:n])                          # (E, 2, M)
        jac = -np.einsum("e,edp,edm->pme", self.stiffness.areas, gx, gw) * self.mask[:, :, None]
        return jac.reshape(self.num_patterns * self.num_measurements, -1)

    def cached_jacobian(self, sigma: np.ndarray, z: np.ndarray | None = None,
                        solution: Solution | None = None) -> np.ndarray:
        """``jacobian``, kept with the solution (forward-mode products at a fixed point reuse it)."""
        solution = solution if solution is not None else self.solve(sigma, z)
        if solution.jacobian is None:
            solution.jacobian = self.jacobian(sigma, z, solution)
        return solution.jacobian

    def transfer_matrix(self, sigma: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        """Electrode potentials for unit currents ``e_l - e_0``, ``l = 1..L-1``: the symmetric
        ``(L-1, L-1)`` transfer-impedance matrix ``Z_kl = (U^(l)_k - U^(l)_0)`` (reciprocity)."""
        sigma, z = self.check(sigma, z)
        lu = spla.splu(self.system(sigma, z))
        patterns = np.eye(self.electrodes)[:, 1:] - np.eye(self.electrodes)[:, :1]
        fields = lu.solve(np.vstack([self.readout.T @ patterns, np.zeros((1, self.electrodes - 1))]))[:-1]
        potentials = self.readout @ fields
        return patterns.T @ potentials
