"""lin-DIP end to end: tangent operators, Nystrom/CG numerics, scalable vs exact solver, TV-PredCP, bad inputs."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.core.operator import ForwardOperator, TangentOperator, adjoint_mismatch
from invprior.errors import ConfigError, ConvergenceWarning, NonFiniteError, NotFittedError, ShapeError
from invprior.generators.unet import UNet
from invprior.linalg import conjugate_gradient
from invprior.methods import DIP
from invprior.posterior.fitted import kept_network
from invprior.posterior.lin_dip_options import (
    PriorOptions,
    SamplingOptions,
    SolverOptions,
)
from invprior.posterior.lin_dip_solvers import dense_operator, log_marginal_likelihood
from invprior.posterior.linearization import Linearization
from invprior.posterior.linearized_laplace import LinearizedLaplace
from invprior.posterior.prior import MaternBlockPrior
from invprior.posterior.scalable import (
    LinearModel,
    nystrom_from_sketch,
    orthonormal_test_matrix,
)
from invprior.posterior.subspace import SubspaceRegression, prior_subspace
from invprior.posterior.tv_pred_cp import TVPredCP
from invprior.regularizers.tv import AnisotropicTV

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- fixtures ---------------------------------------------------------------------------------

def _network() -> UNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return UNet(preset="small", scales=2, channels=3, skip_channels=1).double()


def _ct_problem(size: int = 6, seed: int = 0) -> InverseProblem:
    op = registry.get("operators", "ct_parallel", size=size, num_angles=4)
    x = registry.get("datasets", "ellipses", size=size, seed=2, dtype=F64)
    return InverseProblem.simulate(op, x, GaussianNoise(relative=0.05), seed=seed)


@pytest.fixture(scope="module")
def fitted():
    """A tiny DIP fitted to 6x6 CT with 4 angles (m = 44 measurements, 36 pixels), in the data's own units
    (no normalisation: the hyperparameter checks below were measured on this network)."""
    problem = _ct_problem()
    result = DIP(generator=_network(), generator_params=None, stopping="fixed", weight=0.0, init="none", average=0.0,
                 stopping_params={"iterations": 50}, lr=1e-2, normalise=False).reconstruct(problem, progress=False)
    return problem, result


def _linearization(result) -> Linearization:
    network, z = kept_network(result, "test")
    return Linearization(network.double(), z.double())


def _initial_log_noise(problem: InverseProblem) -> float:
    return 2 * math.log(float(problem.noise_std[0]))


def _hyper(post: LinearizedLaplace) -> torch.Tensor:
    """``log_variance``, ``log_lengthscale`` and ``log_noise`` of a fitted posterior, flat."""
    return torch.cat([post.prior.log_variance.detach(), post.prior.log_lengthscale.detach(),
                      torch.tensor([math.log(post.noise_variance)], dtype=F64)])


# -- 1. tangent operators ---------------------------------------------------------------------

class ExpBlur(ForwardOperator):
    """``y = B exp(x)`` on (1, size, size) images with a fixed seeded ``(measurements, size^2)`` matrix ``B``."""

    is_linear = False

    def __init__(self, size: int = 4, measurements: int = 12) -> None:
        super().__init__((1, size, size), (measurements,))
        self.matrix = torch.randn(measurements, size * size, generator=_gen(0), dtype=F64) / size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x).flatten(1) @ self.matrix.T.to(x)


class Matrix(ForwardOperator):
    """The linear operator ``x -> M vec(x)`` with its exact adjoint."""

    is_linear = True

    def __init__(self, matrix: torch.Tensor, domain_shape: tuple[int, ...]) -> None:
        super().__init__(domain_shape, (matrix.shape[0],))
        self.matrix = matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.matrix.T.to(x)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.matrix.to(y)).view(-1, *self.domain_shape)


def test_tangent_operator_matches_finite_differences_and_closed_forms():
    op = ExpBlur()
    x = 0.5 * torch.randn(1, 1, 4, 4, generator=_gen(1), dtype=F64)
    tangent = op.linearized(x)
    assert isinstance(tangent, TangentOperator) and tangent.is_linear
    assert tangent.domain_shape == (1, 4, 4) and tangent.range_shape == (12,)
    eps = 1e-5
    for seed in range(3):  # one direction at a time (see the batched test below)
        v = torch.randn(1, 1, 4, 4, generator=_gen(10 + seed), dtype=F64)
        u = torch.randn(1, 12, generator=_gen(20 + seed), dtype=F64)
        central = (op(x + eps * v) - op(x - eps * v)) / (2 * eps)
        got = tangent(v)
        assert torch.allclose(got, central, rtol=1e-7, atol=1e-8 * central.abs().max().item())
        # closed forms: A'(x) v = B (exp(x) * v),  A'(x)^T u = exp(x) * (B^T u)
        assert torch.allclose(got, (torch.exp(x) * v).flatten(1) @ op.matrix.T, rtol=1e-12, atol=1e-14)
        assert torch.allclose(tangent.adjoint(u), torch.exp(x) * (u @ op.matrix).view(1, 1, 4, 4), rtol=1e-12,
                              atol=1e-14)
        lhs, rhs = (got * u).sum().item(), (v * tangent.adjoint(u)).sum().item()
        assert abs(lhs - rhs) <= 1e-10 * abs(lhs)
        assert adjoint_mismatch(tangent, batch=1, seed=seed) < 1e-10
        # the tangent is taken at x: another point gives another map
        assert not torch.allclose(op.linearized(x + 1.0)(v), got)


def test_tangent_operator_on_a_batch_of_directions():
    op = ExpBlur()
    x = 0.5 * torch.randn(1, 1, 4, 4, generator=_gen(1), dtype=F64)
    tangent = op.linearized(x)
    v = torch.randn(3, 1, 4, 4, generator=_gen(2), dtype=F64)
    assert torch.allclose(tangent(v), (torch.exp(x) * v).flatten(1) @ op.matrix.T, rtol=1e-12, atol=1e-14)
    assert adjoint_mismatch(tangent, batch=2, seed=4) < 1e-10


def test_linearized_of_linear_operator_is_itself_and_batches_are_refused():
    linear = registry.get("operators", "ct_parallel", size=6, num_angles=4)
    assert linear.linearized(torch.rand(1, 1, 6, 6)) is linear
    op = ExpBlur()
    with pytest.raises(ShapeError, match="batch of 2"):
        op.linearized(torch.zeros(2, 1, 4, 4, dtype=F64))
    with pytest.raises(ShapeError, match=r"\(B, 1, 4, 4\)"):
        op.linearized(torch.zeros(1, 4, 4, dtype=F64))
    with pytest.raises(TypeError, match="nonlinear"):
        op.adjoint(torch.zeros(1, 12, dtype=F64))


# -- 2. Nystrom and preconditioned CG --------------------------------------------------------

def _psd_with_spectrum(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    n = eigenvalues.numel()
    q = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=F64)).Q
    return (q * eigenvalues) @ q.T


def nystrom(apply, size: int, rank: int, generator: torch.Generator, dtype: torch.dtype = F64):
    """The Nystrom approximation of the PSD map ``apply`` (on row vectors, products in ``dtype``) from a
    fresh rank-``rank`` test matrix, as the preconditioner builds it."""
    q = orthonormal_test_matrix(size, rank, generator)
    return nystrom_from_sketch(q, apply(q.T.to(dtype)).double().T)


def _reconstruct(u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return (u.T * lam) @ u


def test_nystrom_at_full_rank_reproduces_the_matrix():
    g = torch.randn(30, 30, generator=_gen(0), dtype=F64)
    m = g @ g.T  # random PSD, rank 30, condition number ~1e3
    u, lam = nystrom(lambda v: v @ m, 30, 30, _gen(1))
    assert u.shape == (30, 30) and lam.shape == (30,)
    assert torch.allclose(u @ u.T, torch.eye(30, dtype=F64), atol=1e-10)  # orthonormal rows
    assert (torch.linalg.matrix_norm(_reconstruct(u, lam) - m) / torch.linalg.matrix_norm(m)).item() < 1e-8
    # the eigenvalues are those of M
    assert torch.allclose(lam.sort().values, torch.linalg.eigvalsh(m), rtol=1e-8, atol=1e-10 * lam.max().item())


def test_nystrom_is_exact_on_a_matrix_of_the_sketch_rank():
    # no tail beyond rank r: the rank-r sketch captures everything (error = the zero tail)
    eigenvalues = torch.cat([torch.logspace(0, -3, 8, dtype=F64), torch.zeros(22, dtype=F64)])
    m = _psd_with_spectrum(eigenvalues, 2)
    u, lam = nystrom(lambda v: v @ m, 30, 8, _gen(3))
    assert (torch.linalg.matrix_norm(_reconstruct(u, lam) - m) / torch.linalg.matrix_norm(m)).item() < 1e-8


def test_nystrom_with_float32_products_keeps_the_tail_eigenvalues():
    """Products in float32 carry noise ~ eps_32 lambda_1; eigenvalues well above it must survive. With
    lambda_1 = 1e7 a float32-sized shift (sqrt(n) eps_32 ||Y||_F ~ 20) would distort everything below ~100
    (on the 64x64 demo problem that made preconditioned CG take ~25 instead of ~5 iterations)."""
    n, rank = 400, 250
    eigenvalues = torch.logspace(7, -5, n, dtype=F64)  # lambda_251 ~ 0.3
    m = _psd_with_spectrum(eigenvalues, 4)
    m32 = m.float()
    u, lam = nystrom(lambda v: v @ m32, n, rank, _gen(5), dtype=torch.float32)
    assert u.dtype == F64 and lam.dtype == F64
    found = torch.cat([lam.sort(descending=True).values, torch.zeros(n - lam.numel(), dtype=F64)])
    band = (eigenvalues > 100) & (eigenvalues < 1000)
    assert band.sum() >= 10
    assert ((found[band] - eigenvalues[band]).abs() / eigenvalues[band]).max().item() < 0.05


def test_nystrom_error_against_the_tail_of_the_spectrum():
    """Rank r of a fast-decaying spectrum: the error can never beat lambda_{r+1} (Eckart-Young) and, with a
    sketch of r + p columns, its mean obeys the randomised range-finder bound (Halko, Martinsson & Tropp
    2011, Thm 10.6, applied to M^{1/2}: ||M - M_hat|| = ||(I - P) M^{1/2}||^2)."""
    n, r, p = 30, 8, 4
    eigenvalues = 10.0 ** (-torch.arange(n, dtype=F64) / 2)
    sigma = eigenvalues.sqrt()  # singular values of M^{1/2}
    bound = ((1 + math.sqrt(r / (p - 1))) * sigma[r] + math.e * math.sqrt(r + p) / p * sigma[r:].norm()).item()
    exact_rank_errors, oversampled = [], []
    for seed in range(20):
        m = _psd_with_spectrum(eigenvalues, 100 + seed)
        for rank, out in ((r, exact_rank_errors), (r + p, oversampled)):
            u, lam = nystrom(lambda v: v @ m, n, rank, _gen(seed))
            assert u.shape == (rank, n)
            out.append(torch.linalg.matrix_norm(_reconstruct(u, lam) - m, ord=2).item())
    # a rank-r approximation is at best lambda_{r+1} away (small slack for rounding)
    assert min(exact_rank_errors) >= eigenvalues[r].item() * (1 - 1e-6)
    # rank r + p: never better than lambda_{r+p+1}; the mean of ||(I - P) M^{1/2}|| below Halko's bound
    assert min(oversampled) >= eigenvalues[r + p].item() * (1 - 1e-6)
    assert sum(math.sqrt(e) for e in oversampled) / len(oversampled) <= bound
    # close to the tail: the bound is ~30 lambda_{r+1} (lambda_1 = 1e4 lambda_{r+1}); typical errors are far below it
    assert sorted(oversampled)[len(oversampled) // 2] < 3 * eigenvalues[r].item()


def test_preconditioned_cg_solves_ill_conditioned_systems_in_fewer_iterations():
    n = 60
    c = _psd_with_spectrum(torch.linspace(1.0, 2.0, n, dtype=F64), 4)      # well conditioned
    d = torch.logspace(0, 3, n, dtype=F64)
    m = d[:, None] * c * d[None, :]                                           # D C D, cond ~ 2e6
    condition = torch.linalg.cond(m).item()
    assert condition > 1e5
    b = torch.randn(2, n, generator=_gen(5), dtype=F64)
    expected = torch.linalg.solve(m, b.T).T
    rtol = 1e-10
    jacobi = m.diagonal()
    plain, plain_info = conjugate_gradient(lambda v: v @ m, b, max_iterations=5000, rtol=rtol)
    pre, pre_info = conjugate_gradient(lambda v: v @ m, b, max_iterations=5000, rtol=rtol,
                                       preconditioner=lambda v: v / jacobi)
    for x, info in ((plain, plain_info), (pre, pre_info)):
        assert bool(info.converged.all())
        residual = (b - x @ m).norm(dim=1) / b.norm(dim=1)
        # the reported residual is the true one, up to the recurrence's rounding drift (4e-4 relative measured)
        assert torch.allclose(info.relative_residual, residual, rtol=1e-2, atol=1e-14)
        assert (residual <= rtol).all()
        # forward error <= cond(M) * relative residual
        assert ((x - expected).norm(dim=1) / expected.norm(dim=1) <= condition * rtol).all()
    # P^{-1/2} M P^{-1/2} = diag(C)^{-1/2} C diag(C)^{-1/2} has condition <= 4: CG needs ~ sqrt(4) log(2/rtol) steps
    assert pre_info.iterations <= 2 * math.log(2 / rtol) + 5
    assert pre_info.iterations * 3 < plain_info.iterations
    # a capped run reports non-convergence instead of hiding it
    _, capped = conjugate_gradient(lambda v: v @ m, b, max_iterations=3, rtol=rtol)
    assert capped.iterations == 3 and not bool(capped.converged.any())


# -- 3. the Nystrom preconditioner of LinearModel ---------------------------------------------

def _small_model(fitted, noise: float = 1e-3) -> tuple[LinearModel, Linearization, MaternBlockPrior]:
    """``LinearModel`` of the fitted 6x6 CT network with a Matern prior (variance 1, lengthscale 0.5)."""
    problem, result = fitted
    lin = _linearization(result)
    prior = MaternBlockPrior(lin.shapes, variance=1.0, lengthscale=0.5)
    return LinearModel(lin, problem.operator, prior, torch.tensor(math.log(noise), dtype=F64)), lin, prior


def test_full_rank_nystrom_preconditioner_whitens_k(fitted):
    noise = 1e-3
    model, lin, prior = _small_model(fitted, noise)
    m = model.size
    assert m == 44
    eye = torch.eye(m, dtype=F64)
    with torch.no_grad():
        k = model.k_apply(eye)
    aj = dense_operator(fitted[0].operator) @ lin.jacobian()
    dense_k = aj @ prior.dense().detach() @ aj.T + noise * eye
    assert torch.allclose(k, dense_k, rtol=1e-9, atol=1e-9 * dense_k.abs().max().item())
    assert torch.linalg.cond(k).item() > 1e4  # preconditioning has work to do
    assert torch.equal(model.precondition(k), k)  # no preconditioner yet: the identity
    model.refresh_preconditioner(m, _gen(0))
    whitened = model.precondition(k)  # s^2 P^{-1} K
    assert torch.allclose(whitened, noise * eye, atol=1e-7 * noise)
    # the same preconditioner at a low rank is not a whitener (the check above can fail)
    model.refresh_preconditioner(m // 4, _gen(0))
    assert (model.precondition(k) - noise * eye).abs().max().item() > 0.1 * noise


def _change_hyperparameters(prior: MaternBlockPrior) -> None:
    with torch.no_grad():
        prior.log_variance += torch.linspace(-1.0, 2.0, len(prior.log_variance), dtype=F64)
        prior.log_lengthscale -= 0.7


def test_refresh_at_new_hyperparameters_reuses_the_pullbacks_and_whitens_the_new_k(fitted):
    noise = 1e-3
    model, _, prior = _small_model(fitted, noise)
    m, eye = model.size, torch.eye(model.size, dtype=F64)
    model.refresh_preconditioner(m, _gen(0), keep=True)
    _change_hyperparameters(prior)
    with torch.no_grad():
        k_new = model.k_apply(eye)
    pullbacks = []
    model.transpose = lambda u, lin=None: pullbacks.append(u) or LinearModel.transpose(model, u, lin)
    model.refresh_preconditioner(m, _gen(1))   # kept: J^T A^T Q is reused, only jvps are computed
    assert pullbacks == []
    assert torch.allclose(model.precondition(k_new), noise * eye, atol=1e-7 * noise)  # a sketch of the new K
    model.refresh_preconditioner(m, _gen(1))   # the last refresh did not keep it: pulled back again
    assert len(pullbacks) == 1 and pullbacks[0].shape == (m, m)


def test_low_rank_refresh_with_kept_pullbacks_equals_a_fresh_sketch_with_the_same_test_matrix(fitted):
    """At rank m/2 (Nystrom not exact), the reused ``Q``, ``Z`` give the sketch that a new model drawing the
    same ``Q`` makes from scratch at the new hyperparameters."""
    reused, _, prior = _small_model(fitted)
    reused.refresh_preconditioner(reused.size // 2, _gen(0), keep=True)
    _change_hyperparameters(prior)
    reused.refresh_preconditioner(reused.size // 2, _gen(7))
    fresh, _, fresh_prior = _small_model(fitted)
    _change_hyperparameters(fresh_prior)
    fresh.refresh_preconditioner(fresh.size // 2, _gen(0))
    assert torch.allclose(reused._eigenvalues, fresh._eigenvalues, rtol=1e-8)
    assert torch.allclose((reused._basis.T @ reused._basis), (fresh._basis.T @ fresh._basis), atol=1e-8)
    stale, _, _ = _small_model(fitted)        # and it differs from the sketch at the old hyperparameters
    stale.refresh_preconditioner(stale.size // 2, _gen(0))
    assert not torch.allclose(reused._eigenvalues, stale._eigenvalues, rtol=1e-2)


def test_refresh_at_a_higher_rank_pulls_back_only_the_new_columns(fitted):
    """Kept ``Q``, ``Z`` at rank m/2, then a refresh at rank m: m/2 new pullbacks, ``Q`` stays orthonormal, and the
    full-rank sketch of the new ``K`` whitens it exactly; a lower rank afterwards draws a new ``Q``."""
    noise = 1e-3
    model, _, prior = _small_model(fitted, noise)
    m, eye = model.size, torch.eye(model.size, dtype=F64)
    model.refresh_preconditioner(m // 2, _gen(0), keep=True)
    first = model._test.clone()
    _change_hyperparameters(prior)
    with torch.no_grad():
        k_new = model.k_apply(eye)
    pullbacks = []
    model.transpose = lambda u, lin=None: pullbacks.append(u) or LinearModel.transpose(model, u, lin)
    model.refresh_preconditioner(m, _gen(1), keep=True)
    assert [tuple(u.shape) for u in pullbacks] == [(m - m // 2, m)]
    assert torch.equal(model._test[:, :m // 2], first)
    assert torch.allclose(model._test.T @ model._test, eye, atol=1e-12)
    assert torch.allclose(model.precondition(k_new), noise * eye, atol=1e-7 * noise)
    model.refresh_preconditioner(m // 4, _gen(2))
    assert len(pullbacks) == 2 and pullbacks[1].shape == (m // 4, m)


# -- 4. scalable vs exact ---------------------------------------------------------------------

FROZEN = {"iterations": 1, "lr": 1e-8}  # one Adam step of size ~1e-8: hyperparameters unchanged


@pytest.fixture(scope="module")
def exact_and_scalable(fitted):
    problem, result = fitted
    m = math.prod(problem.operator.range_shape)
    exact = LinearizedLaplace("exact", evidence=FROZEN, progress=False).fit(result, problem)
    scalable = LinearizedLaplace({"kind": "scalable", "batch": 500},
                                 evidence={**FROZEN, "cg_iterations": 500, "preconditioner_rank": m},
                                 sampling={"num_samples": 4000, "cg_rtol": 1e-10}, progress=False).fit(result, problem)
    return exact, scalable


def test_scalable_and_exact_paths_give_the_same_predictive(fitted, exact_and_scalable):
    problem, _ = fitted
    exact, scalable = exact_and_scalable
    assert exact.solver_used == "exact" and scalable.solver_used == "scalable"
    noise_variance = float(problem.noise_std[0]) ** 2
    assert exact.noise_variance == pytest.approx(noise_variance, rel=1e-6)
    assert scalable.noise_variance == pytest.approx(exact.noise_variance, rel=1e-6)
    for name in ("log_variance", "log_lengthscale"):
        assert torch.allclose(getattr(scalable.prior, name), getattr(exact.prior, name), atol=1e-6)
    assert scalable.mean_used == exact.mean_used and scalable.discrepancy == pytest.approx(exact.discrepancy, rel=1e-9)
    assert torch.allclose(scalable.mean, exact.mean, atol=1e-8)  # the same mean; CG to rtol 1e-10
    assert scalable.samples.shape == (4000, 1, 1, 6, 6)
    # relative error of a std estimated from N samples ~ 1 / sqrt(2 N)
    tolerance = 5 / math.sqrt(2 * 4000)
    ratio = scalable.std / exact.std
    assert (ratio - 1).abs().max().item() < tolerance
    # the Monte-Carlo error is there, but the estimate is not biased: pixels scatter on both sides
    assert (ratio > 1).any() and (ratio < 1).any()


def test_each_path_refuses_what_it_does_not_keep_and_samples_reproducibly(exact_and_scalable):
    exact, scalable = exact_and_scalable
    with pytest.raises(ConfigError, match="scalable path forms no dense covariance"):
        _ = scalable.covariance
    with pytest.raises(ConfigError, match="exact path keeps no samples"):
        _ = exact.samples
    for post in (exact, scalable):
        first, again, other = post.sample(6, seed=3), post.sample(6, seed=3), post.sample(6, seed=4)
        assert first.shape == (6, 1, 1, 6, 6) and torch.equal(first, again) and not torch.allclose(first, other)


@pytest.fixture(scope="module")
def nonlinear_fit():
    """A tiny DIP fitted to y = B exp(x) + noise on 6x6 images, 20 measurements."""
    op = ExpBlur(size=6, measurements=20)
    x = registry.get("datasets", "ellipses", size=6, seed=2, dtype=F64)
    problem = InverseProblem.simulate(op, x, GaussianNoise(std=0.05), seed=0)
    result = DIP(generator=_network(), generator_params=None, stopping="fixed", weight=0.0, init="none", average=0.0,
                 stopping_params={"iterations": 20}, lr=1e-2).reconstruct(problem, progress=False)
    return problem, result


@pytest.mark.parametrize("solver", ["exact", "scalable"])
def test_nonlinear_operator_is_replaced_by_its_tangent(nonlinear_fit, solver):
    """lin-DIP on y = B exp(x) must equal lin-DIP on the linear B diag(exp(x*)) with data shifted so that the
    residual y - A(x*) is the same: same marginal likelihood, same predictive."""
    problem, result = nonlinear_fit
    op = problem.operator
    lin = _linearization(result)
    x_star = lin.output
    tangent_matrix = op.matrix * torch.exp(x_star).flatten()                  # B diag(exp(x*))
    linear = Matrix(tangent_matrix, op.domain_shape)
    y_linear = problem.y - op(x_star) + linear(x_star)
    twin = InverseProblem(linear, y_linear, noise_std=problem.noise_std)
    settings = {"solver": solver, "evidence": {"iterations": 3, "lr": 0.05, "cg_iterations": 200},
                "sampling": {"num_samples": 64, "cg_rtol": 1e-12}, "progress": False}
    post = LinearizedLaplace(**settings).fit(result, problem)
    expected = LinearizedLaplace(**settings).fit(result, twin)
    assert post.history == pytest.approx(expected.history, rel=1e-9)
    assert torch.allclose(post.std, expected.std, rtol=1e-6)


# -- 5. type-II maximum likelihood -----------------------------------------------------------

def _dense_k(aj: torch.Tensor, prior: MaternBlockPrior, log_noise: float) -> torch.Tensor:
    return aj @ prior.dense() @ aj.T + math.exp(log_noise) * torch.eye(aj.shape[0], dtype=F64)


def test_type_ii_fit_raises_the_evidence_and_scalable_moves_like_exact(fitted):
    problem, result = fitted
    lin = _linearization(result)
    a = dense_operator(problem.operator)
    aj = a @ lin.jacobian()
    theta_star = torch.cat([t.reshape(-1) for t in lin.theta])
    residual = problem.y.double().flatten() - a @ lin.output.flatten() + aj @ theta_star
    prior = MaternBlockPrior(lin.shapes, 1.0, 0.1)  # LinearizedLaplace's defaults
    log_noise0 = _initial_log_noise(problem)
    log_noise = torch.tensor(log_noise0, dtype=F64, requires_grad=True)
    hyper = [prior.log_variance, prior.log_lengthscale, log_noise]
    gradient = torch.cat([g.flatten() for g in torch.autograd.grad(
        log_marginal_likelihood(aj, residual, prior, log_noise), hyper)])
    # Hutchinson standard error of the scalable gradient with 20 Rademacher probes, in closed form:
    # the probe term -1/2 z^T K^{-1} dK z has variance 1/4 * 2 sum_{i != j} S_ij^2 with S = sym(K^{-1} dK)
    k = _dense_k(aj, prior, log_noise0).detach()
    flat = torch.cat([p.detach().flatten() for p in hyper])
    standard_error = torch.zeros_like(flat)
    eps = 1e-6
    for index in range(flat.numel()):
        k_pm = []
        for sign in (1, -1):
            shifted = flat.clone()
            shifted[index] += sign * eps
            trial = MaternBlockPrior(lin.shapes)
            with torch.no_grad():
                trial.log_variance.copy_(shifted[:len(lin.shapes)])
                trial.log_lengthscale.copy_(shifted[len(lin.shapes):-1])
                k_pm.append(_dense_k(aj, trial, float(shifted[-1])))
        b = torch.linalg.solve(k, (k_pm[0] - k_pm[1]) / (2 * eps))
        s = 0.5 * (b + b.T)
        off_diagonal = s.pow(2).sum() - s.diagonal().pow(2).sum()
        standard_error[index] = 0.5 * torch.sqrt(2 * off_diagonal / 20)
    clear = gradient.abs() > 5 * standard_error
    assert bool(clear[-1])  # the noise level is one of them (the prior variances drown in probe noise)

    evidence = {"iterations": 10, "lr": 0.05, "noise": "learn"}
    exact = LinearizedLaplace("exact", evidence=evidence, progress=False).fit(result, problem)
    scalable = LinearizedLaplace("scalable", evidence={**evidence, "num_probes": 20}, sampling={"num_samples": 8},
                                 progress=False).fit(result, problem)
    assert len(exact.history) == len(scalable.history) == 10
    assert exact.history[-1] > exact.history[0]
    start = torch.cat([prior.log_variance.detach(), prior.log_lengthscale.detach(), torch.tensor([log_noise0])])
    exact_change, scalable_change = _hyper(exact) - start, _hyper(scalable) - start
    # Adam: 10 steps of at most ~lr each, in the direction of the gradient where it is clear
    # (|m_hat| / sqrt(v_hat) can pass 1 a little when the gradient grows: m_hat averages more recent steps)
    assert (exact_change.abs() <= 1.02 * 10 * 0.05).all()
    assert torch.equal(torch.sign(exact_change[clear]), torch.sign(gradient[clear]))
    assert torch.equal(torch.sign(scalable_change[clear]), torch.sign(exact_change[clear]))
    assert (exact_change[clear].abs() > 0.2).all()
    for post in (exact, scalable):
        values = _hyper(post).exp()
        assert torch.isfinite(values).all() and (values > 0).all()
        assert math.isfinite(post.noise_variance) and post.noise_variance > 0


# -- 6. TV-PredCP ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jacobian_images(fitted):
    _, result = fitted
    lin = _linearization(result)
    jacobian = lin.jacobian()
    return lin, jacobian, lambda theta: (theta @ jacobian.T).view(-1, 1, 6, 6)


def test_tv_pred_cp_expected_tv_is_one_homogeneous_in_the_std(jacobian_images):
    lin, _, images = jacobian_images
    one = TVPredCP(MaternBlockPrior(lin.shapes, 1.0, 0.4), images, rate=1.0, samples=8, seed=3)
    four = TVPredCP(MaternBlockPrior(lin.shapes, 4.0, 0.4), images, rate=1.0, samples=8, seed=3)
    assert one.blocks == [b for b, shape in enumerate(lin.shapes) if shape[2] == 3]
    kappa_one, kappa_four = one.expected_tv(), four.expected_tv()
    assert kappa_one.shape == (len(one.blocks),) and (kappa_one > 0).all()
    assert torch.allclose(kappa_four, 2 * kappa_one, rtol=1e-10, atol=0)


def test_tv_pred_cp_expected_tv_matches_an_independent_monte_carlo(jacobian_images):
    lin, _, images = jacobian_images
    prior = MaternBlockPrior(lin.shapes, 1.0, 0.4)
    n = 2000
    kappa = TVPredCP(prior, images, rate=1.0, samples=n, seed=0).expected_tv().detach()
    # our own draws: theta ~ N(0, Sigma) restricted to one block at a time
    draws = prior.sample(n, _gen(11))
    offsets = [0]
    for size in prior.sizes:
        offsets.append(offsets[-1] + size)
    tv = AnisotropicTV()
    for i, b in enumerate(TVPredCP(prior, images, 1.0).blocks):
        theta = torch.zeros_like(draws)
        theta[:, offsets[b]:offsets[b + 1]] = draws[:, offsets[b]:offsets[b + 1]]
        values = tv(images(theta))
        standard_error = math.sqrt(2) * values.std().item() / math.sqrt(n)  # two independent means
        assert abs(kappa[i].item() - values.mean().item()) < 5 * standard_error


def test_tv_pred_cp_log_density_gradient_matches_finite_differences(jacobian_images):
    lin, _, images = jacobian_images
    start = torch.log(torch.tensor([0.3, 0.5, 0.7, 0.9, 1.0, 0.6, 1.0, 1.0], dtype=F64))

    def density(log_lengthscale: torch.Tensor) -> tuple[torch.Tensor, MaternBlockPrior]:
        prior = MaternBlockPrior(lin.shapes, 1.0, 0.5)
        with torch.no_grad():
            prior.log_lengthscale.copy_(log_lengthscale)
        return TVPredCP(prior, images, rate=2.0, samples=4, seed=7).log_density(), prior  # same draws every time

    value, prior = density(start)
    (gradient,) = torch.autograd.grad(value, prior.log_lengthscale)
    blocks = TVPredCP(prior, images, 2.0).blocks
    eps = 1e-5
    for b in range(len(lin.shapes)):
        step = torch.zeros_like(start)
        step[b] = eps
        central = (density(start + step)[0].item() - density(start - step)[0].item()) / (2 * eps)
        if b in blocks:
            assert gradient[b].item() == pytest.approx(central, rel=1e-6, abs=1e-8)
        else:  # 1x1 convolutions have no lengthscale to speak of
            assert gradient[b].item() == 0.0 and central == 0.0
    assert gradient[blocks].abs().min().item() > 1e-3  # non-trivial


def test_tv_pred_cp_hyperprior_changes_the_fit(fitted, jacobian_images):
    problem, result = fitted
    lin, _, images = jacobian_images
    settings = {"solver": "exact", "evidence": {"iterations": 10, "lr": 0.05}, "progress": False}
    plain = LinearizedLaplace(**settings).fit(result, problem)
    tv_map = LinearizedLaplace(prior={"hyperprior": "tv_pred_cp"}, **settings).fit(result, problem)
    # the first objective is the marginal likelihood plus the hyperprior's log density at the start values,
    # with rate 1 / TV(x*) and the same seeded draws
    rate = 1.0 / AnisotropicTV()(lin.output.double()).item()
    log_hyper = TVPredCP(MaternBlockPrior(lin.shapes, 1.0, 0.1), images, rate, samples=4, seed=0).log_density()
    assert tv_map.history[0] == pytest.approx(plain.history[0] + log_hyper.item(), rel=1e-9, abs=1e-9)
    blocks = [b for b, shape in enumerate(lin.shapes) if shape[2] > 1]
    difference = (tv_map.prior.log_lengthscale - plain.prior.log_lengthscale).detach()
    assert difference[blocks].abs().min().item() > 0.05
    assert torch.isfinite(_hyper(tv_map)).all()


# -- 7. bad inputs ----------------------------------------------------------------------------

def test_posterior_properties_need_fit_and_names_are_checked():
    post = LinearizedLaplace(progress=False)
    for name in ("mean", "std", "covariance", "samples"):
        with pytest.raises(NotFittedError, match="fit"):
            getattr(post, name)
    with pytest.raises(NotFittedError, match="fit"):
        post.sample(2)
    with pytest.raises(NotFittedError, match="fit"):
        post.log_likelihood(torch.zeros(1, 1, 6, 6))
    for kwargs, key in (({"solver": "dense"}, "solver.kind"), ({"prior": {"hyperprior": "tv"}}, "prior.hyperprior"),
                        ({"solver": {"dtype": "float16"}}, "solver.dtype"), ({"evidence": {"noise": "fixed"}},
                                                                              "evidence.noise")):
        with pytest.raises(ConfigError, match=f"{key} must be one of"):
            LinearizedLaplace(**kwargs)


def test_fit_refuses_mismatched_shapes_non_finite_weights_and_batches(fitted):
    problem, result = fitted
    bigger = _ct_problem(size=8)
    with pytest.raises(ShapeError, match=r"\(1, 6, 6\).*\(1, 8, 8\)"):
        LinearizedLaplace(progress=False).fit(result, bigger)
    state = {k: v.clone() for k, v in result.networks[0].state.items()}
    state["network.outc.weight"].view(-1)[0] = float("nan")
    broken = dataclasses.replace(result, networks=[dataclasses.replace(result.networks[0], state=state)])
    with pytest.raises(NonFiniteError):
        LinearizedLaplace(progress=False).fit(broken, problem)
    pair = InverseProblem(problem.operator, torch.cat([problem.y, problem.y]), noise_std=0.01)
    with pytest.raises(ShapeError, match="one image at a time"):
        LinearizedLaplace(progress=False).fit(result, pair)
    with pytest.raises(ConfigError, match="max_pixels"):
        LinearizedLaplace(solver={"kind": "exact", "max_pixels": 35}, progress=False).fit(result, problem)
    unknown_noise = InverseProblem(problem.operator, problem.y)
    with pytest.raises(ConfigError, match="evidence.noise='known' needs the noise level"):
        LinearizedLaplace(evidence={"noise": "known"}, progress=False).fit(result, unknown_noise)
    # auto picks the scalable path past max_pixels
    auto = LinearizedLaplace(solver={"max_pixels": 35}, evidence={"iterations": 1}, sampling={"num_samples": 4},
                             progress=False).fit(result, problem)
    assert auto.solver_used == "scalable"


def test_cg_non_convergence_on_the_scalable_path_warns(fitted):
    problem, result = fitted
    post = LinearizedLaplace(solver="scalable",
                             evidence={"iterations": 2, "cg_iterations": 1, "cg_rtol": 1e-14, "preconditioner_rank": 1},
                             sampling={"cg_rtol": 1e-14, "num_samples": 4}, progress=False)
    with pytest.warns(ConvergenceWarning, match="CG solves stopped at 1 iterations before reaching their tolerance"):
        post.fit(result, problem)


# -- refits and float32 ------------------------------------------------------------------------

def test_refit_starts_a_fresh_history(fitted):
    problem, result = fitted
    post = LinearizedLaplace(solver="exact", evidence={"iterations": 3, "lr": 0.05}, progress=False)
    first = list(post.fit(result, problem).history)
    assert len(first) == 3
    assert post.fit(result, problem).history == first


def test_refit_on_a_larger_image_forgets_the_dense_covariance(fitted):
    problem, result = fitted
    bigger = _ct_problem(size=8)
    result8 = DIP(generator=_network(), generator_params=None, stopping="fixed", weight=0.0, init="none", average=0.0,
                  stopping_params={"iterations": 5}, lr=1e-2).reconstruct(bigger, progress=False)
    post = LinearizedLaplace(solver={"max_pixels": 40}, evidence={"iterations": 1}, sampling={"num_samples": 8},
                             progress=False)
    assert post.fit(result, problem).solver_used == "exact"
    assert post.fit(result8, bigger).solver_used == "scalable"
    assert post.std.shape == (1, 1, 8, 8)
    with pytest.raises(ConfigError, match="no dense covariance"):
        _ = post.covariance


def test_scalable_float32_does_not_blow_up(fitted):
    problem, result = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a reported CG miss would be acceptable here
        try:
            post = LinearizedLaplace({"kind": "scalable", "dtype": "float32"}, evidence=FROZEN,
                                     sampling={"num_samples": 16}, progress=False).fit(result, problem)
        except ConfigError:
            return  # refusing float32 where it cannot resolve the noise level would be acceptable too
    assert torch.isfinite(post.std).all() and (post.std > 0).all()


def test_auto_variance_lets_the_prior_explain_the_evidence_energy(fitted):
    """``variance="auto"``: E r^T r = tr(A J Sigma J^T A^T) + m s^2 under the model; the initial block variances
    are scaled to meet it (trace by 8 Hutchinson probes, so only within a factor of the probe error)."""
    problem, result = fitted
    post = LinearizedLaplace("exact", prior={"variance": "auto"}, evidence=FROZEN, progress=False).fit(result, problem)
    lin = _linearization(result)
    aj = dense_operator(problem.operator) @ lin.jacobian()
    theta_star = torch.cat([t.reshape(-1) for t in lin.theta])
    residual = problem.y.double().flatten() - dense_operator(problem.operator) @ lin.output.flatten() + aj @ theta_star
    m = residual.numel()
    trace = torch.trace(aj @ post.prior.dense().detach() @ aj.T).item()
    target = residual.pow(2).sum().item() - m * post.noise_variance
    assert 0.5 < trace / target < 2.0
    fixed = LinearizedLaplace("exact", prior={"variance": 1.0}, evidence=FROZEN, progress=False).fit(result, problem)
    assert not torch.allclose(fixed.prior.log_variance, post.prior.log_variance)
    with pytest.raises(ConfigError):
        LinearizedLaplace(prior={"variance": "big"})


def test_sample_preconditioner_rank_rejects_bad_values():
    assert LinearizedLaplace(sampling={"preconditioner_rank": 500}).sampling.preconditioner_rank == 500
    for bad in (0, -3, 2.5, "big"):
        with pytest.raises(ConfigError, match=r"sampling\.preconditioner_rank"):
            LinearizedLaplace(sampling={"preconditioner_rank": bad})


def test_a_higher_sample_preconditioner_rank_keeps_the_draws_and_cuts_cg_iterations(fitted):
    """Only CG's speed changes with the rank of the refresh before sampling: the same samples (solved tightly),
    fewer CG iterations per batch, and at full rank about one iteration."""
    problem, result = fitted
    m = math.prod(problem.operator.range_shape)
    fits = {rank: LinearizedLaplace({"kind": "scalable", "batch": 16},
                                    evidence={**FROZEN, "cg_iterations": 200, "preconditioner_rank": m // 4},
                                    sampling={"num_samples": 64, "cg_rtol": 1e-9, "preconditioner_rank": rank},
                                    progress=False).fit(result, problem)
            for rank in (m // 4, m // 2, m)}
    low = fits[m // 4].samples
    for rank in (m // 2, m):
        assert torch.allclose(fits[rank].samples, low, atol=1e-6 * low.abs().max().item())
    iterations = [fits[rank].cg_summary["samples"]["mean_iterations"] for rank in (m // 4, m // 2, m)]
    assert iterations[0] > iterations[1] > iterations[2]
    assert iterations[2] <= 3   # full rank: P^{-1} K = I up to rounding (one step in exact arithmetic)


def test_sample_batch_auto_is_8_on_a_cpu_and_32_on_a_gpu():
    post = LinearizedLaplace()
    assert post._batch(torch.device("cpu")) == 8 and post._batch(torch.device("cuda")) == 32
    assert LinearizedLaplace(solver={"batch": 5})._batch(torch.device("cuda")) == 5
    for bad in ("big", 0, 2.5):
        with pytest.raises(ConfigError, match=r"solver\.batch"):
            LinearizedLaplace(solver={"batch": bad})


# -- subspace solver ----------------------------------------------------------------------------

def _dense_regression(seed: int = 0, m: int = 40, r: int = 12):
    """A random ``A L`` of rank ``r - 2`` (two zero directions) and a residual drawn from the model."""
    g = torch.randn(m, r - 2, generator=_gen(seed), dtype=F64) @ torch.randn(r - 2, r, generator=_gen(seed + 1),
                                                                              dtype=F64)
    residual = g @ torch.randn(r, generator=_gen(seed + 2), dtype=F64) * 0.7 + 0.1 * torch.randn(
        m, generator=_gen(seed + 3), dtype=F64)
    return g, residual


def test_subspace_regression_matches_dense_bayesian_linear_regression():
    projected, residual = _dense_regression()
    m, r = projected.shape
    regression = SubspaceRegression(projected, residual)
    for alpha, noise in ((0.5, 0.01), (2.0, 0.3)):
        k = alpha * projected @ projected.T + noise * torch.eye(m, dtype=F64)
        dense = torch.distributions.MultivariateNormal(torch.zeros(m, dtype=F64), k).log_prob(residual)
        assert regression.log_evidence(alpha, noise) == pytest.approx(float(dense), rel=1e-10)
        precision = torch.eye(r, dtype=F64) / alpha + projected.T @ projected / noise
        covariance = torch.linalg.inv(precision)
        mean, factor = regression.posterior_weights(alpha, noise)
        assert torch.allclose(mean, covariance @ projected.T @ residual / noise, atol=1e-10)
        assert torch.allclose(factor @ factor.T, covariance, atol=1e-10)


def test_subspace_regression_fit_maximises_the_evidence():
    projected, residual = _dense_regression(seed=4)
    regression = SubspaceRegression(projected, residual)
    alpha, noise = regression.fit(0.05, learn_noise=False)
    assert noise == 0.05
    best = regression.log_evidence(alpha, noise)
    for factor in (0.9, 1.1):  # a maximum in alpha
        assert regression.log_evidence(alpha * factor, noise) < best
    alpha2, noise2 = regression.fit(0.05, learn_noise=True)
    best2 = regression.log_evidence(alpha2, noise2)
    assert best2 >= best
    for da, ds in ((0.95, 1.0), (1.05, 1.0), (1.0, 0.95), (1.0, 1.05)):
        assert regression.log_evidence(alpha2 * da, noise2 * ds) < best2
    # the residual was drawn with noise std 0.1 and weight std 0.7
    assert noise2 == pytest.approx(0.01, rel=0.5) and alpha2 == pytest.approx(0.49, rel=0.8)


def test_prior_subspace_eigenpairs_trace_and_captured_fraction():
    eigenvalues = torch.tensor([2.0 ** -i for i in range(20)], dtype=F64)
    diagonal = torch.diag(eigenvalues)  # Rademacher Hutchinson is exact for a diagonal matrix
    identity = lambda v: v  # noqa: E731
    full = prior_subspace(lambda v: v @ diagonal, identity, lambda v: v @ diagonal, 20, 20, _gen(0))
    assert full.trace == pytest.approx(float(eigenvalues.sum()), rel=1e-12)
    assert torch.allclose(full.eigenvalues.sort(descending=True).values, eigenvalues, rtol=1e-8)
    assert full.captured == pytest.approx(1.0, rel=1e-8)
    assert torch.allclose(full.factor @ full.factor.T, diagonal, atol=1e-10)
    low = prior_subspace(lambda v: v @ diagonal, identity, lambda v: v @ diagonal, 20, 5, _gen(0), power_iterations=1)
    assert low.rank == 5
    # one power iteration on a spectrum halving each step: the top five eigenvalues to a few digits
    assert torch.allclose(low.eigenvalues.sort(descending=True).values, eigenvalues[:5], rtol=1e-2)
    assert low.captured == pytest.approx(float(eigenvalues[:5].sum() / eigenvalues.sum()), rel=1e-2)


def test_subspace_path_at_full_rank_is_the_dense_posterior_at_its_fitted_scale(fitted):
    problem, result = fitted
    n = math.prod(problem.operator.domain_shape)
    post = LinearizedLaplace(solver={"kind": "subspace", "subspace_rank": n}, sampling={"image_noise": "none"},
                             progress=False).fit(result, problem)
    assert post.solver_used == "subspace" and post.captured_variance == pytest.approx(1.0, abs=0.05)
    lin = _linearization(result)
    a = dense_operator(problem.operator)
    jacobian = lin.jacobian()
    aj = a @ jacobian
    theta_star = torch.cat([t.reshape(-1) for t in lin.theta])
    residual = problem.y.double().flatten() - a @ lin.output.flatten() + aj @ theta_star
    # the fitted prior (start variance 1 times the fitted scale) in the dense formulas
    covariance_prior = jacobian @ post.prior.dense().detach() @ jacobian.T
    k = a @ covariance_prior @ a.T + post.noise_variance * torch.eye(a.shape[0], dtype=F64)
    posterior = covariance_prior - covariance_prior @ a.T @ torch.linalg.solve(k, a @ covariance_prior)
    assert torch.allclose(post.std.flatten().double(), posterior.diagonal().sqrt(), rtol=1e-6)
    assert torch.allclose(post.covariance, posterior, atol=1e-8 * float(posterior.diagonal().max()))
    # the fitted scale maximises the dense evidence over the scale
    evidence = lambda scale: float(torch.distributions.MultivariateNormal(  # noqa: E731
        torch.zeros_like(residual), scale * (k - post.noise_variance * torch.eye(k.shape[0], dtype=F64))
        + post.noise_variance * torch.eye(k.shape[0], dtype=F64)).log_prob(residual))
    assert post.history[0] == pytest.approx(evidence(1.0), rel=1e-8)
    assert evidence(1.0) > max(evidence(0.9), evidence(1.1))
    # the linearised mean of the rank-n model is the dense one
    linearized = LinearizedLaplace(solver={"kind": "subspace", "subspace_rank": n},
                                   sampling={"image_noise": "none", "mean": "linearized"},
                                   progress=False).fit(result, problem)
    mean = lin.output.flatten() - jacobian @ theta_star + covariance_prior @ a.T @ torch.linalg.solve(k, residual)
    assert torch.allclose(linearized.mean.flatten().double(), mean, atol=1e-8)
    draws = post.sample(4000, seed=1)
    assert draws.shape == (4000, 1, 1, 6, 6)
    assert torch.equal(post.sample(3, seed=1), post.sample(3, seed=1))
    assert not torch.allclose(post.sample(3, seed=1), post.sample(3, seed=2))
    ratio = (draws - post.mean).pow(2).mean(dim=0).sqrt() / post.std
    assert (ratio - 1).abs().max().item() < 5 / math.sqrt(2 * 4000)
    with pytest.raises(ConfigError, match="subspace path keeps no samples"):
        _ = post.samples


def test_subspace_path_warns_when_the_rank_misses_prior_variance_and_refuses_a_hyperprior(fitted):
    problem, result = fitted
    with pytest.warns(ConvergenceWarning, match="keeps .* of the prior's pixel variance"):
        low = LinearizedLaplace(solver={"kind": "subspace", "subspace_rank": 2}, progress=False).fit(result, problem)
    assert low.captured_variance < 0.9
    with pytest.raises(ConfigError, match="takes no hyperprior"):
        LinearizedLaplace(solver="subspace", prior={"hyperprior": "tv_pred_cp"})
    with pytest.raises(ConfigError, match="subspace_rank"):
        LinearizedLaplace(solver={"kind": "subspace", "subspace_rank": 0})


def test_subspace_std_at_low_rank_is_the_rank_r_posterior_plus_the_prior_remainder(fitted):
    problem, result = fitted
    post = LinearizedLaplace(solver={"kind": "subspace", "subspace_rank": 8},
                             sampling={"image_noise": "none", "num_samples": 4000}, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # rank 8 of 36 pixels: a remainder is the point here
        post.fit(result, problem)
    lin = _linearization(result)
    a = dense_operator(problem.operator)
    jacobian = lin.jacobian()
    prior = jacobian @ post.prior.dense().detach() @ jacobian.T                      # C at the fitted scale
    basis, eigenvalues = post.subspace.basis, post.subspace.eigenvalues
    kept = (basis.T * eigenvalues) @ basis                                            # C_r, C_r <= C (Nystrom)
    noise = post.noise_variance * torch.eye(a.shape[0], dtype=F64)

    def posterior(c: torch.Tensor) -> torch.Tensor:
        return c - c @ a.T @ torch.linalg.solve(a @ c @ a.T + noise, a @ c)

    outside = torch.eye(basis.shape[1], dtype=F64) - basis.T @ basis
    expected = posterior(kept).diagonal() + (outside @ prior @ outside).diagonal()
    ratio = post.std.flatten().double().pow(2) / expected
    assert (ratio - 1).abs().max().item() < 5 * math.sqrt(2 / 4000) * 3  # Monte Carlo over the remainder
    # without the remainder the std is a lower bound of the full model's
    assert (posterior(kept).diagonal() <= posterior(prior).diagonal() + 1e-12).all()
    assert (posterior(kept).diagonal() < 0.9 * posterior(prior).diagonal()).any()


def test_settings_come_in_groups_given_as_dataclasses_or_tables():
    grouped = LinearizedLaplace("subspace", prior=PriorOptions(lengthscale=0.3), evidence={"noise": "learn"},
                                sampling=SamplingOptions(num_samples=7))
    assert grouped.solver == SolverOptions(kind="subspace")
    assert (grouped.prior_options.lengthscale, grouped.evidence.noise,
            grouped.sampling.num_samples) == (0.3, "learn", 7)
    assert LinearizedLaplace({"kind": "exact", "max_pixels": 9}).solver.max_pixels == 9
    with pytest.raises(ConfigError, match=r"evidence has no setting 'iteration' \(did you mean 'iterations'\?\)"):
        LinearizedLaplace(evidence={"iteration": 3})
    with pytest.raises(ConfigError, match=r"prior must be a PriorOptions or a table"):
        LinearizedLaplace(prior=0.1)
    with pytest.raises(ConfigError, match=r"solver\.kind must be one of"):
        LinearizedLaplace("dense")
    with pytest.raises(dataclasses.FrozenInstanceError):
        grouped.evidence.iterations = 5
