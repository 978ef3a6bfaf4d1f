"""The EIT forward solver against pyEIT on the same meshes, side by side.

Both solve the 16-electrode adjacent protocol (every adjacent difference measured, current-carrying
electrodes included) on the same Triangle mesh of the unit disc, point electrodes on the same nodes.
Per mesh (~1k, ~5k, ~20k elements, and ~100k for invprior alone): the largest relative difference of
the voltages (pyEIT grounds one node, invprior the sum of the electrode potentials; adjacent
differences do not depend on the grounding), and the wall time (best of ``--repeat``) of

* forward: all 16 patterns (pyEIT ``solve_eit``; invprior one LU, 16 right-hand sides, CEM too),
* Jacobian: the full ``(256, E)`` matrix (pyEIT ``compute_jac``: a dense inverse and a loop over
  elements; invprior: adjoint fields for the 16 measurement patterns),
* gradient: ``J^T g`` for one data-space vector ``g`` at a new conductivity (pyEIT through its
  Jacobian; invprior a forward pass and one backward pass of the adjoint method: one extra solve
  with the stored factorisation),

with ratios pyEIT / invprior. pyEIT is optional: ``pip install pyeit``. With ``--figure`` it also
writes docs/figures/eit_inclusions.png (mesh, truth, Gauss-Newton, DIP and the mesh-free method on the
problem of examples/eit_dip.toml and examples/eit_mesh_free.toml).

    python benchmarks/eit_solver.py
    python benchmarks/eit_solver.py --meshes 1k --repeat 1 --figure
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from invprior.eit import EITModel, disc_mesh, eit_voltages

PATTERNS = 16
H_FOR = {"1k": 0.1, "5k": 0.05, "20k": 0.025, "100k": 0.011}


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def pyeit_solver(mesh, nodes):
    from pyeit.eit import protocol
    from pyeit.eit.fem import EITForward
    from pyeit.mesh import PyEITMesh
    pmesh = PyEITMesh(node=mesh.nodes.copy(), element=mesh.elements.copy(), perm=1.0, el_pos=np.asarray(nodes),
                      ref_node=int(np.setdiff1d(np.arange(len(mesh.nodes)), nodes)[0]))
    proto = protocol.create(PATTERNS, dist_exc=1, step_meas=1, parser_meas=["std", "meas_current"])
    return EITForward(pmesh, proto), proto


def row(label: str, h: float, repeat: int, with_pyeit: bool) -> dict:
    mesh = disc_mesh(h=h, electrodes=PATTERNS, refinement=1.0)
    elements = len(mesh.elements)
    sigma = 1.0 + 0.5 * np.random.default_rng(0).random(elements)
    out = {"mesh": label, "elements": elements, "nodes": len(mesh.nodes)}
    point = EITModel(mesh, electrode_model="point", exclude_driven=False, cache_size=0)
    cem = EITModel(mesh, exclude_driven=False, cache_size=0)
    out["ours_forward_s"], ours = best_time(lambda: point.voltages(sigma), repeat)
    out["ours_cem_forward_s"], _ = best_time(lambda: cem.voltages(sigma, 0.01), repeat)
    weights = np.random.default_rng(1).standard_normal((PATTERNS, PATTERNS))
    cached = EITModel(mesh, electrode_model="point", exclude_driven=False)  # keeps the LU for the backward pass
    shifts = iter(np.linspace(0.0, 0.1, repeat + 1))

    def gradient():  # a new sigma every repeat: forward (factorise, solve) + backward (one more solve)
        tensor = torch.from_numpy(sigma + next(shifts)).requires_grad_()
        (eit_voltages(cached, tensor) * torch.from_numpy(weights)).sum().backward()
        return tensor.grad.numpy().copy()
    out["ours_gradient_s"], _ = best_time(gradient, repeat)
    if elements <= 30_000:
        out["ours_jacobian_s"], ours_jac = best_time(lambda: point.jacobian(sigma), repeat)
    if with_pyeit and elements <= 30_000:
        solver, proto = pyeit_solver(mesh, point.nodes)
        # invprior's point currents inject +1 at A and -1 at B like pyEIT's ex_mat rows
        out["pyeit_forward_s"], theirs = best_time(lambda: solver.solve_eit(sigma), repeat)
        ours_pairs = np.concatenate([ours_potentials(point, sigma, proto.meas_mat[p], proto.ex_mat[p])
                                     for p in range(PATTERNS)])
        out["max_rel_diff"] = float(np.abs(ours_pairs - theirs).max() / np.abs(theirs).max())
        out["pyeit_jacobian_s"], (jac, _) = best_time(lambda: solver.compute_jac(sigma), 1)
        flat = np.concatenate([weights[p][match(proto.meas_mat[p])[0]] for p in range(PATTERNS)])
        out["pyeit_gradient_s"], _ = best_time(lambda: solver.compute_jac(sigma)[0].T @ flat,
                                               repeat if elements <= 6000 else 1)
        out["jacobian_rel_diff"] = float(np.abs(jac - reorder_jacobian(ours_jac, proto)).max() / np.abs(jac).max())
    return out


def ours_potentials(model: EITModel, sigma: np.ndarray, pairs: np.ndarray, excitation: np.ndarray) -> np.ndarray:
    """invprior's voltages ``U_m - U_n`` for pyEIT's pairs ``(m, n)`` under its excitation ``(A, B)``."""
    currents = np.zeros((PATTERNS, 1))
    currents[excitation[0], 0], currents[excitation[1], 0] = 1.0, -1.0
    single = EITModel(model.mesh, currents=currents, measurements="potentials", electrode_model="point",
                      exclude_driven=False, cache_size=0)
    potentials = single.voltages(sigma)[0]
    return potentials[pairs[:, 0]] - potentials[pairs[:, 1]]


def match(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """invprior's adjacent row and sign for each of pyEIT's pairs ``(a, b)`` (``V = U_a - U_b``): row ``m``
    is ``U_m - U_{m+1}``, so ``(m, m+1)`` is ``+row m`` and ``(m+1, m)`` is ``-row m``."""
    forward = (pairs[:, 1] - pairs[:, 0]) % PATTERNS == 1
    return np.where(forward, pairs[:, 0], pairs[:, 1]), np.where(forward, 1.0, -1.0)


def reorder_jacobian(ours: np.ndarray, proto) -> np.ndarray:
    """invprior's (P*M, E) Jacobian as pyEIT reports it: its rows and signs, and pyEIT's own sign
    convention (it returns ``r K_e f``, minus the derivative ``dV/dsigma``)."""
    blocks = ours.reshape(PATTERNS, PATTERNS, -1)
    rows = []
    for p in range(PATTERNS):
        index, sign = match(proto.meas_mat[p])
        rows.append(-sign[:, None] * blocks[p][index])
    return np.concatenate(rows)


def figure(path: Path) -> None:
    import tomllib

    from invprior.config import parse_config
    from invprior.eit.figures import eit_figure
    from invprior.experiment import build_method, build_problem
    raw = tomllib.loads(Path("examples/eit_dip.toml").read_text())
    config = parse_config(raw)
    problem = build_problem(config.problem, config.seed, dtype=torch.float64)
    mesh_free = parse_config(tomllib.loads(Path("examples/eit_mesh_free.toml").read_text())).method
    gn = build_method(config.baseline, "baseline").reconstruct(problem, progress=False)
    dip = build_method(config.method, "method").reconstruct(problem, progress=False)
    free = build_method(mesh_free, "method").reconstruct(problem, progress=False)
    from invprior.metrics import psnr
    panels = [("truth", problem.x_true)] + [(f"{r.method} ({float(psnr(r.image, problem.x_true)):.1f} dB)", r.image)
                                            for r in (gn, dip, free)]
    for r in (gn, dip, free):
        print(f"{r.method}: {float(psnr(r.image, problem.x_true)):.2f} dB, {r.wall_time:.1f} s, "
              f"{r.iterations} iterations")
    eit_figure(path, problem.operator, panels, title="EIT, 16 electrodes (CEM), 1 % noise, examples/eit_dip.toml")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meshes", nargs="+", default=list(H_FOR), choices=list(H_FOR))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--figure", action="store_true")
    args = parser.parse_args()
    with_pyeit = importlib.util.find_spec("pyeit") is not None
    if not with_pyeit:
        print("pyEIT is not installed (pip install pyeit): invprior's timings only")
    print(f"torch threads {torch.get_num_threads()}")
    print("| mesh | elements | max rel. diff V | ours fwd s (CEM) | pyEIT fwd s | fwd ratio | ours Jacobian s "
          "| pyEIT Jacobian s | ratio | ours gradient s | pyEIT gradient s | gradient ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label in args.meshes:
        r = row(label, H_FOR[label], args.repeat, with_pyeit)

        def ratio(a: str, b: str) -> str:
            return f"{r[a] / r[b]:.1f}x" if a in r and b in r else "-"

        def value(key: str, fmt: str = ".3f") -> str:
            return format(r[key], fmt) if key in r else "-"
        print(f"| {label} | {r['elements']} | {value('max_rel_diff', '.1e')} | {r['ours_forward_s']:.3f} "
              f"({r['ours_cem_forward_s']:.3f}) | {value('pyeit_forward_s')} "
              f"| {ratio('pyeit_forward_s', 'ours_forward_s')} "
              f"| {value('ours_jacobian_s')} | {value('pyeit_jacobian_s')} "
              f"| {ratio('pyeit_jacobian_s', 'ours_jacobian_s')} "
              f"| {r['ours_gradient_s']:.3f} | {value('pyeit_gradient_s')} "
              f"| {ratio('pyeit_gradient_s', 'ours_gradient_s')} |",
              flush=True)
        if "jacobian_rel_diff" in r:
            print(f"  Jacobians agree to {r['jacobian_rel_diff']:.1e} (relative to the largest entry)")
    if args.figure:
        figure(Path("docs/figures/eit_inclusions.png"))


if __name__ == "__main__":
    main()
