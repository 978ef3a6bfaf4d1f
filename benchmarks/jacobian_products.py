"""Cost of the Jacobian products lin-DIP is made of, against re-running the network per product.

``Linearization`` runs the forward pass at ``theta*`` once and keeps its pullback (``vjp``) and its
traced tangent map (``linearize``), and differentiates GroupNorm with its own tangent rule
(``LeanGroupNorm``). The baseline is the direct ``torch.func`` route, which re-runs the forward
pass inside every ``jvp``/``vjp`` call with torch's rule for every layer; in between, the kept
forward pass with torch's GroupNorm rule (``lean_norms=False``). All three are timed side by side,
interleaved, on the demo's U-Net (3 scales, 32 channels, 32 input channels) for batches of
weight/image vectors, and their results are compared.

    python benchmarks/jacobian_products.py --size 128 --batch 8 --repeats 9
    python benchmarks/jacobian_products.py --size 128 --batch 8 --repeats 9 --reuse-freed-memory
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.func import jvp, vjp, vmap

from invprior.allocator import reuse_freed_memory
from invprior.generators.unet import UNet
from invprior.posterior.linearization import Linearization


def direct_products(lin: Linearization) -> tuple[Callable, Callable]:
    """``J v`` and ``J^T u`` for batches by ``torch.func.jvp``/``vjp``, re-running the network every call."""
    def one_jvp(v: torch.Tensor) -> torch.Tensor:
        return jvp(lin._apply, (lin.theta,), (lin.split(v),))[1]

    def one_vjp(u: torch.Tensor) -> torch.Tensor:
        _, pullback = vjp(lin._apply, lin.theta)
        return torch.cat([g.reshape(-1) for g in pullback(u)[0]])

    return (lambda v: vmap(one_jvp)(v).flatten(0, 1)), (lambda u: vmap(one_vjp)(u.unsqueeze(1)))


def interleaved_seconds(routes: dict[str, Callable], argument: torch.Tensor, repeats: int
                        ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median seconds per call of each route, the routes taking turns (so that drifts in machine load hit all
    alike), and each route's result."""
    with torch.no_grad():
        results = {name: apply(argument) for name, apply in routes.items()}     # warm-up
        times: dict[str, list[float]] = {name: [] for name in routes}
        for _ in range(repeats):
            for name, apply in routes.items():
                start = time.perf_counter()
                apply(argument)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--reuse-freed-memory", action="store_true",
                        help="let the C heap keep freed memory first (invprior.allocator); run with and without it")
    args = parser.parse_args()
    reused = args.reuse_freed_memory and reuse_freed_memory()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    network = UNet(preset="small", input_channels=32).to(dtype).eval()
    z = torch.randn(1, 32, args.size, args.size, dtype=dtype)
    lin = Linearization(network, z)
    plain = Linearization(network, z, lean_norms=False)
    v = torch.randn(args.batch, lin.num_parameters, dtype=dtype)
    u = torch.randn(args.batch, *lin.output.shape[1:], dtype=dtype)
    direct_jvps, direct_vjps = direct_products(plain)
    print(f"{args.size}x{args.size}, {lin.num_parameters} weights, batches of {args.batch}, {args.dtype}, "
          f"{torch.get_num_threads()} threads, {'heap keeps freed memory' if reused else 'glibc allocator defaults'}; "
          f"ms per batch, median of {args.repeats} interleaved repeats")
    total = {"direct": 0.0, "kept": 0.0, "lean": 0.0}
    for name, argument, routes in [("J v", v, {"direct": direct_jvps, "kept": plain.jvps, "lean": lin.jvps}),
                                   ("J^T u", u, {"direct": direct_vjps, "kept": plain.vjps, "lean": lin.vjps})]:
        times, results = interleaved_seconds(routes, argument, args.repeats)
        for route in total:
            total[route] += times[route]
        difference = max(float((results[r] - results["direct"]).norm() / results["direct"].norm()) for r in routes)
        print(f"{name:6s} direct {times['direct'] * 1e3:7.1f}  kept {times['kept'] * 1e3:7.1f}  "
              f"kept + lean norms {times['lean'] * 1e3:7.1f}  speed-ups {times['direct'] / times['kept']:.2f}x, "
              f"{times['kept'] / times['lean']:.2f}x  largest relative difference {difference:.1e}")
    print(f"K product (one of each): kept {total['direct'] / total['kept']:.2f}x over direct, "
          f"lean norms {total['kept'] / total['lean']:.2f}x over kept, {total['direct'] / total['lean']:.2f}x in all")


if __name__ == "__main__":
    main()
