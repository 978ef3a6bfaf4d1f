"""Mesh-free unsupervised EIT in the spirit of Bar & Sochen (SIAM J. Imaging Sci. 2021).

Two coordinate networks on the disc: ``u(x) in R^P`` (one potential per current pattern) and
``sigma(x) = background * exp(s(x))``. They are trained together, on points drawn afresh every
step, to make ``div(sigma grad u_p) = sigma lap u_p + grad sigma . grad u_p`` vanish inside, to carry
the injected current density ``sigma du_p/dn = I_lp / |e_l|`` on electrode ``l`` (zero between
electrodes), to reproduce the measured voltages from the electrode potentials
``U_lp = mean_{e_l} u_p + z_l I_lp / |e_l|`` (the contact drop of a uniform current) and to keep
``mean_boundary u_p = 0`` (grounding). No mesh is used; the derivatives in ``x`` are forward-mode
(``torch.func.jvp``, nested for the Laplacian), the training gradient reverse-mode through them.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError
from invprior.methods.base import Method, quality
from invprior.validation import positive_int, real

__all__ = ["MeshFreeEIT"]


def _mlp(out: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(2, width), nn.Tanh()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, out))


class MeshFreeEIT(Method):
    """The mesh-free method (registry name ``eit_mesh_free``) for an ``eit`` problem on a disc.

    ``iterations`` Adam steps at ``lr`` with ``interior`` collocation points and ``boundary`` points
    per electrode and per gap, drawn anew each step (seeded); loss weights ``pde``, ``neumann``,
    ``data`` (relative misfit of the voltages) and ``ground``. The image is ``log(sigma /
    background)`` at the pixel centres, mapped to the operator's parametrisation.
    """

    name = "eit_mesh_free"

    def __init__(self, iterations: int = 3000, lr: float = 1e-3, width: int = 64, depth: int = 3,
                 interior: int = 512, boundary: int = 16, pde: float = 1.0, neumann: float = 1.0,
                 data: float = 100.0, ground: float = 1.0, seed: int = 0, log_every: int = 50) -> None:
        self.iterations = positive_int(iterations, f"{self.name}: iterations")
        self.lr = real(lr, f"{self.name}: lr", minimum=0.0, strict=True)
        self.width, self.depth = positive_int(width, f"{self.name}: width"), positive_int(depth, f"{self.name}: depth")
        self.interior = positive_int(interior, f"{self.name}: interior")
        self.boundary = positive_int(boundary, f"{self.name}: boundary")
        self.weights = {k: real(v, f"{self.name}: {k}", minimum=0.0) for k, v in
                        (("pde", pde), ("neumann", neumann), ("data", data), ("ground", ground))}
        self.seed, self.log_every = int(seed), positive_int(log_every, f"{self.name}: log_every")

    # -- geometry of the electrodes -------------------------------------------------------
    @staticmethod
    def _arcs(operator) -> tuple[float, list[tuple[float, float]]]:
        """Disc radius and electrode arcs ``(start angle, length in radians)``, counter-clockwise."""
        from invprior.eit.phantoms import _electrode_arcs
        mesh = operator.mesh
        radius = float(np.linalg.norm(mesh.nodes, axis=1).max())
        if not np.allclose(np.linalg.norm(mesh.nodes[np.unique(mesh.boundary)], axis=1), radius, rtol=1e-9):
            raise ConfigError("eit_mesh_free: the operator's mesh must be a disc centred at the origin")
        arcs = [(2 * math.pi * t0, 2 * math.pi * ((t1 - t0) % 1.0)) for t0, t1 in _electrode_arcs(mesh)]
        return radius, arcs

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        start = time.perf_counter()
        operator = problem.operator
        if not hasattr(operator, "model") or not hasattr(operator, "mesh"):
            raise ConfigError(f"{self.name} needs an 'eit' operator, got {operator.name}")
        if problem.batch_size != 1:
            raise ConfigError(f"{self.name}: reconstruct one measurement at a time (problem.select(b))")
        model = operator.model
        dtype = torch.float64
        radius, arcs = self._arcs(operator)
        currents = torch.from_numpy(model.currents).to(dtype)                      # (L, P)
        measure = torch.from_numpy(model.measurements).to(dtype)                   # (M, L)
        mask = torch.from_numpy(model.mask).to(dtype)                              # (P, M)
        z = operator.contact_impedance.to(dtype)                                    # (L,)
        lengths = torch.tensor([radius * a[1] for a in arcs], dtype=dtype)
        density = currents / lengths[:, None]                                       # (L, P) current per length
        y = problem.y[0].detach().to(dtype)
        scale = float((y * mask).norm()) or 1.0
        background = float(getattr(operator, "background", 1.0))
        patterns = currents.shape[1]

        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            u_net, s_net = _mlp(patterns, self.width, self.depth).to(dtype), _mlp(1, self.width, self.depth).to(dtype)
        parameters = [*u_net.parameters(), *s_net.parameters()]
        optimizer = torch.optim.Adam(parameters, lr=self.lr)

        def fields(points: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
            """u (N, P), grad u (N, P, 2), lap u (N, P), sigma (N,), grad sigma (N, 2), by forward-mode
            derivatives along the two axes (the networks act point by point, so one jvp serves all points)."""
            def u_of(p: Tensor) -> Tensor:
                return u_net(p / radius)

            def s_of(p: Tensor) -> Tensor:
                return s_net(p / radius)[:, 0]
            axes = [torch.zeros_like(points).index_fill_(1, torch.tensor([k]), 1.0) for k in range(2)]
            u, du = zip(*(torch.func.jvp(u_of, (points,), (e,)) for e in axes))
            lap = sum(torch.func.jvp(lambda q, e=e: torch.func.jvp(u_of, (q,), (e,))[1], (points,), (e,))[1]
                      for e in axes)
            s, ds = zip(*(torch.func.jvp(s_of, (points,), (e,)) for e in axes))
            sigma = background * torch.exp(s[0])
            return u[0], torch.stack(du, dim=-1), lap, sigma, sigma[:, None] * torch.stack(ds, dim=-1)

        def boundary_points(count: int, arcs_: list[tuple[float, float]]) -> tuple[Tensor, Tensor]:
            angles = torch.cat([a0 + length * torch.rand(count, generator=gen, dtype=dtype) for a0, length in arcs_])
            return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1), angles
        gaps = [(a0 + length, (arcs[(k + 1) % len(arcs)][0] - a0 - length) % (2 * math.pi))
                for k, (a0, length) in enumerate(arcs)]

        trace: dict[str, list[float]] = {"iteration": [], "loss": []}
        bar = tqdm(range(self.iterations), desc=self.name, disable=not progress, leave=False)
        for step in bar:
            r = radius * torch.sqrt(torch.rand(self.interior, generator=gen, dtype=dtype))
            theta = 2 * math.pi * torch.rand(self.interior, generator=gen, dtype=dtype)
            inside = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
            _, grad_u, lap_u, sigma, grad_sigma = fields(inside)
            residual = sigma[:, None] * lap_u + (grad_sigma[:, None, :] * grad_u).sum(-1)
            pde = residual.pow(2).mean()

            on_electrodes, _ = boundary_points(self.boundary, arcs)
            on_gaps, _ = boundary_points(self.boundary, gaps)
            points = torch.cat([on_electrodes, on_gaps])
            u_b, grad_b, _, sigma_b, _ = fields(points)
            normal = points / radius
            flux = sigma_b[:, None] * (grad_b * normal[:, None, :]).sum(-1)          # (N, P)
            wanted = torch.cat([density.repeat_interleave(self.boundary, dim=0),
                                torch.zeros(len(on_gaps), patterns, dtype=dtype)])
            neumann = (flux - wanted).pow(2).mean() / density.pow(2).mean()
            electrode_u = u_b[: len(on_electrodes)].view(len(arcs), self.boundary, patterns).mean(dim=1)  # (L, P)
            potentials = electrode_u + z[:, None] * density                         # U = u + z sigma du/dn
            predicted = (measure @ potentials).T * mask                              # (P, M)
            data = ((predicted - y) * mask).pow(2).sum() / scale ** 2
            ground = u_b.mean(dim=0).pow(2).mean() / density.pow(2).mean()
            loss = (self.weights["pde"] * pde / density.pow(2).mean() + self.weights["neumann"] * neumann
                    + self.weights["data"] * data + self.weights["ground"] * ground)
            if not torch.isfinite(loss):
                raise ConfigError(f"{self.name}: the loss became non-finite at step {step + 1} (lower lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % self.log_every == 0 or step == self.iterations - 1:
                trace["iteration"].append(step + 1)
                trace["loss"].append(float(loss.detach()))
                trace.setdefault("data_misfit", []).append(float(data.detach()) ** 0.5)
                bar.set_postfix(loss=f"{trace['loss'][-1]:.3g}", misfit=f"{trace['data_misfit'][-1]:.3g}")
        image = self._image(s_net, operator, radius).to(problem.y.dtype)
        for key, value in quality(image, problem).items():
            trace[key] = [value]
        return Reconstruction(image, self.name, params={"iterations": self.iterations, "lr": self.lr},
                              trace=trace, iterations=self.iterations, stop_reason=f"{self.iterations} iterations",
                              wall_time=time.perf_counter() - start)

    @staticmethod
    def _image(s_net: nn.Module, operator, radius: float) -> Tensor:
        """``log(sigma / background)`` at the pixel centres, in the operator's parametrisation."""
        xs, ys = operator.to_mesh.pixel_centres()
        grid = torch.from_numpy(np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2))
        with torch.no_grad():
            log_ratio = s_net(grid / radius)[:, 0].view(1, 1, operator.size, operator.size)
        if operator.parametrization == "exp":
            return log_ratio
        sigma = operator.background * torch.exp(log_ratio)
        if operator.parametrization == "softplus":
            return torch.log(torch.expm1(sigma / operator.background * math.log(2.0)))
        return sigma
