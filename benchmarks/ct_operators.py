"""Time parallel-beam CT forward + adjoint: invprior's ODL and sparse backends and deepinv's Tomography.

For each image size and batch size, prints the median time per image of one forward and one
adjoint application (after a warm-up; construction excluded and reported separately as
"build"), its ratio to the sparse backend, and each operator's adjoint mismatch
``|<Ax, y> - <x, A^T y>| / (||Ax|| ||y||)`` on random inputs, in the dtype named beside it.

    python benchmarks/ct_operators.py --sizes 64 128 256 --batches 1 8 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from invprior.operators.ct import ParallelBeamCT

Apply = Callable[[Tensor], Tensor]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def adjoint_error(forward: Apply, adjoint: Apply, domain: tuple[int, ...], dtype: torch.dtype, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *domain), generator=gen, dtype=dtype)
    ax = forward(x)
    y = torch.randn(ax.shape, generator=gen, dtype=dtype)
    return float(((ax * y).sum() - (x * adjoint(y)).sum()).abs() / (ax.norm() * y.norm()))


def build(size: int, num_angles: int) -> dict[str, tuple[Apply, Apply, float, torch.dtype, str]]:
    """name -> (forward, adjoint, build seconds, dtype of the adjoint check, its label).

    deepinv's build time is that of its float32 operator (a float64 one serves the adjoint check).
    """
    ops: dict[str, tuple[Apply, Apply, float, torch.dtype, str]] = {}
    for backend in ("odl", "sparse"):
        start = time.perf_counter()
        op = ParallelBeamCT(size=size, num_angles=num_angles, backend=backend)
        seconds = time.perf_counter() - start
        label = "float64" if backend == "sparse" else "float64 in, ASTRA float32"
        ops[backend] = (op, op.adjoint, seconds, torch.float64, label)
    try:
        from deepinv.physics import Tomography
    except ImportError:
        return ops
    # the same angles as ParallelBeamCT: midpoints of num_angles cells of [0, 180) degrees
    angles = (torch.arange(num_angles, dtype=torch.float64) + 0.5) * 180.0 / num_angles
    physics, seconds = {}, 0.0
    for dtype in (torch.float64, torch.float32):
        start = time.perf_counter()
        physics[dtype] = Tomography(angles=angles.to(dtype), img_width=size, normalize=False, dtype=dtype)
        seconds = time.perf_counter() - start

    def forward(x: Tensor) -> Tensor:
        return physics[x.dtype].A(x)

    def adjoint(y: Tensor) -> Tensor:
        return physics[y.dtype].A_adjoint(y)

    ops["deepinv"] = (forward, adjoint, seconds, torch.float64, "float64")
    return ops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--num-angles", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"parallel beam, {args.num_angles} angles over [0, pi); float32 timings, median of {args.repeats} "
          f"after a warm-up; torch threads: {torch.get_num_threads()}")
    for backend in ("odl", "sparse"):  # first construction pays one-off imports; keep it out of "build"
        ParallelBeamCT(size=8, num_angles=2, backend=backend)
    header = (f"{'size':>5} {'batch':>5} {'operator':>8} {'build s':>8} {'ms/image':>9} {'x sparse':>9}"
              f"  {'adjoint err':>11}  (dtype)")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        ops = build(size, args.num_angles)
        errors = {name: adjoint_error(fwd, adj, (1, size, size), dtype, args.seed)
                  for name, (fwd, adj, _, dtype, _) in ops.items()}
        for batch in args.batches:
            x = torch.randn((batch, 1, size, size), generator=torch.Generator().manual_seed(args.seed))
            per_image = {}
            for name, (fwd, adj, _, _, _) in ops.items():
                per_image[name] = median_seconds(lambda f=fwd, a=adj: a(f(x)), args.repeats) / batch
            for name, (_, _, seconds, _, label) in ops.items():
                ratio = per_image[name] / per_image["sparse"]
                print(f"{size:>5} {batch:>5} {name:>8} {seconds:>8.3f} {1e3 * per_image[name]:>9.3f} "
                      f"{ratio:>9.2f}  {errors[name]:>11.1e}  ({label})")
        print()


if __name__ == "__main__":
    main()
