"""EIT: meshes, P1 FEM and the complete electrode model against analytic solutions, reciprocity,
adjoint derivatives against finite differences, the ``eit`` operator and its input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

pytest.importorskip("triangle")

from invprior import registry  # noqa: E402
from invprior.core.noise import GaussianNoise  # noqa: E402
from invprior.eit import EIT, EITModel, Mesh, disc_mesh, eit_voltages, polygon_mesh  # noqa: E402
from invprior.eit.fem import Stiffness, boundary_load  # noqa: E402
from invprior.eit.gauss_newton import GaussNewton, OneStepGN  # noqa: E402
from invprior.eit.phantoms import inclusion_problem  # noqa: E402
from invprior.errors import ConfigError, ShapeError  # noqa: E402
from invprior.methods.dip import DIP  # noqa: E402


@pytest.fixture(scope="module")
def disc():
    return disc_mesh(h=0.25, electrodes=8)


def _random_conductivity(mesh: Mesh, seed: int = 0) -> np.ndarray:
    return 1.0 + 0.5 * np.random.default_rng(seed).random(len(mesh.elements))


# ---------------------------------------------------------------- meshes
def test_disc_meshes_are_good_and_electrodes_have_the_requested_length():
    for h in (0.2, 0.1):
        mesh = disc_mesh(h=h, electrodes=16, width=0.5)
        quality = mesh.quality()
        assert quality["min_angle"] >= 30.0 - 1e-9
        assert quality["h"] < 1.5 * h
        assert mesh.num_electrodes == 16
        arc = 2 * math.pi * 0.5 / 16  # each electrode covers 1/32 of the circle
        lengths = mesh.electrode_lengths()
        assert np.allclose(lengths, lengths[0])
        assert lengths[0] == pytest.approx(arc, rel=h * h)  # chords of the arc
        assert np.allclose(np.linalg.norm(mesh.nodes[np.unique(mesh.boundary)], axis=1), 1.0)


def test_mesh_cache_and_file_round_trip(tmp_path):
    first = disc_mesh(h=0.3, electrodes=8, cache=tmp_path)
    files = list(tmp_path.glob("mesh-*.npz"))
    assert len(files) == 1
    again = disc_mesh(h=0.3, electrodes=8, cache=tmp_path)
    for name in ("nodes", "elements", "boundary", "edge_electrode"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    disc_mesh(h=0.3, electrodes=6, cache=tmp_path)
    assert len(list(tmp_path.glob("mesh-*.npz"))) == 2  # other settings, other file


def test_degenerate_or_inconsistent_meshes_are_refused(disc):
    nodes = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    boundary = np.array([[0, 1], [1, 2]])
    with pytest.raises(ConfigError, match="degenerate"):
        Mesh.from_arrays(nodes, np.array([[0, 1, 2], [0, 1, 3]]), boundary, np.array([0, 1]))
    with pytest.raises(ShapeError, match="outside"):
        Mesh.from_arrays(nodes, np.array([[0, 1, 7]]), boundary, np.array([0, 1]))
    with pytest.raises(ConfigError, match="numbered"):
        Mesh.from_arrays(nodes, np.array([[0, 1, 3]]), boundary, np.array([0, 2]))
    clockwise = Mesh.from_arrays(nodes[[0, 1, 3]], np.array([[0, 2, 1]]), np.array([[0, 1], [1, 2], [2, 0]]),
                                 np.array([0, 1, -1]))
    assert clockwise.areas[0] > 0  # reoriented
    with pytest.raises(ConfigError, match="overlap"):
        disc_mesh(h=0.2, electrodes=[(0.0, 0.2), (0.1, 0.3)])


# ---------------------------------------------------------------- FEM against analytic solutions
@pytest.mark.parametrize("k", [2, 3])
def test_neumann_disc_converges_at_second_order(k):
    """sigma du/dn = cos(k theta) on the unit circle: u = r^k cos(k theta) / (k sigma); the L2 error
    over three refinements falls like h^2."""
    sigma = 2.0
    errors, sizes = [], []
    for h in (0.2, 0.1, 0.05):
        mesh = disc_mesh(h=h, electrodes=4)
        k_matrix = Stiffness(mesh).matrix(np.full(len(mesh.elements), sigma))
        load = boundary_load(mesh, lambda p: np.cos(k * np.arctan2(p[:, 1], p[:, 0])))
        weights = np.bincount(mesh.elements.ravel(), np.repeat(mesh.areas / 3, 3), minlength=len(mesh.nodes))
        system = sp.bmat([[k_matrix, sp.csr_matrix(weights[:, None])], [sp.csr_matrix(weights[None]), None]])
        u = spla.spsolve(system.tocsc(), np.append(load, 0.0))[:-1]
        exact = lambda p: (  # noqa: E731
            np.hypot(p[..., 0], p[..., 1]) ** k * np.cos(k * np.arctan2(p[..., 1], p[..., 0])) / (k * sigma))
        corners = mesh.nodes[mesh.elements]                                  # (E, 3, 2)
        midpoints = (corners + np.roll(corners, -1, axis=1)) / 2             # exact for quadratics
        uh = (u[mesh.elements] + np.roll(u[mesh.elements], -1, axis=1)) / 2
        diff = uh - exact(midpoints)
        mean = (diff.mean(axis=1) * mesh.areas).sum() / mesh.areas.sum()
        errors.append(math.sqrt(((diff - mean) ** 2).mean(axis=1) @ mesh.areas))
        sizes.append(mesh.h)
    orders = [math.log(errors[i] / errors[i + 1]) / math.log(sizes[i] / sizes[i + 1]) for i in range(2)]
    assert min(orders) > 1.8, (errors, orders)
    assert errors[-1] < 2e-3


@pytest.mark.parametrize("sigma,z", [(2.0, 0.05), (0.5, 0.3)])
def test_cem_strip_resistance_is_exact(sigma, z):
    """A 3 x 1 strip with electrodes covering its short sides: R = L / (W sigma) + 2 z / W."""
    strip = polygon_mesh([(0, 0), (3, 0), (3, 1), (0, 1)], electrodes=[(3 / 8, 4 / 8), (7 / 8, 1.0)], h=0.2)
    model = EITModel(strip, currents=[(0, 1)], measurements=[(0, 1)], exclude_driven=False)
    resistance = float(model.voltages(np.full(len(strip.elements), sigma), z)[0, 0])
    assert resistance == pytest.approx(3.0 / sigma + 2.0 * z, rel=1e-10)


def test_cem_scales_with_conductivity_and_contact_impedance(disc):
    """V(c sigma, z / c) = V(sigma, z) / c (rescaling the PDE and the contact condition together)."""
    model = EITModel(disc)
    sigma, z = _random_conductivity(disc), np.full(8, 0.02)
    assert np.allclose(model.voltages(3 * sigma, z / 3), model.voltages(sigma, z) / 3, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("electrode_model", ["cem", "point"])
def test_reciprocity(disc, electrode_model):
    model = EITModel(disc, electrode_model=electrode_model)
    transfer = model.transfer_matrix(_random_conductivity(disc), np.linspace(0.01, 0.05, 8))
    assert np.abs(transfer - transfer.T).max() <= 1e-10 * np.abs(transfer).max()
    assert np.linalg.eigvalsh(transfer).min() > 0  # a positive definite transfer impedance


def test_currents_and_voltages_respect_the_protocol(disc):
    model = EITModel(disc, currents="opposite", measurements="potentials", exclude_driven=False)
    assert model.currents.shape == (8, 8) and np.allclose(model.currents.sum(axis=0), 0)
    assert model.currents[0, 0] == 1 and model.currents[4, 0] == -1
    potentials = model.voltages(np.ones(len(disc.elements)), 0.01)
    assert np.allclose(potentials.sum(axis=1), 0.0, atol=1e-12)        # grounding sum_l U_l = 0
    assert potentials[0, 0] > 0 > potentials[0, 4]                      # the source is the high side
    adjacent = EITModel(disc, currents="opposite", exclude_driven=False).voltages(np.ones(len(disc.elements)), 0.01)
    assert np.allclose(adjacent[:, 0], potentials[:, 0] - potentials[:, 1])
    kept = EITModel(disc_mesh(h=0.3, electrodes=16)).mask
    assert kept.sum() == 208  # 16 adjacent patterns x 13 measurements away from the driven pair
    assert kept[0, 0] == 0 and kept[0, 1] == 0 and kept[0, 15] == 0 and kept[0, 2] == 1


def test_refinement_at_electrode_ends_speeds_up_convergence():
    """The CEM potential is least smooth at the electrode ends: grading the mesh there (refinement
    0.1) brings the driven electrode's voltage much closer to a fine reference than a uniform mesh."""
    def driven_voltage(**mesh_options):
        mesh = disc_mesh(electrodes=16, **mesh_options)
        model = EITModel(mesh, exclude_driven=False)
        return float(model.voltages(np.ones(len(mesh.elements)), 0.01)[0, 0])
    reference = driven_voltage(h=0.025, refinement=0.1)
    uniform, graded = driven_voltage(h=0.1, refinement=1.0), driven_voltage(h=0.1, refinement=0.1)
    assert abs(graded - reference) < 0.4 * abs(uniform - reference)


# ---------------------------------------------------------------- derivatives
def test_adjoint_gradients_match_central_differences(disc):
    model = EITModel(disc)
    rng = np.random.default_rng(1)
    sigma, z = _random_conductivity(disc), 0.01 + 0.02 * rng.random(8)
    weights = rng.standard_normal((model.num_patterns, model.num_measurements))
    d_sigma, d_z = model.gradient(sigma, z, weights, contact=True)
    for gradient, direction, step, shift in ((d_sigma, rng.standard_normal(sigma.size), 1e-6, "sigma"),
                                             (d_z, rng.standard_normal(8), 1e-8, "z")):
        def loss(t):
            s, c = (sigma + t * direction, z) if shift == "sigma" else (sigma, z + t * direction)
            return float((model.voltages(s, c) * weights).sum())
        central = (loss(step) - loss(-step)) / (2 * step)
        assert gradient @ direction == pytest.approx(central, rel=1e-5)


def test_torch_function_passes_gradcheck_and_jvp_vjp_duality():
    mesh = disc_mesh(h=0.35, electrodes=6)
    model = EITModel(mesh)
    gen = torch.Generator().manual_seed(0)
    sigma = (1 + torch.rand(len(mesh.elements), generator=gen, dtype=torch.float64)).requires_grad_()
    z = torch.full((6,), 0.03, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, c: eit_voltages(model, s, c), (sigma, z), eps=1e-6, atol=1e-8, rtol=1e-5)
    s, c = sigma.detach(), z.detach()
    v = torch.randn(s.shape, generator=gen, dtype=torch.float64)
    _, forward = torch.func.jvp(lambda t: eit_voltages(model, t, c), (s,), (v,))
    out, pullback = torch.func.vjp(lambda t: eit_voltages(model, t, c), s)
    u = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    assert float((forward * u).sum()) == pytest.approx(float((pullback(u)[0] * v).sum()), rel=1e-10)
    direct = model.jvp(s.numpy(), c.numpy(), v.numpy())
    assert np.allclose(forward.numpy(), direct, rtol=1e-10, atol=1e-14)
    assert np.allclose(model.jacobian(s.numpy(), c.numpy()) @ v.numpy(), direct.ravel(), rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- the operator
def test_eit_operator_maps_images_to_voltages():
    op = registry.get("operators", "eit", size=24, h=0.25, electrodes=8, parametrization="exp", background=2.0)
    assert op.domain_shape == (1, 24, 24) and op.range_shape == (8, 8)
    x = torch.zeros(2, 1, 24, 24, dtype=torch.float64)
    y = op(x)
    homogeneous = op.model.voltages(np.full(len(op.mesh.elements), 2.0), 0.01)
    assert y.shape == (2, 8, 8) and np.allclose(y[1].numpy(), homogeneous)
    # bilinear sampling agrees with torch's grid_sample and is exact for a linear image
    centred = (op.mesh.centroids - op.to_mesh.centre) / op.to_mesh.half
    grid = torch.from_numpy(np.stack([centred[:, 1], centred[:, 0]], axis=-1)).view(1, 1, -1, 2)
    image = torch.randn(1, 1, 24, 24, dtype=torch.float64)
    sampled = torch.nn.functional.grid_sample(image, grid, padding_mode="border", align_corners=False)[0, 0, 0]
    assert torch.allclose(op.to_mesh(image)[0, 0], sampled, atol=1e-12)
    assert np.allclose(op.to_mesh.matrix() @ image.numpy().ravel(), sampled.numpy(), atol=1e-12)
    xs, ys = op.to_mesh.pixel_centres()
    linear = torch.from_numpy(0.3 * xs[:, None] - 0.2 * ys[None, :] + 1.0).view(1, 1, 24, 24)
    values = op.to_mesh(linear)[0, 0].numpy()
    centroids = op.mesh.centroids
    inside = np.abs(centroids).max(axis=1) < 1 - 1 / 24
    assert np.allclose(values[inside], (0.3 * centroids[:, 0] - 0.2 * centroids[:, 1] + 1.0)[inside], atol=1e-12)
    # differentiable end to end: the image gradient matches a central difference
    image = (0.1 * torch.randn(1, 1, 24, 24, dtype=torch.float64)).requires_grad_()
    (op(image) ** 2).sum().backward()
    direction = torch.randn(1, 1, 24, 24, dtype=torch.float64)
    step = 1e-6
    central = float(((op(image.detach() + step * direction) ** 2).sum()
                     - (op(image.detach() - step * direction) ** 2).sum()) / (2 * step))
    assert float((image.grad * direction).sum()) == pytest.approx(central, rel=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"contact_impedance": 0.0}, "contact impedances must be positive"),
    ({"contact_impedance": -1.0}, "contact impedances must be positive"),
    ({"currents": [(0, 9)]}, "electrode 9"),
    ({"measurements": [(3, 3)]}, "twice"),
    ({"currents": "diagonal"}, "unknown protocol"),
    ({"currents": np.ones((8, 2))}, "does not sum to zero"),
    ({"measurements": np.ones((4, 5))}, "shape"),
    ({"electrode_model": "gap"}, "electrode_model"),
    ({"parametrization": "log"}, "parametrization"),
    ({"contact_impedance": [0.01, 0.02]}, "one contact impedance or one per electrode"),
    ({"size": 1}, "at least 2"),
])
def test_bad_eit_settings_are_refused(kwargs, match):
    with pytest.raises((ConfigError, ShapeError), match=match):
        EIT(**{"size": 16, "h": 0.3, "electrodes": 8, **kwargs})


def test_non_positive_or_non_finite_conductivity_is_refused(disc):
    model = EITModel(disc)
    sigma = np.ones(len(disc.elements))
    sigma[5] = -0.1
    with pytest.raises(ConfigError, match="positive.*element 5"):
        model.voltages(sigma)
    sigma[5] = np.nan
    with pytest.raises(Exception, match="non-finite"):
        model.voltages(sigma)
    with pytest.raises(ShapeError, match="one conductivity per element"):
        model.voltages(np.ones(3))
    op = EIT(size=16, mesh=disc)
    with pytest.raises(ConfigError, match="positive"):
        op(-torch.ones(1, 1, 16, 16, dtype=torch.float64))


def test_pixel_jacobian_matches_forward_mode_and_finite_differences():
    op = EIT(size=16, h=0.3, electrodes=8, parametrization="softplus", background=0.7)
    gen = torch.Generator().manual_seed(3)
    x = 0.3 * torch.randn(1, 1, 16, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 1, 16, 16, generator=gen, dtype=torch.float64)
    jac = op.jacobian(x)
    assert jac.shape == (8 * 8, 16 * 16)
    _, forward = torch.func.jvp(op.forward, (x,), (v,))                    # forward mode end to end
    assert torch.allclose(jac @ v.ravel(), forward.ravel(), rtol=1e-10, atol=1e-13)
    step = 1e-6
    central = (op(x + step * v) - op(x - step * v)) / (2 * step)
    assert torch.allclose(jac @ v.ravel(), central.ravel(), rtol=1e-5, atol=1e-9)
    tangent = op.linearized(x)                                                # what lin-DIP uses
    u = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64)
    assert float((tangent(v) * u).sum()) == pytest.approx(float((tangent.adjoint(u) * v).sum()), rel=1e-10)


INCLUSIONS = [(0.4, 0.2, 0.25, 3.0), (-0.3, -0.4, 0.3, 0.3)]  # a conductive and a resistive one


@pytest.fixture(scope="module")
def eit_problems():
    """1 % noise, data from a mesh twice as fine as the reconstruction's (no inverse crime)."""
    op = EIT(size=32, h=0.1, electrodes=16, parametrization="exp")
    return op, [inclusion_problem(op, [inc], noise=GaussianNoise(relative=0.01), seed=1) for inc in INCLUSIONS]


def _located(image: torch.Tensor, op: EIT, inclusion) -> tuple[float, float]:
    """(distance of the largest change from the inclusion's centre, its value)."""
    values = image[0, 0].double().numpy()
    i, j = np.unravel_index(np.argmax(np.abs(values)), values.shape)
    xs, ys = op.to_mesh.pixel_centres()
    return float(np.hypot(xs[i] - inclusion[0], ys[j] - inclusion[1])), float(values[i, j])


@pytest.mark.parametrize("method", [OneStepGN(), GaussNewton(iterations=6), GaussNewton(weight=1e-2, prior="tv")],
                         ids=["one-step", "gauss-newton", "gauss-newton-tv"])
def test_gauss_newton_locates_an_inclusion_with_the_right_sign(eit_problems, method):
    op, problems = eit_problems
    for inclusion, problem in zip(INCLUSIONS, problems):
        result = method.reconstruct(problem, progress=False)
        distance, value = _located(result.image, op, inclusion)
        assert distance < inclusion[2], (method.name, distance)
        assert np.sign(value) == np.sign(math.log(inclusion[3]))
        if method.iterations > 1:  # iterated to the noise level: residual near ||eta||, below the one-step one
            assert result.trace["residual"][-1] < 1.0 * float(problem.noise_norm[0])
            assert result.trace["residual"][-1] < result.trace["residual"][0]


def test_dip_on_the_eit_operator_locates_an_inclusion(eit_problems):
    """The generic DIP (U-Net, Adam, log-conductivity output) runs on the nonlinear EIT operator."""
    op, problems = eit_problems
    for inclusion, problem in zip(INCLUSIONS, problems):
        dip = DIP(generator_params={"preset": "small", "channels": 16}, weight=0.0, lr=1e-2, stopping="fixed",
                  stopping_params={"iterations": 300}, max_iterations=300, log_every=50)
        result = dip.reconstruct(problem.to(dtype=torch.float64), progress=False)
        distance, value = _located(result.image, op, inclusion)
        assert distance < inclusion[2]
        assert np.sign(value) == np.sign(math.log(inclusion[3]))
        assert result.trace["residual"][-1] < 1.5 * float(problem.noise_norm[0])



def test_pseudo_inverse_is_the_one_step_reconstruction_and_solves_its_normal_equations(eit_problems):
    op, problems = eit_problems
    problem = problems[0]
    image = op.pseudo_inverse(problem.y.double())
    assert image.shape == (1, *op.domain_shape) and op.has_pseudo_inverse
    assert torch.allclose(image, OneStepGN(weight=op.pseudo_inverse_weight).reconstruct(problem, progress=False).image
                          .double(), rtol=1e-6, atol=1e-9)
    # (J^T J + lam D^T D) x = J^T (y - A(0)), with lam = weight tr(J^T J) / tr(D^T D), D the forward differences
    x0 = torch.zeros(1, *op.domain_shape, dtype=torch.float64)
    jac = op.jacobian(x0).numpy()
    n = op.size
    grid = np.arange(n * n).reshape(n, n)
    rows = [(a, b) for a, b in zip(grid[:-1].ravel(), grid[1:].ravel())] + \
           [(a, b) for a, b in zip(grid[:, :-1].ravel(), grid[:, 1:].ravel())]
    diff = np.zeros((len(rows), n * n))
    for k, (a, b) in enumerate(rows):
        diff[k, a], diff[k, b] = -1.0, 1.0
    lam = op.pseudo_inverse_weight * (jac ** 2).sum() / (diff ** 2).sum()
    lhs = (jac.T @ jac + lam * diff.T @ diff) @ image.ravel().numpy()
    rhs = jac.T @ (problem.y.double() - op(x0)).ravel().numpy()
    assert np.linalg.norm(lhs - rhs) <= 1e-8 * np.linalg.norm(rhs)
    # a batch is inverted image by image, and data at the background give the background
    both = op.pseudo_inverse(torch.cat([problem.y.double(), op(x0)]))
    assert torch.allclose(both[0], image[0]) and both[1].abs().max() < 1e-10

def test_gauss_newton_needs_a_jacobian():
    from invprior.core.problem import InverseProblem
    from invprior.operators.denoising import Denoising
    problem = InverseProblem(Denoising(8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="jacobian"):
        GaussNewton().reconstruct(problem, progress=False)
    with pytest.raises(ConfigError, match="prior"):
        GaussNewton(prior="l1")
    with pytest.raises(ConfigError, match="TV needs 'gauss_newton'"):
        OneStepGN(prior="tv")


def test_inclusions_dataset_and_finer_grid_data(tmp_path):
    """The config path: random inclusions rendered on a 2x finer grid and pushed through a 2x finer
    mesh (on_grid), then Gauss-Newton; and the mesh/conductivity figure."""
    from invprior.config import parse_config
    from invprior.eit.figures import eit_figure
    from invprior.experiment import build_problem
    images = registry.get("datasets", "inclusions", size=32, n=3, seed=4, count=2)
    assert images.shape == (3, 1, 32, 32) and not torch.equal(images[0], images[1])
    assert set(np.round(np.unique(np.abs(images.numpy())), 6)) - {0.0}  # some contrast
    magnitude = np.abs(images.numpy())
    assert (magnitude[magnitude > 0] >= 0.5 - 1e-6).all() and magnitude.max() <= 1.5 + 1e-6
    op = EIT(size=16, h=0.2, electrodes=8, parametrization="exp")
    fine = op.on_grid(32)
    assert fine.size == 32 and len(fine.mesh.elements) > 2 * len(op.mesh.elements)
    assert np.allclose(fine.model.currents, op.model.currents)
    raw = {"seed": 1, "problem": {"operator": "eit", "operator_params": {"h": 0.2, "electrodes": 8,
                                                                          "parametrization": "exp"},
                                  "image": "inclusions", "image_params": {"count": 1}, "size": 16, "fine_factor": 2,
                                  "noise": {"relative": 0.01}}, "method": {"name": "gauss_newton"}}
    problem = build_problem(parse_config(raw).problem, 1, dtype=torch.float64)
    assert problem.y.shape == (1, 8, 8)
    result = GaussNewton(iterations=3).reconstruct(problem, progress=False)
    assert result.trace["residual"][-1] < result.trace["residual"][0]
    path = eit_figure(tmp_path / "eit.png", problem.operator, [("truth", problem.x_true), ("GN", result.image)])
    assert path.exists() and path.stat().st_size > 10_000


def test_lin_dip_error_bars_on_eit():
    """lin-DIP needs nothing EIT-specific: the exact path linearises A(G(theta)) through the operator's
    forward-mode derivative. Its pixel-wise std is informative: the test log-likelihood beats a
    Gaussian with the same mean and the same average std everywhere (measured 1.03 against -0.09; 0.99
    against -0.92 without the image-space noise term, which adds the same eta = 0.033 to every pixel)."""
    from invprior.analysis.calibration import calibration_summary, posterior_calibration
    from invprior.posterior.linearized_laplace import LinearizedLaplace
    op = EIT(size=16, h=0.15, electrodes=16, parametrization="exp")
    problem = inclusion_problem(op, [(0.4, 0.2, 0.3, 3.0)], noise=GaussianNoise(relative=0.01), seed=1)
    problem = problem.to(dtype=torch.float64)
    fit = DIP(generator_params={"preset": "small", "channels": 8}, weight=0.0, lr=1e-2, stopping="fixed",
              stopping_params={"iterations": 300}, max_iterations=300,
              log_every=50).reconstruct(problem, progress=False)
    posterior = LinearizedLaplace(solver="exact", prior={"variance": "auto"}, evidence={"iterations": 20, "lr": 0.05},
                                  progress=False)
    posterior.fit(fit, problem)
    ours = posterior_calibration(posterior, problem.x_true, patches=(1,))
    flat = calibration_summary(problem.x_true, posterior.mean, torch.full_like(posterior.std, ours["mean_std"]),
                               patches=(1,))
    assert ours["ll_p1"] > flat["ll_p1"] + 0.5
    assert 0.7 < ours["coverage_95"] <= 1.0


def test_one_factorisation_per_image_for_a_forward_and_backward_pass(monkeypatch):
    """The backward pass reuses each image's LU (kept with the autograd context), also for a batch
    larger than the model's solution cache."""
    import invprior.eit.model as model_module
    count = {"n": 0}
    original = model_module.spla.splu

    def counting(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)
    monkeypatch.setattr(model_module.spla, "splu", counting)
    op = EIT(size=16, h=0.25, electrodes=8, parametrization="exp")
    x = (0.1 * torch.randn(6, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    x.requires_grad_()
    op(x).pow(2).sum().backward()
    assert count["n"] == 6 and torch.isfinite(x.grad).all()


def _same_on(device: str) -> None:
    """Forward, reverse and forward mode, Gauss-Newton, DIP and lin-DIP on ``device`` tensors agree
    with the CPU run (the FEM solve itself runs on the CPU in float64)."""
    from invprior.posterior.linearized_laplace import LinearizedLaplace
    op = EIT(size=16, h=0.2, electrodes=8, parametrization="exp")
    x = 0.1 * torch.randn(2, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn_like(x[:1])
    outputs = {}
    for where in ("cpu", device):
        xd = x.to(where).detach().clone().requires_grad_()
        y = op(xd)
        y.pow(2).sum().backward()
        _, tangent = torch.func.jvp(op, (x[:1].to(where),), (v.to(where),))
        assert y.device.type == xd.grad.device.type == tangent.device.type == torch.device(where).type
        outputs[where] = [t.detach().cpu() for t in (y, xd.grad, tangent)]
    for ours, reference in zip(outputs[device], outputs["cpu"]):
        assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-14)

    problem = inclusion_problem(op, [(0.3, 0.2, 0.35, 3.0)], noise=GaussianNoise(relative=0.01), seed=1)
    problem = problem.to(dtype=torch.float64)
    images = {}
    for where in ("cpu", device):
        moved = problem.to(device=where)
        gn = GaussNewton(iterations=3).reconstruct(moved, progress=False)
        one_step = OneStepGN().reconstruct(moved, progress=False)
        dip = DIP(generator_params={"preset": "small", "channels": 8}, weight=0.0, lr=1e-2, stopping="fixed",
                  stopping_params={"iterations": 100}, max_iterations=100, log_every=50,
                  seed=0).reconstruct(moved, progress=False)
        lin = LinearizedLaplace(solver="exact", prior={"variance": "auto"}, evidence={"iterations": 5, "lr": 0.05},
                                progress=False).fit(dip, moved)
        assert (gn.image.device.type == one_step.image.device.type == dip.image.device.type == lin.std.device.type
                == torch.device(where).type)
        assert dip.trace["residual"][-1] < dip.trace["residual"][0]
        images[where] = [gn.image.cpu(), one_step.image.cpu(), dip.image.cpu(), lin.std.cpu()]
    for ours, reference in zip(images[device][:2], images["cpu"][:2]):  # same arithmetic, on the CPU
        assert torch.allclose(ours, reference, rtol=1e-8, atol=1e-10)
    # DIP and lin-DIP: cuDNN convolutions round differently, so the runs agree to a few per cent
    for ours, reference in zip(images[device][2:], images["cpu"][2:]):
        assert float((ours - reference).norm() / reference.norm()) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors():
    _same_on("cuda")
