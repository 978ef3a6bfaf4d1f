"""The mesh-free EIT method: its harmonic basis, its background solution against the FEM, an
inclusion located from electrode data, and its input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("triangle")

from invprior.core.noise import GaussianNoise  # noqa: E402
from invprior.eit import EIT, polygon_mesh  # noqa: E402
from invprior.eit.mesh_free import MeshFreeEIT, harmonic_conjugate, harmonic_features  # noqa: E402
from invprior.eit.phantoms import inclusion_problem  # noqa: E402
from invprior.errors import ConfigError  # noqa: E402


def test_harmonic_features_are_harmonic_and_their_gradients_match_finite_differences():
    xi = 0.9 * torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) - 0.45
    features, grad = harmonic_features(xi, 12)
    assert features.shape == (50, 25) and grad.shape == (50, 25, 2)
    h = 1e-5   # central differences: truncation error below 1e-9 for these degrees and radii
    for axis in range(2):
        step = torch.zeros(2, dtype=torch.float64)
        step[axis] = h
        plus, minus = harmonic_features(xi + step, 12)[0], harmonic_features(xi - step, 12)[0]
        assert torch.allclose((plus - minus) / (2 * h), grad[..., axis], rtol=1e-6, atol=1e-8)
    # Laplacian by the five-point stencil: zero up to O(h^2)
    h = 1e-3
    shifted = [harmonic_features(xi + torch.tensor(d, dtype=torch.float64), 12)[0]
               for d in ((h, 0), (-h, 0), (0, h), (0, -h))]
    laplacian = (sum(shifted) - 4 * features) / h ** 2
    assert laplacian.abs().max() < 1e-3


def test_harmonic_conjugate_satisfies_cauchy_riemann():
    """``rot psi0 = grad u0`` for the conjugate: the current of the background is its potential's gradient."""
    xi = 0.9 * torch.rand(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) - 0.45
    coefficients = torch.randn(2 * 9 + 1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, grad = harmonic_features(xi, 9)
    grad_u = torch.einsum("nkd,kp->npd", grad, coefficients)
    grad_psi = torch.einsum("nkd,kp->npd", grad, harmonic_conjugate(coefficients))
    assert torch.allclose(grad_psi[..., 1], grad_u[..., 0], atol=1e-12)
    assert torch.allclose(-grad_psi[..., 0], grad_u[..., 1], atol=1e-12)
    assert grad_u.abs().max() > 1.0


def test_background_solution_matches_the_fem_voltages():
    """The fixed harmonic part alone (iterations=1 records the misfit before any step) reproduces the
    FEM's misfit of the homogeneous disc to a few per cent: the two forward models agree."""
    op = EIT(size=16, h=0.1, electrodes=16, parametrization="exp")
    problem = inclusion_problem(op, [(0.4, 0.2, 0.3, 3.0)], noise=GaussianNoise(relative=0.01), seed=1)
    fem = op.model.voltages(np.ones(len(op.mesh.elements)), op.contact_impedance.numpy()) * op.model.mask
    y = problem.y[0].double().numpy() * op.model.mask
    result = MeshFreeEIT(iterations=1, interior=64).reconstruct(problem, progress=False)
    assert result.trace["data_misfit"][0] == pytest.approx(np.linalg.norm(fem - y) / np.linalg.norm(y), rel=0.05)
    # the networks start at zero: the current is sigma grad v exactly, so the Kohn-Vogelius energy vanishes
    assert result.trace["energy"][0] < 1e-20


def test_bad_settings_and_problems_are_refused():
    with pytest.raises(ConfigError, match="unknown loss weights"):
        MeshFreeEIT(weights={"pde": 1.0})
    with pytest.raises(ConfigError, match="degree"):
        MeshFreeEIT(degree=0)
    point = EIT(size=8, h=0.3, electrodes=8, electrode_model="point", parametrization="exp")
    problem = inclusion_problem(point, [(0.3, 0.2, 0.3, 2.0)], seed=0)
    with pytest.raises(ConfigError, match="complete electrode model"):
        MeshFreeEIT(iterations=1).reconstruct(problem, progress=False)
    strip = polygon_mesh([(0, 0), (3, 0), (3, 1), (0, 1)], electrodes=[(3 / 8, 4 / 8), (7 / 8, 1.0)], h=0.2)
    with pytest.raises(ConfigError, match="disc"):
        MeshFreeEIT._arcs(EIT(size=8, mesh=strip, parametrization="exp", exclude_driven=False))


@pytest.mark.parametrize("inclusion", [(0.4, 0.2, 0.3, 3.0), (-0.3, -0.35, 0.3, 0.3)], ids=["conductive", "resistive"])
def test_inclusion_is_located_with_the_right_sign(inclusion):
    """400 steps with small networks: the largest change of log sigma lies within the inclusion's radius
    and has its sign, the image correlates with the truth, and the data misfit falls well below the
    background's."""
    op = EIT(size=16, h=0.1, electrodes=16, parametrization="exp")
    problem = inclusion_problem(op, [inclusion], noise=GaussianNoise(relative=0.01), seed=1)
    result = MeshFreeEIT(iterations=400, tau=0.0, interior=256, width=32, degree=64).reconstruct(
        problem, progress=False)
    image = result.image[0, 0].double()
    index = int(image.abs().argmax())
    i, j = divmod(index, op.size)
    xs, ys = op.to_mesh.pixel_centres()
    x0, y0, radius, contrast = inclusion
    assert math.hypot(xs[i] - x0, ys[j] - y0) < radius
    assert math.copysign(1.0, float(image.flatten()[index])) == math.copysign(1.0, math.log(contrast))
    truth = problem.x_true[0, 0].double()
    assert float(torch.corrcoef(torch.stack([image.flatten(), truth.flatten()]))[0, 1]) > 0.4
    assert result.trace["data_misfit"][-1] < 0.2 * result.trace["data_misfit"][0]
    # every logged quantity is logged at every logged step, the final state included (for the report figures)
    assert result.trace["iteration"][-1] == 400
    assert {len(v) for v in result.trace.values()} == {len(result.trace["iteration"])}
