"""Triangular meshes of 2D EIT domains with electrodes as marked boundary edges.

A ``Mesh`` holds nodes ``(N, 2)``, counter-clockwise triangles ``(E, 3)`` and the boundary
edges ``(B, 2)`` with the electrode each belongs to (``-1`` for the gaps). ``disc_mesh`` and
``polygon_mesh`` generate one with Shewchuk's Triangle (the ``triangle`` package, extra
``eit``): a constrained Delaunay triangulation with a minimum-angle bound and an area bound
``sqrt(3)/4 h^2``, on a boundary polygon whose vertices lie on the true boundary, electrode ends
included, at spacing about ``h``. Triangle is chosen for its quality guarantees (no angle below
the bound, here 30 degrees), exact placement of electrode ends and a small wheel with no system
dependencies; any other generator can be used through ``Mesh.from_arrays``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from invprior._optional import require
from invprior.errors import ConfigError, MeshError, ShapeError
from invprior.io import atomic_write, content_hash

__all__ = ["Mesh", "disc_mesh", "polygon_mesh", "electrode_arcs"]

_FEATURE = "EIT meshes"
#: Growth of the boundary spacing per unit distance from an electrode end.
_GRADING = 0.3
#: An element with an angle below this (radians) is degenerate (zero area) and refused.
_DEGENERATE_ANGLE = 1e-6
#: An element with an angle below this (degrees) is poor: the mesh is used, with a warning.
_POOR_ANGLE = 5.0
#: How many offending indices an error message names.
_SHOWN = 5


@dataclass(frozen=True)
class Mesh:
    """A P1 mesh: ``nodes`` (N, 2) float64, ``elements`` (E, 3) int64 counter-clockwise,
    ``boundary`` (B, 2) int64 boundary edges and ``edge_electrode`` (B,) int64 (electrode index or -1).
    Every construction (``Mesh(...)``, ``from_arrays``, ``load``, the generators) checks the arrays first (see
    ``_checked``)."""

    nodes: np.ndarray
    elements: np.ndarray
    boundary: np.ndarray
    edge_electrode: np.ndarray

    def __post_init__(self) -> None:
        for name, array in zip(("nodes", "elements", "boundary", "edge_electrode"),
                               _checked(self.nodes, self.elements, self.boundary, self.edge_electrode)):
            object.__setattr__(self, name, array)

    @classmethod
    def from_arrays(cls, nodes: ArrayLike, elements: ArrayLike, boundary: ArrayLike,
                    edge_electrode: ArrayLike) -> Mesh:
        """A mesh from user arrays, as ``Mesh(...)``: converted, checked (see ``_checked``: refused with a
        ``MeshError`` or ``ShapeError``, warned about when poor) and with clockwise triangles reoriented."""
        return cls(np.asarray(nodes), np.asarray(elements), np.asarray(boundary), np.asarray(edge_electrode))

    # -- geometry -----------------------------------------------------------------------
    @property
    def num_electrodes(self) -> int:
        return int(self.edge_electrode.max()) + 1 if (self.edge_electrode >= 0).any() else 0

    @property
    def areas(self) -> np.ndarray:
        """Element areas (E,)."""
        return _signed_areas(self.nodes, self.elements)

    @property
    def centroids(self) -> np.ndarray:
        """Element centroids (E, 2)."""
        return self.nodes[self.elements].mean(axis=1)

    @property
    def h(self) -> float:
        """The longest element edge."""
        return float(self._edge_lengths().max())

    def electrode_edges(self, electrode: int) -> np.ndarray:
        """Boundary edges (K, 2) of ``electrode``."""
        return self.boundary[self.edge_electrode == electrode]

    def electrode_lengths(self) -> np.ndarray:
        """Length of every electrode (L,)."""
        lengths = np.linalg.norm(np.diff(self.nodes[self.boundary], axis=1)[:, 0], axis=1)
        return np.bincount(self.edge_electrode[self.edge_electrode >= 0],
                           weights=lengths[self.edge_electrode >= 0], minlength=self.num_electrodes)

    def min_angle(self) -> float:
        """The smallest interior angle of any triangle, in degrees."""
        return float(np.degrees(_angles(self.nodes, self.elements).min()))

    def quality(self) -> dict[str, float]:
        """Element-quality figures: count, smallest angle (degrees), largest edge ratio, ``h``."""
        lengths = self._edge_lengths()
        return {"nodes": len(self.nodes), "elements": len(self.elements), "min_angle": self.min_angle(),
                "max_edge_ratio": float((lengths.max(1) / lengths.min(1)).max()), "h": self.h}

    def _edge_lengths(self) -> np.ndarray:
        corners = self.nodes[self.elements]
        return np.linalg.norm(corners - np.roll(corners, -1, axis=1), axis=2)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the mesh to ``path`` (``.npz``, atomically)."""
        arrays = {"nodes": self.nodes, "elements": self.elements, "boundary": self.boundary,
                  "edge_electrode": self.edge_electrode}
        atomic_write(Path(path), lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # numpy stubs: **arrays vs allow_pickle

    @classmethod
    def load(cls, path: str | Path) -> Mesh:
        """Read a mesh written by ``save``."""
        with np.load(Path(path)) as data:
            return cls.from_arrays(data["nodes"], data["elements"], data["boundary"], data["edge_electrode"])


def _signed_areas(nodes: np.ndarray, elements: np.ndarray) -> np.ndarray:
    p0, p1, p2 = (nodes[elements[:, i]] for i in range(3))
    d1, d2 = p1 - p0, p2 - p0
    return 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])


def _angles(nodes: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """Interior angles (E, 3) in radians, at each element's corners (``atan2``: accurate for tiny angles too)."""
    corners = nodes[elements]
    a, b = np.roll(corners, -1, axis=1) - corners, np.roll(corners, 1, axis=1) - corners
    return np.arctan2(np.abs(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]), (a * b).sum(axis=2))


def _listed(indices: np.ndarray) -> str:
    """The first ``_SHOWN`` of ``indices``, comma-separated (``...`` when there are more)."""
    return ", ".join(str(int(i)) for i in indices[:_SHOWN]) + (", ..." if len(indices) > _SHOWN else "")


def _checked(nodes: ArrayLike, elements: ArrayLike, boundary: ArrayLike,
             edge_electrode: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The arrays as float64/int64 with counter-clockwise elements, after refusing shapes and node indices out of
    range (``ShapeError``), electrodes not numbered ``0..L-1``, non-finite coordinates, nodes in no element,
    duplicated elements (the same nodes in any order) and degenerate ones (an angle below ``_DEGENERATE_ANGLE``
    radians), then the edge checks of ``_check_edges`` (``MeshError``); warns when an angle is below ``_POOR_ANGLE``
    degrees."""
    nodes = np.ascontiguousarray(nodes, dtype=np.float64)
    elements = np.ascontiguousarray(elements, dtype=np.int64)
    boundary = np.ascontiguousarray(boundary, dtype=np.int64)
    edge_electrode = np.ascontiguousarray(edge_electrode, dtype=np.int64).reshape(-1)
    if nodes.ndim != 2 or nodes.shape[1] != 2 or nodes.shape[0] == 0:
        raise ShapeError(f"Mesh: nodes must be a non-empty (N, 2) array, got shape {nodes.shape}")
    for name, array, width in (("elements", elements, 3), ("boundary", boundary, 2)):
        if array.ndim != 2 or array.shape[1] != width or array.shape[0] == 0:
            raise ShapeError(f"Mesh: {name} must be a non-empty (K, {width}) array, got shape {array.shape}")
        outside = np.flatnonzero(((array < 0) | (array >= len(nodes))).any(axis=1))
        if outside.size:
            raise ShapeError(f"Mesh: {outside.size} rows of {name} refer to nodes outside 0..{len(nodes) - 1} (no "
                             f"such node): rows {_listed(outside)} (row {int(outside[0])} = "
                             f"{array[outside[0]].tolist()})")
    if edge_electrode.shape != (len(boundary),):
        raise ShapeError(f"Mesh: edge_electrode must have one entry per boundary edge ({len(boundary)}), "
                         f"got {edge_electrode.shape}")
    used = np.unique(edge_electrode[edge_electrode >= 0])
    if used.size and not np.array_equal(used, np.arange(used.size)):
        raise MeshError(f"Mesh: electrodes must be numbered 0..L-1, got {used.tolist()}")
    bad = np.flatnonzero(~np.isfinite(nodes).all(axis=1))
    if bad.size:
        raise MeshError(f"Mesh: {bad.size} of {len(nodes)} nodes have non-finite coordinates: nodes {_listed(bad)}")
    isolated = np.flatnonzero(np.bincount(elements.ravel(), minlength=len(nodes)) == 0)
    if isolated.size:
        raise MeshError(f"Mesh: {isolated.size} of {len(nodes)} nodes belong to no element (isolated): nodes "
                        f"{_listed(isolated)}")
    ordered = np.sort(elements, axis=1)
    order = np.lexsort(ordered.T[::-1])  # stable: equal node sets in increasing element index
    same = np.flatnonzero((ordered[order[1:]] == ordered[order[:-1]]).all(axis=1))
    if same.size:
        pairs = ", ".join(f"element {int(order[k + 1])} repeats {int(order[k])}" for k in same[:_SHOWN])
        raise MeshError(f"Mesh: {same.size} duplicated elements (the same three nodes in any order): {pairs}"
                        + (", ..." if same.size > _SHOWN else ""))
    smallest = _angles(nodes, elements).min(axis=1)
    degenerate = np.flatnonzero(smallest < _DEGENERATE_ANGLE)
    if degenerate.size:
        raise MeshError(f"Mesh: {degenerate.size} degenerate elements (an angle below {_DEGENERATE_ANGLE:g} rad: "
                        f"collinear or coincident nodes, zero area): elements {_listed(degenerate)} (element "
                        f"{int(degenerate[0])} has nodes {elements[degenerate[0]].tolist()})")
    elements = np.where((_signed_areas(nodes, elements) < 0)[:, None], elements[:, [0, 2, 1]], elements)
    _check_edges(nodes, elements, boundary)
    poor = np.flatnonzero(smallest < np.radians(_POOR_ANGLE))
    if poor.size:
        worst = int(np.argmin(smallest))
        warnings.warn(f"Mesh: smallest angle {np.degrees(smallest[worst]):.3g} degrees (element {worst}); "
                      f"{poor.size} of {len(elements)} elements have an angle below {_POOR_ANGLE:g} degrees, which "
                      "makes the FEM system ill-conditioned and the field inaccurate there; remesh with a "
                      "minimum-angle bound", RuntimeWarning, stacklevel=4)
    return nodes, elements, boundary, edge_electrode


def _check_edges(nodes: np.ndarray, elements: np.ndarray, boundary: np.ndarray) -> None:
    """Refuse overlapping elements and boundary edges off the mesh's boundary. ``elements`` are counter-clockwise,
    so two elements sharing an edge traverse it in opposite directions unless they lie on the same side of it
    (folded); an edge in three or more elements overlaps too. Without those, the boundary (edges in one element,
    directed by it) winds around a point once per element covering it: more than once at an element's centroid
    means another part of the mesh lies over it."""
    count = len(nodes)
    tails, heads = elements.ravel(), np.roll(elements, -1, axis=1).ravel()
    owner = np.arange(tails.size) // 3
    keys, inverse, uses = np.unique(np.minimum(tails, heads) * count + np.maximum(tails, heads),
                                    return_inverse=True, return_counts=True)

    def elements_of(edges: np.ndarray) -> str:
        return "; ".join(f"edge ({int(keys[k] // count)}, {int(keys[k] % count)}) in elements "
                         f"{owner[inverse == k].tolist()}" for k in edges[:_SHOWN])

    crowded = np.flatnonzero(uses > 2)
    if crowded.size:
        raise MeshError(f"Mesh: {crowded.size} edges are shared by more than two elements (overlapping elements): "
                        f"{elements_of(crowded)}")
    forward = np.bincount(inverse, weights=tails < heads, minlength=keys.size)
    folded = np.flatnonzero((uses == 2) & (forward != 1))
    if folded.size:
        raise MeshError(f"Mesh: {folded.size} folded edges (the two elements sharing each lie on the same side of "
                        f"it, so they overlap; flipped orientation): {elements_of(folded)}")
    outer = uses[inverse] == 1
    listed = np.minimum(boundary[:, 0], boundary[:, 1]) * count + np.maximum(boundary[:, 0], boundary[:, 1])
    stray = np.flatnonzero(~np.isin(listed, keys[uses == 1]))
    if stray.size:
        raise MeshError(f"Mesh: {stray.size} boundary edges are not on the mesh's boundary (an edge of exactly one "
                        f"element): rows {_listed(stray)} (row {int(stray[0])} = {boundary[stray[0]].tolist()})")
    _, first, repeated = np.unique(listed, return_index=True, return_inverse=True)
    twice = np.flatnonzero(first[repeated] != np.arange(len(listed)))
    if twice.size:
        raise MeshError(f"Mesh: {twice.size} boundary edges are listed twice: rows {_listed(twice)} (row "
                        f"{int(twice[0])} = {boundary[twice[0]].tolist()})")
    (x0, y0), (x1, y1) = nodes[tails[outer]].T, nodes[heads[outer]].T
    probes = np.unique(owner[outer])
    px, py = nodes[elements[probes]].mean(axis=1).T
    rank = np.argsort(py)
    low = np.searchsorted(py[rank], np.minimum(y0, y1))  # the centroids with min(y0, y1) <= y < max(y0, y1)
    spans = np.searchsorted(py[rank], np.maximum(y0, y1)) - low
    edge = np.repeat(np.arange(len(x0)), spans)
    probe = rank[np.arange(spans.sum()) + np.repeat(low - np.cumsum(spans) + spans, spans)]
    left = (x1 - x0)[edge] * (py[probe] - y0[edge]) - (y1 - y0)[edge] * (px[probe] - x0[edge])
    crossing = np.where(y1[edge] > y0[edge], left > 0, -(left < 0).astype(np.int64))  # of the ray x' > x
    winding = np.bincount(probe, weights=crossing, minlength=len(probes)).astype(np.int64)
    covered = probes[winding != 1]
    if covered.size:
        raise MeshError(f"Mesh: {covered.size} elements overlap other elements (the mesh covers their centroids up "
                        f"to {int(winding.max())} times): elements {_listed(covered)}")


def electrode_arcs(count: int, width: float, offset: float = 0.0) -> list[tuple[float, float]]:
    """``count`` equally spaced electrodes on a closed boundary parametrised by ``t`` in ``[0, 1)``:
    electrode ``l`` covers ``t`` in ``[c_l - w/2, c_l + w/2]`` with centre ``c_l = offset + l / count`` and
    ``w = width / count`` (``width`` is the covered fraction of the boundary, in ``(0, 1)``)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ConfigError(f"EIT: the number of electrodes must be an integer >= 2, got {count!r}")
    if not 0 < width < 1:
        raise ConfigError(f"EIT: electrode width is the covered fraction of the boundary, in (0, 1); got {width}")
    half = 0.5 * width / count
    return [((offset + k / count - half) % 1.0, (offset + k / count + half) % 1.0) for k in range(count)]


def disc_mesh(h: float = 0.1, electrodes: int | Sequence[tuple[float, float]] = 16, width: float = 0.5,
              radius: float = 1.0, min_angle: float = 30.0, refinement: float = 0.1,
              cache: str | Path | None = None) -> Mesh:
    """A disc of ``radius`` centred at the origin with mesh size about ``h``.

    ``electrodes``: a count (equally spaced, covering the fraction ``width`` of the boundary, the
    first centred at angle 0) or explicit arcs ``(t0, t1)`` in turns (``t = angle / 2 pi``),
    counter-clockwise. Elements shrink to ``refinement * h`` at the electrode ends, where the CEM
    potential is least smooth (1 gives a uniform mesh). With ``cache`` (a folder) the mesh is stored
    there under a key of all settings and reused.
    """
    arcs = electrode_arcs(electrodes, width) if isinstance(electrodes, int) else [tuple(a) for a in electrodes]
    curve = lambda t: radius * np.stack([np.cos(2 * np.pi * t), np.sin(2 * np.pi * t)], axis=-1)  # noqa: E731
    settings = {"domain": "disc", "radius": radius}
    return _cached(cache, settings, h, arcs, min_angle, refinement,
                   lambda: _mesh_boundary(curve, 2 * np.pi * radius, [], arcs, h, min_angle, refinement))


def polygon_mesh(corners: Sequence[tuple[float, float]], electrodes: Sequence[tuple[float, float]], h: float = 0.1,
                 min_angle: float = 30.0, refinement: float = 0.1, cache: str | Path | None = None) -> Mesh:
    """A simple polygon (corners counter-clockwise) with electrodes ``(t0, t1)`` given as fractions of
    the perimeter measured from the first corner, counter-clockwise; the other settings as in
    ``disc_mesh``."""
    corners_arr = np.asarray(corners, dtype=np.float64)
    if corners_arr.ndim != 2 or corners_arr.shape[1] != 2 or len(corners_arr) < 3:
        raise ShapeError(f"polygon_mesh: corners must be (K >= 3, 2), got shape {corners_arr.shape}")
    closed = np.vstack([corners_arr, corners_arr[:1]])
    lengths = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    if (lengths <= 0).any():
        raise ConfigError("polygon_mesh: repeated corner")
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)]) / lengths.sum()

    def curve(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t) % 1.0
        side = np.clip(np.searchsorted(cumulative, t, side="right") - 1, 0, len(corners_arr) - 1)
        fraction = (t - cumulative[side]) / (cumulative[side + 1] - cumulative[side])
        return closed[side] + fraction[..., None] * (closed[side + 1] - closed[side])

    settings = {"domain": "polygon", "corners": corners_arr.tolist()}
    return _cached(cache, settings, h, [tuple(a) for a in electrodes], min_angle, refinement,
                   lambda: _mesh_boundary(curve, float(lengths.sum()), cumulative[:-1].tolist(),
                                          [tuple(a) for a in electrodes], h, min_angle, refinement))


def _cached(cache: str | Path | None, settings: dict, h: float, arcs: list, min_angle: float, refinement: float,
            make: Callable[[], Mesh]) -> Mesh:
    if not (isinstance(h, (int, float)) and math.isfinite(h) and h > 0):
        raise ConfigError(f"EIT mesh: h must be a positive number, got {h!r}")
    if not 0 < min_angle <= 33:
        raise ConfigError(f"EIT mesh: min_angle must lie in (0, 33] degrees (Triangle's guarantee), got {min_angle}")
    if not (isinstance(refinement, (int, float)) and 0 < refinement <= 1):
        raise ConfigError(f"EIT mesh: refinement (element size at electrode ends / h) must lie in (0, 1], "
                          f"got {refinement!r}")
    if cache is None:
        return make()
    key = content_hash({**settings, "h": h, "electrodes": arcs, "min_angle": min_angle, "refinement": refinement,
                        "grading": _GRADING})
    path = Path(cache) / f"mesh-{key}.npz"
    if path.exists():
        return Mesh.load(path)
    mesh = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.save(path)
    return mesh


def _check_arcs(arcs: Sequence[tuple[float, ...]]) -> list[tuple[float, float]]:
    if not arcs:
        raise ConfigError("EIT mesh: at least one electrode is needed")
    spans = []
    for k, arc in enumerate(arcs):
        if len(arc) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in arc):
            raise ConfigError(f"EIT mesh: electrode {k} must be a pair (t0, t1) of numbers, got {arc!r}")
        t0, t1 = float(arc[0]) % 1.0, float(arc[1]) % 1.0
        length = (t1 - t0) % 1.0
        if not 0 < length < 1:
            raise ConfigError(f"EIT mesh: electrode {k} has no length or covers the whole boundary: {arc!r}")
        spans.append((t0, length))
    ordered = sorted(spans)
    for (a0, al), (b0, _) in zip(ordered, ordered[1:] + [(ordered[0][0] + 1.0, 0.0)]):
        if a0 + al > b0 + 1e-12:
            raise ConfigError("EIT mesh: electrodes overlap")
    return spans


def _mesh_boundary(curve: Callable[[np.ndarray], np.ndarray], perimeter: float, corners: list[float],
                   arcs: Sequence[tuple[float, ...]], h: float, min_angle: float, refinement: float) -> Mesh:
    """Mesh the domain bounded by ``curve(t)``, ``t`` in [0, 1): boundary vertices at corners and
    electrode ends and in between at a spacing graded from ``refinement * h`` at the electrode ends
    up to ``h``; no extra vertices on the boundary (Triangle's ``Y``), so it stays on the curve."""
    triangle = require("triangle", "eit", _FEATURE)
    spans = _check_arcs(arcs)
    ends = np.array([t for t0, length in spans for t in (t0, (t0 + length) % 1.0)])
    fixed = np.unique(np.round(np.array([*corners, *ends]) % 1.0, 14))

    def spacing(t: float) -> float:
        """Boundary spacing (in t): ``refinement * h`` at electrode ends, growing by ``_GRADING`` per unit length."""
        distance = float(np.min(np.abs((t - ends + 0.5) % 1.0 - 0.5))) * perimeter
        return min(h, refinement * h + _GRADING * distance) / perimeter

    points = [fixed]
    for a, b in zip(fixed, np.append(fixed[1:], fixed[0] + 1.0)):
        marks = [a]
        while marks[-1] + 0.5 * spacing(marks[-1]) < b:
            marks.append(marks[-1] + spacing(marks[-1]))
        interior = a + (np.array(marks[1:]) - a) * (b - a) / max(marks[-1] - a, 1e-300) if len(marks) > 1 else []
        points.append(np.asarray(interior)[:-1] % 1.0 if len(marks) > 1 else np.array([]))
    t = np.unique(np.concatenate(points))
    vertices = curve(t)
    count = len(t)
    segments = np.stack([np.arange(count), (np.arange(count) + 1) % count], axis=1)
    middle = (t + np.diff(np.append(t, t[0] + 1.0)) / 2) % 1.0
    electrode = np.full(count, -1)
    for index, (t0, length) in enumerate(spans):
        electrode[((middle - t0) % 1.0) < length] = index
    area = math.sqrt(3) / 4 * h * h
    out = triangle.triangulate({"vertices": vertices, "segments": segments, "segment_markers": electrode + 2},
                               f"pq{min_angle:g}Ya{area:.12f}Q")
    edges = out["segments"]
    markers = out["segment_markers"].reshape(-1) - 2
    return Mesh.from_arrays(out["vertices"], out["triangles"], edges, markers)
