"""Mesh checks on small hand-built meshes: a unit square split into two or four triangles, each spoiled in one way
(duplicated, flipped, overlapping, degenerate or poor elements, isolated nodes, bad electrode edges); every refusal
is one line naming the offending indices and their count."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from invprior.eit.mesh import Mesh
from invprior.errors import ConfigError, MeshError, ShapeError

SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
TWO = np.array([[0, 1, 2], [0, 2, 3]])                        # split along the diagonal (0, 2)
FOUR = np.array([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])  # fan around the centre node 4
SIDES = np.array([[0, 1], [1, 2], [2, 3], [3, 0]])
ELECTRODES = np.array([0, -1, 1, -1])                          # electrodes on the bottom and top sides


def _refused(error: type[Exception], nodes, elements, boundary=SIDES, edge_electrode=ELECTRODES) -> str:
    with pytest.raises(error) as caught:
        Mesh.from_arrays(nodes, elements, boundary, edge_electrode)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("Mesh: ")
    return message


def _with_centre(centre: tuple[float, float]) -> np.ndarray:
    return np.vstack([SQUARE, centre])


def _sliver(angle: float) -> Mesh:
    """The square with a triangle (3, 2, 4) on its top side whose base angles are ``angle`` radians."""
    nodes = np.vstack([SQUARE, [0.5, 1.0 + 0.5 * math.tan(angle)]])
    return Mesh.from_arrays(nodes, np.vstack([TWO, [3, 2, 4]]), [[0, 1], [1, 2], [2, 4], [4, 3], [3, 0]],
                            [0, -1, 1, -1, -1])


def test_valid_meshes_pass_without_warnings_and_are_oriented_counter_clockwise():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = Mesh.from_arrays(SQUARE, TWO, SIDES, ELECTRODES)
        four = Mesh.from_arrays(_with_centre((0.5, 0.5)), FOUR, SIDES, ELECTRODES)
        clockwise = Mesh(SQUARE, TWO[:, ::-1], SIDES, ELECTRODES)  # every triangle listed clockwise
    assert np.allclose(two.areas, 0.5) and np.allclose(four.areas, 0.25)
    assert np.allclose(clockwise.areas, 0.5)                   # reoriented, not refused
    assert two.min_angle() == pytest.approx(45.0, abs=1e-12) and four.min_angle() == pytest.approx(45.0, abs=1e-12)
    assert isinstance(MeshError("x"), ConfigError) and isinstance(MeshError("x"), ValueError)


def test_duplicated_elements_are_refused_in_any_node_order():
    message = _refused(MeshError, SQUARE, np.vstack([TWO, [2, 1, 0]]))
    assert message.endswith("1 duplicated elements (the same three nodes in any order): element 2 repeats 0")
    assert _refused(MeshError, SQUARE, np.vstack([TWO, TWO[1]])).endswith("element 2 repeats 1")
    message = _refused(MeshError, _with_centre((0.5, 0.5)), np.vstack([FOUR, [4, 1, 0], [4, 3, 2]]))
    assert message.endswith("2 duplicated elements (the same three nodes in any order): element 4 repeats 0, "
                            "element 5 repeats 2")
    with pytest.raises(MeshError, match=r"element 1 repeats 0"):  # the constructor checks too
        Mesh(SQUARE[:3], np.array([[0, 1, 2], [1, 2, 0]]), SIDES[:2], ELECTRODES[:2])


def test_a_triangle_flipped_over_its_neighbour_is_refused():
    """Node 3 pulled across the diagonal: triangle (0, 2, 3) folds onto (0, 1, 2)."""
    nodes = SQUARE.copy()
    nodes[3] = (0.8, 0.2)
    message = _refused(MeshError, nodes, TWO)
    assert message.startswith("Mesh: 1 folded edges") and message.endswith("edge (0, 2) in elements [0, 1]")
    # the centre node pushed below the square: the bottom triangle turns over both its inner edges
    message = _refused(MeshError, _with_centre((0.5, -0.3)), FOUR)
    assert message.startswith("Mesh: 2 folded edges")
    assert message.endswith("edge (0, 4) in elements [0, 3]; edge (1, 4) in elements [0, 1]")


def test_overlapping_elements_are_refused():
    crowded = np.vstack([SQUARE, [0.5, -0.5], [0.5, 0.25]])   # three triangles on the bottom side
    message = _refused(MeshError, crowded, np.vstack([TWO, [0, 1, 4], [0, 1, 5]]))
    assert message.endswith("1 edges are shared by more than two elements (overlapping elements): edge (0, 1) in "
                            "elements [0, 2, 3]")
    stray = np.vstack([SQUARE, [0.1, 0.5], [0.3, 0.5], [0.1, 0.7]])  # a loose triangle inside element 1
    message = _refused(MeshError, stray, np.vstack([TWO, [4, 5, 6]]))
    assert message.endswith("1 elements overlap other elements (the mesh covers their centroids up to 2 times): "
                            "elements 2")
    copy = np.vstack([SQUARE, SQUARE[:3]])                   # element 0 again, on copies of its nodes
    assert _refused(MeshError, copy, np.vstack([TWO, [4, 5, 6]])).endswith("up to 2 times): elements 0, 2")


def test_isolated_nodes_are_refused_by_index():
    message = _refused(MeshError, np.vstack([SQUARE, [2.0, 2.0]]), TWO)
    assert message == "Mesh: 1 of 5 nodes belong to no element (isolated): nodes 4"
    many = np.vstack([SQUARE, np.full((7, 2), 2.0)])
    assert _refused(MeshError, many, TWO).endswith("7 of 11 nodes belong to no element (isolated): nodes 4, 5, 6, 7, "
                                                   "8, ...")


def test_degenerate_triangles_are_refused():
    collinear = _refused(MeshError, _with_centre((0.5, 0.0)), np.vstack([TWO, [0, 4, 1]]))
    assert collinear.startswith("Mesh: 1 degenerate elements (an angle below 1e-06 rad")
    assert collinear.endswith("elements 2 (element 2 has nodes [0, 4, 1])")
    coincident = _refused(MeshError, np.vstack([SQUARE, SQUARE[1]]), np.vstack([TWO, [0, 4, 1]]))
    assert "1 degenerate elements" in coincident and coincident.endswith("elements 2 (element 2 has nodes [0, 4, 1])")
    with pytest.raises(MeshError, match=r"1 degenerate elements .*elements 2 "):
        _sliver(1e-7)  # base angles 1e-7 rad: below the 1e-6 rad bound


def test_a_sliver_is_used_with_a_warning_naming_its_angle():
    with pytest.warns(RuntimeWarning) as caught:
        mesh = _sliver(math.radians(2.0))
    assert len(caught) == 1
    assert re.match(r"Mesh: smallest angle 2 degrees \(element 2\); 1 of 3 elements have an angle below 5 degrees",
                    str(caught[0].message))
    assert mesh.min_angle() == pytest.approx(2.0, rel=1e-12)
    with pytest.warns(RuntimeWarning, match=r"smallest angle 0.000573 degrees \(element 2\); 1 of 3"):
        _sliver(1e-5)  # a poor but not degenerate triangle: 1e-5 rad = 0.000573 degrees
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _sliver(math.radians(6.0)).min_angle() == pytest.approx(6.0, rel=1e-12)


def test_electrode_edges_must_exist_on_the_mesh_boundary():
    message = _refused(ShapeError, SQUARE, TWO, [[0, 1], [1, 9], [2, 3], [3, -1]])
    assert message == "Mesh: 2 rows of boundary refer to nodes outside 0..3 (no such node): rows 1, 3 (row 1 = [1, 9])"
    message = _refused(ShapeError, SQUARE, np.array([[0, 1, 2], [0, 2, 7]]))
    assert message.endswith("1 rows of elements refer to nodes outside 0..3 (no such node): rows 1 (row 1 = [0, 2, 7])")
    diagonal = _refused(MeshError, SQUARE, TWO, np.vstack([SIDES, [0, 2]]), [0, -1, 1, -1, 1])
    assert diagonal.endswith("1 boundary edges are not on the mesh's boundary (an edge of exactly one element): rows "
                             "4 (row 4 = [0, 2])")
    fan = _refused(MeshError, _with_centre((0.5, 0.5)), FOUR, np.vstack([SIDES, [0, 2]]), [0, -1, 1, -1, 1])
    assert fan.endswith("rows 4 (row 4 = [0, 2])")           # (0, 2) is no edge at all there
    twice = _refused(MeshError, SQUARE, TWO, np.vstack([SIDES, [1, 0]]), [0, -1, 1, -1, 0])
    assert twice.endswith("1 boundary edges are listed twice: rows 4 (row 4 = [1, 0])")


def test_non_finite_coordinates_are_refused_by_node():
    nodes = SQUARE.copy()
    nodes[2, 1], nodes[3, 0] = np.nan, np.inf
    assert _refused(MeshError, nodes, TWO) == "Mesh: 2 of 4 nodes have non-finite coordinates: nodes 2, 3"


def test_meshes_read_from_files_are_checked(tmp_path):
    path = tmp_path / "mesh.npz"
    np.savez(path, nodes=SQUARE, elements=np.vstack([TWO, [1, 2, 0]]), boundary=SIDES, edge_electrode=ELECTRODES)
    with pytest.raises(MeshError, match=r"^Mesh: 1 duplicated elements .*: element 2 repeats 0$"):
        Mesh.load(path)


def test_generated_meshes_pass_without_warnings():
    pytest.importorskip("triangle")
    from invprior.eit.mesh import disc_mesh, polygon_mesh

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        disc = disc_mesh(h=0.3, electrodes=8)
        strip = polygon_mesh([(0, 0), (3, 0), (3, 1), (0, 1)], electrodes=[(3 / 8, 4 / 8), (7 / 8, 1.0)], h=0.3)
    assert disc.min_angle() >= 30.0 - 1e-9 and strip.min_angle() >= 30.0 - 1e-9  # Triangle's quality bound
    rim = disc.nodes[np.unique(disc.boundary)]
    x, y = rim[np.argsort(np.arctan2(rim[:, 1], rim[:, 0]))].T
    polygon = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)   # the boundary polygon's area (shoelace)
    assert disc.areas.sum() == pytest.approx(polygon, rel=1e-12) and strip.areas.sum() == pytest.approx(3.0, rel=1e-12)
