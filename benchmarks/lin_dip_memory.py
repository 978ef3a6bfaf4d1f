"""Peak memory of scalable lin-DIP against image size, with the network and the sketch rank held fixed.

It checks that memory grows no faster than linearly with image size. Each size runs in its own process: a short
DIP+TV fit (the weights only need to exist; memory does not depend on how well they fit), then lin-DIP
with the demo's scalable settings (float32 products, rank-``--rank`` Nystrom preconditioner refreshed
before sampling, ``--samples`` Matheron samples). Reported per size: the peak resident memory that
lin-DIP adds above the fitted DIP (sampled every 10 ms), the process's peak, and lin-DIP's wall time.
Then the least-squares line ``extra = a + b * pixels`` and each size's deviation from it.

    python benchmarks/lin_dip_memory.py --sizes 32 64 128 192 --out lin_dip_memory.jsonl

Rows go to ``--out`` (JSON lines, one per size); a rerun skips the sizes already there.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from uq_calibration import PeakMemory, read_rows


def measure(size: int, args: argparse.Namespace) -> dict:
    """One size, in this process: DIP fit, then lin-DIP inside the memory watcher."""
    from invprior.config import ComponentSpec, parse_config
    from invprior.demo import DEMO
    from invprior.experiment import build_method, build_posterior, build_problem

    config = parse_config({
        "seed": 0,
        "problem": {"operator": "ct_parallel", "operator_params": {"num_angles": args.angles}, "image": "ellipses",
                    "size": size, "noise": {"relative": 0.05}},
        "method": {"name": "dip", "params": {
            "generator": "unet", "generator_params": {"preset": "small", "scales": 3, "channels": 32},
            "regularizer": "tv_anisotropic", "weight": "auto", "stopping": "fixed",
            "stopping_params": {"iterations": args.dip_iterations}, "lr": 3e-3,
            "max_iterations": args.dip_iterations}},
    })
    problem = build_problem(config.problem, 0, torch.float32)
    dip = build_method(config.method, "method").reconstruct(problem, progress=False)
    demo = DEMO["posterior"]["params"]
    params = {**demo, "evidence": {**demo["evidence"], "iterations": args.steps, "preconditioner_rank": args.rank},
              "sampling": {**demo["sampling"], "num_samples": args.samples}}
    posterior = build_posterior(ComponentSpec("linearized_laplace", params), progress=False, seed=0)
    with PeakMemory() as memory:
        start = time.perf_counter()
        posterior.fit(dip, problem)
        seconds = time.perf_counter() - start
    return {"size": size, "pixels": size * size, "measurements": int(problem.y.numel()),
            "parameters": sum(p.numel() for p in dip.networks[0].generator.parameters()), "rank": args.rank,
            "samples": args.samples, "extra_mib": memory.extra_mib,
            "process_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds}


def affine_fit(rows: list[dict]) -> tuple[float, float]:
    """Least-squares ``extra_mib = a + b * pixels``."""
    pixels = torch.tensor([float(r["pixels"]) for r in rows], dtype=torch.float64)
    extra = torch.tensor([r["extra_mib"] for r in rows], dtype=torch.float64)
    design = torch.stack([torch.ones_like(pixels), pixels], dim=1)
    a, b = torch.linalg.lstsq(design, extra[:, None]).solution[:, 0].tolist()
    return a, b


def report(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda r: r["size"])
    lines = ["| size | pixels | measurements | lin-DIP extra MiB | process peak MiB | lin-DIP s | off the line |",
             "|---|---|---|---|---|---|---|"]
    a, b = affine_fit(rows) if len(rows) >= 2 else (float("nan"), float("nan"))
    for r in rows:
        line = a + b * r["pixels"]
        lines.append(f"| {r['size']} | {r['pixels']} | {r['measurements']} | {r['extra_mib']:.0f} | "
                     f"{r['process_peak_mib']:.0f} | {r['seconds']:.1f} | {(r['extra_mib'] - line) / line:+.1%} |")
    lines.append(f"\nextra MiB = {a:.0f} {b * 1e3:+.2f} per 1000 pixels (least squares over {len(rows)} sizes; "
                 f"network {rows[0]['parameters']} parameters, rank {rows[0]['rank']}, {rows[0]['samples']} samples)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 192])
    parser.add_argument("--angles", type=int, default=30)
    parser.add_argument("--rank", type=int, default=400, help="Nystrom preconditioner rank (demo: 1200)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="type-II Adam steps")
    parser.add_argument("--dip-iterations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("lin_dip_memory.jsonl"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args)))
        return
    rows = read_rows(args.out)
    done = {r["size"] for r in rows}
    forwarded = [f"--angles={args.angles}", f"--rank={args.rank}", f"--samples={args.samples}",
                 f"--steps={args.steps}", f"--dip-iterations={args.dip_iterations}"]
    for size in args.sizes:
        if size in done:
            continue
        child = subprocess.run([sys.executable, __file__, f"--child={size}", *forwarded], capture_output=True,
                               text=True)
        if child.returncode:
            sys.exit(f"size {size} failed:\n{child.stderr}")
        row = json.loads(child.stdout.strip().splitlines()[-1])
        rows.append(row)
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{size}x{size}: lin-DIP +{row['extra_mib']:.0f} MiB, process {row['process_peak_mib']:.0f} MiB, "
              f"{row['seconds']:.1f} s", flush=True)
    print(report([r for r in rows if r["size"] in args.sizes]))


if __name__ == "__main__":
    main()
