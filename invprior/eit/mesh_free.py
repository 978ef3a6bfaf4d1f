"""Mesh-free unsupervised EIT in the spirit of Bar & Sochen (SIAM J. Imaging Sci. 2021): coordinate
networks for the potentials and the conductivity, trained on the PDE and the boundary data, no mesh.

On the disc of radius ``R`` (``xi = x / R``), with one output per current pattern ``p``:

    potential       v_p   = u0_p + MLP_v(xi)_p
    stream function psi_p = psi0_p + (1 - |xi|^2) MLP_psi(xi)_p,   current J_p = (d_y psi_p, -d_x psi_p)
    conductivity    sigma = background * exp(MLP_s(xi))

``u0 + i psi0 / background`` is analytic: the least-squares complete-electrode-model (CEM) solution at
the background conductivity in ``K`` harmonics ``Re xi^k, Im xi^k``. ``J`` is divergence-free by
construction and keeps the background's boundary flux ``J.n`` (the injected currents under the
electrodes, none between them). ``div(sigma grad v) = 0`` is trained in first-order form,
``J = sigma grad v``, through the Kohn-Vogelius energy

    E = sum_p int |J_p - sigma grad v_p|^2 / sigma dx  >= 0,   = 0 iff J_p = sigma grad v_p,

estimated on points drawn afresh every step, plus the CEM condition on each electrode
(``v + z_l J.n`` constant along electrode ``l``; its mean is the electrode potential ``U_l``), the
data term ``||Q U - y||^2``, the known conductivity on the boundary (``log sigma = log background``)
and TV of ``log sigma``. The energy, electrode and data terms are normalised by their background
scales (``int sigma_0 |grad u0|^2``, the largest current over ``sigma_0``, ``||y||^2``). The networks' derivatives
in ``x`` are forward-mode (``torch.func.jvp``), the harmonics' analytic. The image is
``log(sigma / background)`` at the pixel centres, in the operator's parametrisation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from invprior.core.interfaces import Method
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError
from invprior.methods.base import quality, seeded_global_rng
from invprior.validation import positive_int, real

__all__ = ["MeshFreeEIT", "harmonic_features", "harmonic_conjugate"]

TERMS = ("energy", "robin", "data", "known_boundary", "tv")


def harmonic_features(xi: Tensor, degree: int) -> tuple[Tensor, Tensor]:
    """``F = [1, Re xi^k, Im xi^k]_{k=1..K}`` at points ``xi`` (N, 2) and its gradient ``(N, 2K+1, 2)``:
    ``grad Re xi^k = (Re, -Im)(k xi^(k-1))``, ``grad Im xi^k = (Im, Re)(k xi^(k-1))``."""
    w = torch.complex(xi[:, 0], xi[:, 1])[:, None]
    k = torch.arange(1, degree + 1, device=xi.device)
    powers, slopes = w ** k, k * w ** (k - 1)                                # (N, K)
    ones = torch.ones(len(xi), 1, dtype=xi.dtype, device=xi.device)
    zeros = torch.zeros(len(xi), 1, 2, dtype=xi.dtype, device=xi.device)
    grad_re = torch.stack([slopes.real, -slopes.imag], dim=-1)
    grad_im = torch.stack([slopes.imag, slopes.real], dim=-1)
    return torch.cat([ones, powers.real, powers.imag], dim=1), torch.cat([zeros, grad_re, grad_im], dim=1)


def harmonic_conjugate(coefficients: Tensor) -> Tensor:
    """Coefficients of the harmonic conjugate: ``u = a_0 + sum a_k Re xi^k + b_k Im xi^k`` is ``Re f`` for
    ``f = a_0 + sum (a_k - i b_k) xi^k``, whose ``Im f = sum a_k Im xi^k - b_k Re xi^k`` (rows as in
    ``harmonic_features``)."""
    degree = (coefficients.shape[0] - 1) // 2
    real_part, imag_part = coefficients[1:1 + degree], coefficients[1 + degree:]
    return torch.cat([torch.zeros_like(coefficients[:1]), -imag_part, real_part])


def _mlp(out: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(2, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    last = nn.Linear(width, out)
    nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)   # starts at zero: the background solution
    return nn.Sequential(*layers, last)


def _with_gradient(net: Callable[[Tensor], Tensor], xi: Tensor) -> tuple[Tensor, Tensor]:
    """``net(xi)`` (N, C) and its gradient in ``xi`` (N, C, 2), forward mode."""
    axes = [torch.zeros_like(xi).index_fill_(1, torch.tensor([k], device=xi.device), 1.0) for k in range(2)]
    values, slopes = zip(*(torch.func.jvp(net, (xi,), (e,)) for e in axes))
    return values[0], torch.stack(slopes, dim=-1)


class MeshFreeEIT(Method):
    """The mesh-free method (registry name ``eit_mesh_free``) for an ``eit`` problem on a disc (CEM).

    ``degree`` harmonics ``K`` for the background solution; at most ``iterations`` Adam steps at ``lr`` for
    the potential and current networks and ``sigma_lr`` for the conductivity network (both halved at 60 %
    and 85 %), with ``interior`` points drawn anew each step (seeded), ``boundary`` points per gap and
    ``quadrature`` fixed midpoints per electrode; ``weights`` overrides the loss weights (keys ``energy``,
    ``robin``, ``data``, ``known_boundary``, ``tv``) and ``energy_growth`` multiplies the energy weight
    geometrically up to that factor over the run (1: constant). The three networks are tanh MLPs of
    ``depth`` hidden layers of ``width``, initialised from ``seed`` with a zero last layer. With ``tau > 0``
    and a known noise level it stops when the data misfit and the energy both reach the noise
    (``||Q U - y|| <= tau * noise`` and ``E / E0 <= (tau * noise / ||y||)^2``, the discrepancy principle on
    both). The trace logs loss, misfit, energy, residual and PSNR every ``log_every`` steps and at the end.
    """

    name = "eit_mesh_free"
    default_weights = {"energy": 1.0, "robin": 1.0, "data": 1.0, "known_boundary": 1.0, "tv": 1e-4}

    def __init__(self, iterations: int = 1000, lr: float = 2e-3, sigma_lr: float = 1e-2, degree: int = 128,
                 width: int = 64, depth: int = 3, interior: int = 1024, boundary: int = 16, quadrature: int = 32,
                 weights: dict[str, float] | None = None, energy_growth: float = 1.0, tau: float = 1.0,
                 seed: int = 0, log_every: int = 50) -> None:
        self.iterations = positive_int(iterations, f"{self.name}: iterations")
        self.lr = real(lr, f"{self.name}: lr", minimum=0.0, strict=True)
        self.sigma_lr = real(sigma_lr, f"{self.name}: sigma_lr", minimum=0.0, strict=True)
        self.degree = positive_int(degree, f"{self.name}: degree")
        self.width, self.depth = positive_int(width, f"{self.name}: width"), positive_int(depth, f"{self.name}: depth")
        self.interior = positive_int(interior, f"{self.name}: interior")
        self.boundary = positive_int(boundary, f"{self.name}: boundary")
        self.quadrature = positive_int(quadrature, f"{self.name}: quadrature")
        unknown = set(weights or {}) - set(TERMS)
        if unknown:
            raise ConfigError(f"{self.name}: unknown loss weights {sorted(unknown)}; known: {list(TERMS)}")
        merged = {**self.default_weights, **(weights or {})}
        self.weights = {k: real(v, f"{self.name}: weights.{k}", minimum=0.0) for k, v in merged.items()}
        self.energy_growth = real(energy_growth, f"{self.name}: energy_growth", minimum=1.0)
        self.tau = real(tau, f"{self.name}: tau", minimum=0.0)
        self.seed, self.log_every = int(seed), positive_int(log_every, f"{self.name}: log_every")

    # -- geometry and the background solution --------------------------------------------------
    @staticmethod
    def _arcs(operator) -> tuple[float, list[tuple[float, float]]]:
        """Disc radius and electrode arcs ``(start angle, length in radians)``, counter-clockwise."""
        from invprior.eit.phantoms import _electrode_arcs, disc_radius
        mesh = operator.mesh
        radius = disc_radius(mesh, "eit_mesh_free")
        arcs = [(2 * math.pi * t0, 2 * math.pi * ((t1 - t0) % 1.0)) for t0, t1 in _electrode_arcs(mesh)]
        return radius, arcs

    @staticmethod
    def _midpoints(arcs: list[tuple[float, float]], count: int) -> Tensor:
        """``count`` midpoint-rule angles per arc, (len(arcs), count)."""
        fractions = (torch.arange(count, dtype=torch.float64) + 0.5) / count
        return torch.stack([a0 + length * fractions for a0, length in arcs])

    def _background_coefficients(self, arcs, gaps, radius: float, z: Tensor, currents: Tensor,
                                 background: float) -> Tensor:
        """Least-squares CEM solution at ``sigma = background`` in the harmonic basis: ``(2K+1, P)``.

        Unknowns: the coefficients and the electrode potentials. Rows (midpoint rule, each scaled by
        the square root of its arc length): ``u + z sigma du/dn - U_l = 0`` on the electrodes,
        ``sigma du/dn = 0`` on the gaps, ``int_{e_l} sigma du/dn = I_l`` and ``sum_l U_l = 0``."""
        count = 4 * self.quadrature
        electrodes, patterns = currents.shape
        n_coef = 2 * self.degree + 1
        rows, rhs = [], []
        for electrode, angles in enumerate(self._midpoints(arcs, count)):
            xi = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
            features, grad = harmonic_features(xi, self.degree)
            flux = background * (grad * xi[:, None, :]).sum(-1) / radius          # sigma du/dn per coefficient
            step = math.sqrt(radius * arcs[electrode][1] / count)
            robin = torch.zeros(count, n_coef + electrodes, dtype=torch.float64)
            robin[:, :n_coef], robin[:, n_coef + electrode] = step * (features + z[electrode] * flux), -step
            total = torch.zeros(1, n_coef + electrodes, dtype=torch.float64)
            total[0, :n_coef] = flux.mean(dim=0) * radius * arcs[electrode][1]
            rows += [robin, total]
            rhs += [torch.zeros(count, patterns, dtype=torch.float64), currents[electrode:electrode + 1]]
        for angles, (_, length) in zip(self._midpoints(gaps, count), gaps):
            xi = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
            _, grad = harmonic_features(xi, self.degree)
            gap = torch.zeros(count, n_coef + electrodes, dtype=torch.float64)
            gap[:, :n_coef] = math.sqrt(radius * length / count) * background * (grad * xi[:, None, :]).sum(-1) / radius
            rows.append(gap)
            rhs.append(torch.zeros(count, patterns, dtype=torch.float64))
        ground = torch.zeros(1, n_coef + electrodes, dtype=torch.float64)
        ground[0, n_coef:] = 1.0
        rows.append(ground)
        rhs.append(torch.zeros(1, patterns, dtype=torch.float64))
        solution = torch.linalg.lstsq(torch.cat(rows), torch.cat(rhs), driver="gelsd").solution
        return solution[:n_coef]

    # -- reconstruction -------------------------------------------------------------------------
    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        start = time.perf_counter()
        operator = problem.operator
        if not (hasattr(operator, "model") and hasattr(operator, "mesh") and hasattr(operator, "contact_impedance")):
            raise ConfigError(f"{self.name} needs an 'eit' operator, got {operator.name}")
        if operator.model.electrode_model != "cem":
            raise ConfigError(f"{self.name}: needs the complete electrode model (electrode_model='cem')")
        if problem.batch_size != 1:
            raise ConfigError(f"{self.name}: reconstruct one measurement at a time (problem.select(b))")
        model, dtype = operator.model, torch.float64
        radius, arcs = self._arcs(operator)
        around = sorted(arcs)                        # gaps between neighbours on the circle, whatever the numbering
        gaps = [(a0 + length, (around[(k + 1) % len(around)][0] - a0 - length) % (2 * math.pi))
                for k, (a0, length) in enumerate(around)]
        currents = torch.from_numpy(model.currents).to(dtype)                      # (L, P)
        measure = torch.from_numpy(model.measurements).to(dtype)                   # (M, L)
        z = operator.contact_impedance.detach().to("cpu", dtype)                   # (L,)
        background = float(getattr(operator, "background", 1.0))
        mask, y = self._frame(operator, problem, background, z)                    # (P, M) each
        electrodes, patterns = currents.shape
        potential_scale = float(currents.abs().max()) / background                 # a typical potential
        noise = None
        if isinstance(problem.noise_std, Tensor) and self.tau > 0:
            noise = self.tau * float(problem.noise_std[0]) * math.sqrt(float(mask.sum()))

        coefficients = self._background_coefficients(arcs, gaps, radius, z, currents, background)  # fixed
        stream = background * harmonic_conjugate(coefficients)
        gen = torch.Generator().manual_seed(self.seed)
        with seeded_global_rng(self.seed, torch.device("cpu")):
            v_net, psi_net, s_net = (_mlp(patterns, self.width, self.depth).to(dtype),
                                     _mlp(patterns, self.width, self.depth).to(dtype),
                                     _mlp(1, self.width, self.depth).to(dtype))

        def fields(points: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
            """v (N, P), grad v (N, P, 2), J (N, P, 2), s = log(sigma / background) (N,), grad s (N, 2)."""
            xi = points / radius
            features, grad_features = harmonic_features(xi, self.degree)
            mv, dmv = _with_gradient(v_net, xi)
            mp, dmp = _with_gradient(psi_net, xi)
            s, ds = _with_gradient(s_net, xi)
            bump = (1.0 - xi.pow(2).sum(dim=1))[:, None]
            v = features @ coefficients + mv
            grad_v = (torch.einsum("nkd,kp->npd", grad_features, coefficients) + dmv) / radius
            grad_psi = (torch.einsum("nkd,kp->npd", grad_features, stream) + bump[..., None] * dmp
                        - 2.0 * mp[..., None] * xi[:, None, :]) / radius
            current = torch.stack([grad_psi[..., 1], -grad_psi[..., 0]], dim=-1)
            return v, grad_v, current, s[:, 0], ds[:, 0] / radius

        def energy_density(grad_v: Tensor, current: Tensor, s: Tensor) -> Tensor:
            """``sum_p |J_p - sigma grad v_p|^2 / sigma`` per point."""
            sigma = background * torch.exp(s)[:, None, None]
            return ((current - sigma * grad_v).pow(2) / sigma).sum(dim=(1, 2))

        area = math.pi * radius ** 2
        with torch.no_grad():   # the background's energy int sigma |grad u0|^2, the scale of E
            check = radius * torch.sqrt(torch.rand(4 * self.interior, generator=gen, dtype=dtype))[:, None]
            angle = 2 * math.pi * torch.rand(4 * self.interior, generator=gen, dtype=dtype)[:, None]
            _, grad_v0, _, _, _ = fields(torch.cat([check * torch.cos(angle), check * torch.sin(angle)], dim=1))
            energy_scale = area * background * float(grad_v0.pow(2).sum(dim=(1, 2)).mean())
        quadrature = self._midpoints(arcs, self.quadrature).reshape(-1)
        on_electrodes = radius * torch.stack([torch.cos(quadrature), torch.sin(quadrature)], dim=1)
        normals = on_electrodes / radius

        def losses() -> tuple[dict[str, Tensor], Tensor]:
            r = radius * torch.sqrt(torch.rand(self.interior, generator=gen, dtype=dtype))
            theta = 2 * math.pi * torch.rand(self.interior, generator=gen, dtype=dtype)
            inside = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
            _, grad_v, current, s_inside, grad_s = fields(inside)
            terms = {"energy": area * energy_density(grad_v, current, s_inside).mean() / energy_scale,
                     "tv": grad_s.norm(dim=-1).mean() * radius}
            angles = torch.cat([a0 + length * torch.rand(self.boundary, generator=gen, dtype=dtype)
                                for a0, length in gaps])
            on_gaps = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
            v_e, _, current_e, s_e, _ = fields(on_electrodes)
            flux = (current_e * normals[:, None, :]).sum(-1)                          # J.n, (N, P)
            robin = (v_e + z.repeat_interleave(self.quadrature)[:, None] * flux).view(
                electrodes, self.quadrature, patterns)
            potentials = robin.mean(dim=1)                                            # U_l, (L, P)
            terms["robin"] = (robin - potentials[:, None, :]).pow(2).mean() / potential_scale ** 2
            terms["known_boundary"] = torch.cat([s_e, s_net(on_gaps / radius)[:, 0]]).pow(2).mean()
            misfit = ((measure @ potentials).T * mask - y).pow(2).sum()
            terms["data"] = misfit / y.pow(2).sum()
            return terms, misfit.sqrt()

        optimizer = torch.optim.Adam([{"params": [*v_net.parameters(), *psi_net.parameters()], "lr": self.lr},
                                      {"params": s_net.parameters(), "lr": self.sigma_lr}])
        schedule = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, [int(0.6 * self.iterations), int(0.85 * self.iterations)], 0.5)
        trace: dict[str, list[float]] = {"iteration": [], "loss": [], "data_misfit": [], "energy": []}
        stop_reason, steps = f"{self.iterations} iterations", self.iterations
        target = None if noise is None else (noise, (noise / float(y.norm())) ** 2)
        bar = tqdm(range(self.iterations + 1), desc=self.name, disable=not progress, leave=False)
        for step in bar:   # the last pass only evaluates the final state
            terms, misfit = losses()
            growth = self.energy_growth ** (min(step, self.iterations - 1) / max(self.iterations - 1, 1))
            loss = sum((self.weights[k] * v * (growth if k == "energy" else 1.0) for k, v in terms.items()),
                       torch.zeros((), dtype=dtype))
            reached = target is not None and float(misfit) <= target[0] and float(terms["energy"]) <= target[1]
            if step % self.log_every == 0 or step == self.iterations or reached:
                trace["iteration"].append(step)
                trace["loss"].append(float(loss.detach()))
                trace["data_misfit"].append(float(terms["data"].detach()) ** 0.5)
                trace["energy"].append(float(terms["energy"].detach()))
                for key, value in quality(self._image(s_net, operator, radius).to(problem.y), problem).items():
                    trace.setdefault(key, []).append(value)
                bar.set_postfix(misfit=f"{trace['data_misfit'][-1]:.3g}", energy=f"{trace['energy'][-1]:.3g}")
            if reached:
                assert target is not None  # reached needs a target
                stop_reason, steps = (f"discrepancy: misfit {float(misfit):.3g} <= tau * noise {target[0]:.3g} "
                                      f"and energy {float(terms['energy']):.3g} <= {target[1]:.3g}"), step
                break
            if step == self.iterations:
                break
            if not torch.isfinite(loss):
                raise ConfigError(f"{self.name}: the loss became non-finite at step {step + 1} (lower lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        image = self._image(s_net, operator, radius).to(problem.y)
        settings = ("iterations", "lr", "sigma_lr", "degree", "width", "depth", "interior", "boundary", "quadrature",
                    "weights", "energy_growth", "tau", "seed")
        return Reconstruction(image, self.name, params={key: getattr(self, key) for key in settings},
                              trace=trace, iterations=steps, stop_reason=stop_reason,
                              wall_time=time.perf_counter() - start)

    @staticmethod
    def _frame(operator, problem: InverseProblem, background: float, z: Tensor) -> tuple[Tensor, Tensor]:
        """The mask of the voltages the data hold and the data as a full ``(P, M)`` frame: an operator with
        ``channels`` holds only those; difference data ``y - y_ref`` become ``y - y_ref + V(background)``, the
        absolute data the calibrated model would give."""
        model, dtype = operator.model, torch.float64
        mask = torch.from_numpy(model.mask).to(dtype)
        y = problem.y[0].detach().to("cpu", dtype)
        if operator.channels is not None:
            measured = operator.channels.view(mask.shape)
            frame = torch.zeros(mask.shape, dtype=dtype)
            frame[measured] = y
            mask, y = mask * measured, frame
        if operator.difference:
            sigma = np.full(len(operator.mesh.elements), background)
            y = y + torch.from_numpy(model.voltages(sigma, z.numpy()))
        return mask, y * mask

    @staticmethod
    def _image(s_net: nn.Module, operator, radius: float) -> Tensor:
        """``log(sigma / background)`` at the pixel centres (0 outside the disc), in the operator's parametrisation."""
        xs, ys = operator.to_mesh.pixel_centres()
        grid = torch.from_numpy(np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2))
        with torch.no_grad():   # sigma lives on the disc: the background outside it
            log_ratio = torch.where(grid.norm(dim=1) <= radius, s_net(grid / radius)[:, 0], 0.0)
            log_ratio = log_ratio.view(1, 1, operator.size, operator.size)
        return operator.parameter(operator.background * torch.exp(log_ratio))
