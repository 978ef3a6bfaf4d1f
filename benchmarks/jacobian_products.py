"""Cost of the Jacobian products lin-DIP is made of, against re-running the network per product.

``Linearization`` runs the forward pass at ``theta*`` once and keeps its pullback (``vjp``) and its
traced tangent map (``linearize``). The baseline is the direct ``torch.func`` route, which re-runs
the forward pass inside every ``jvp``/``vjp`` call. Both are timed side by side on the demo's U-Net
(3 scales, 32 channels, 32 input channels) for batches of weight/image vectors, and their results
are compared.

    python benchmarks/jacobian_products.py --size 128 --batch 8 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.func import jvp, vjp, vmap

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


def seconds(apply: Callable, argument: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        result = apply(argument)                      # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            apply(argument)
    return (time.perf_counter() - start) / repeats, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    network = UNet(preset="small", input_channels=32).to(dtype).eval()
    z = torch.randn(1, 32, args.size, args.size, dtype=dtype)
    lin = Linearization(network, z)
    v = torch.randn(args.batch, lin.num_parameters, dtype=dtype)
    u = torch.randn(args.batch, *lin.output.shape[1:], dtype=dtype)
    direct_jvps, direct_vjps = direct_products(lin)
    print(f"{args.size}x{args.size}, {lin.num_parameters} weights, batches of {args.batch}, {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    total = {"direct": 0.0, "kept": 0.0}
    for name, direct, kept, argument in [("J v", direct_jvps, lin.jvps, v), ("J^T u", direct_vjps, lin.vjps, u)]:
        t_direct, r_direct = seconds(direct, argument, args.repeats)
        t_kept, r_kept = seconds(kept, argument, args.repeats)
        total["direct"] += t_direct
        total["kept"] += t_kept
        difference = float((r_kept - r_direct).norm() / r_direct.norm())
        print(f"{name:6s} direct {t_direct * 1e3:7.1f} ms  kept {t_kept * 1e3:7.1f} ms  "
              f"speed-up {t_direct / t_kept:.2f}x  relative difference {difference:.1e}")
    print(f"K product (one of each): speed-up {total['direct'] / total['kept']:.2f}x")


if __name__ == "__main__":
    main()
