"""P1 finite elements on a ``Mesh``: gradients, stiffness assembly, boundary terms.

With barycentric basis functions ``phi_i`` the stiffness matrix of an element-wise conductivity is
``K(sigma)_ij = sum_e sigma_e |T_e| grad phi_i . grad phi_j``; it is linear in ``sigma``, so its CSR
values are ``S sigma`` for a fixed sparse matrix ``S`` built once per mesh.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from invprior.eit.mesh import Mesh

__all__ = ["basis_gradients", "Stiffness", "edge_mass", "boundary_load"]


def basis_gradients(mesh: Mesh) -> np.ndarray:
    """``grad phi`` of the three basis functions of every element, shape ``(E, 3, 2)``."""
    p = mesh.nodes[mesh.elements]                                      # (E, 3, 2)
    # grad phi_i = rot90(p_{i+2} - p_{i+1}) / (2 |T|) for counter-clockwise triangles
    opposite = np.roll(p, -2, axis=1) - np.roll(p, -1, axis=1)
    rotated = np.stack([-opposite[..., 1], opposite[..., 0]], axis=-1)
    return rotated / (2.0 * mesh.areas)[:, None, None]


class Stiffness:
    """Assemble ``K(sigma)`` for element-wise ``sigma`` in one sparse product, and evaluate
    ``sum_p |T_e| grad a_p . grad b_p`` per element (the derivative of ``a^T K(sigma) b``)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.gradients = basis_gradients(mesh)                         # (E, 3, 2)
        self.areas = mesh.areas
        unit = self.areas[:, None, None] * np.einsum("eid,ejd->eij", self.gradients, self.gradients)
        n, count = len(mesh.nodes), len(mesh.elements)
        rows = np.repeat(mesh.elements, 3, axis=1).ravel()
        cols = np.tile(mesh.elements, (1, 3)).ravel()
        keys, position = np.unique(rows * n + cols, return_inverse=True)
        self.indptr = np.searchsorted(keys // n, np.arange(n + 1))
        self.indices = keys % n
        owner = np.repeat(np.arange(count), 9)
        self.assembly = sp.csr_matrix((unit.ravel(), (position, owner)), shape=(len(keys), count))
        self.shape = (n, n)

    def matrix(self, sigma: np.ndarray) -> sp.csr_matrix:
        """``K(sigma)`` (N x N, CSR)."""
        return sp.csr_matrix((self.assembly @ sigma, self.indices, self.indptr), shape=self.shape)

    def element_products(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``sum_p |T_e| grad a_p . grad b_p`` for nodal fields ``a``, ``b`` of shape (N, P): (E,)."""
        ga = np.einsum("eid,eip->edp", self.gradients, a[self.mesh.elements])
        gb = np.einsum("eid,eip->edp", self.gradients, b[self.mesh.elements])
        return self.areas * np.einsum("edp,edp->e", ga, gb)

    def element_gradients(self, a: np.ndarray) -> np.ndarray:
        """``grad a`` per element for nodal fields ``a`` (N, P): (E, 2, P)."""
        return np.einsum("eid,eip->edp", self.gradients, a[self.mesh.elements])


def edge_mass(mesh: Mesh, edges: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, float]:
    """Boundary terms of a set of edges: ``M_ij = int phi_i phi_j ds``, ``b_i = int phi_i ds`` and the
    total length, over the union of ``edges`` (K, 2)."""
    n = len(mesh.nodes)
    lengths = np.linalg.norm(mesh.nodes[edges[:, 1]] - mesh.nodes[edges[:, 0]], axis=1)
    local = np.array([[2.0, 1.0], [1.0, 2.0]]) / 6.0
    rows = np.repeat(edges, 2, axis=1).ravel()
    cols = np.tile(edges, (1, 2)).ravel()
    mass = sp.csr_matrix(((lengths[:, None, None] * local).ravel(), (rows, cols)), shape=(n, n))
    load = np.bincount(edges.ravel(), weights=np.repeat(lengths / 2.0, 2), minlength=n)
    return mass, load, float(lengths.sum())


def boundary_load(mesh: Mesh, flux: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``b_i = int_{boundary} g phi_i ds`` for a boundary flux ``g(points (K, 2)) -> (K,)``, by
    two-point Gauss quadrature on every boundary edge (exact for P1 times a linear ``g``)."""
    a, b = mesh.nodes[mesh.boundary[:, 0]], mesh.nodes[mesh.boundary[:, 1]]
    lengths = np.linalg.norm(b - a, axis=1)
    out = np.zeros(len(mesh.nodes))
    for s in (0.5 - 0.5 / np.sqrt(3.0), 0.5 + 0.5 / np.sqrt(3.0)):
        g = flux(a + s * (b - a)) * lengths / 2.0
        np.add.at(out, mesh.boundary[:, 0], g * (1.0 - s))
        np.add.at(out, mesh.boundary[:, 1], g * s)
    return out
