"""Adaptive CT angle selection with lin-DIP against equidistant and random designs, on a simulated slice.

The pool is parallel-beam CT of the CT slice with 180 candidate angles over 180 degrees and 2.5 % noise; every
strategy reconstructs with DIP+TV (the configuration below) after each acquisition: 5 equidistant angles, then
batches of 5 up to the budget. ``lin_dip`` chooses by expected information gain under lin-DIP's posterior
(subspace solver), ``variance`` by the gain under its pixel-wise variance alone, ``equidistant`` and ``random``
do not look at the data. Per strategy and number of angles: PSNR and SSIM against the ground truth, the gain in
dB over the equidistant design, and the fewest angles at which the strategy reaches the equidistant design's
PSNR at the budget (linear interpolation between the scored counts). Rows go to ``--out``/rows.jsonl; the
comparison itself resumes strategy by strategy from ``--out``/design (``invprior design``'s records).

    python benchmarks/design.py --out bench_design --docs docs/results/design.md
    python benchmarks/design.py --quick --out /tmp/design_quick      # 32x32, 100 DIP iterations
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
import tomllib
from pathlib import Path

from result_rows import provenance, save_rows, write_results

from invprior.design.compare import compare_designs
from invprior.design.config import parse_design_config

CONFIG = """seed = {seed}
[problem]
operator = "ct_parallel"
operator_params = {{ num_angles = {candidates} }}
image = "ct_slice"
size = {size}
noise = {{ relative = 0.025 }}
[method]
name = "dip"
[method.params]
generator_params = {{ preset = "small" }}
max_iterations = {iterations}
[posterior]
name = "linearized_laplace"
params = {{ solver = {{ kind = "subspace", subspace_rank = {rank} }}, evidence = {{ iterations = 20, lr = 0.05 }} }}
[design]
strategies = {strategies}
budget = {budget}
start = 5
batch = 5
"""
STRATEGIES = ["lin_dip", "variance", "equidistant", "random"]


def fewest_to_reach(counts: list[int], values: list[float], target: float) -> float:
    """The number of measurements at which ``values`` (at ``counts``) first reach ``target``, interpolated
    linearly; ``nan`` when they never do."""
    for k, value in enumerate(values):
        if value >= target:
            if k == 0:
                return float(counts[0])
            previous = values[k - 1]
            return counts[k - 1] + (counts[k] - counts[k - 1]) * (target - previous) / (value - previous)
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--budget", type=int, default=20, help="angles in the end (scored every 5 from 5)")
    parser.add_argument("--candidates", type=int, default=180, help="candidate angles over 180 degrees")
    parser.add_argument("--iterations", type=int, default=500, help="DIP iterations per reconstruction")
    parser.add_argument("--rank", type=int, default=200, help="lin-DIP subspace rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--out", type=Path, default=Path("bench_design"))
    parser.add_argument("--quick", action="store_true", help="32x32, 100 DIP iterations, 10 angles: a smoke run")
    parser.add_argument("--docs", type=Path, help="also write the table as this results page (and the figure "
                                                  "beside it)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.iterations, args.budget, args.rank = 32, 100, 10, 50
    text = CONFIG.format(seed=args.seed, candidates=args.candidates, size=args.size, iterations=args.iterations,
                         rank=args.rank, strategies=args.strategies, budget=args.budget)
    config = parse_design_config(tomllib.loads(text))
    settings = {"size": args.size, "budget": args.budget, "candidates": args.candidates,
                "iterations": args.iterations, "rank": args.rank, "seed": args.seed}
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = compare_designs(config, args.out / "design", progress=False,
                           report=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - start
    rows = [{"settings": settings, "strategy": s, "counts": [len(step.design) for step in steps],
             "psnr": [step.scores["psnr"] for step in steps], "ssim": [step.scores["ssim"] for step in steps],
             "seconds": sum(step.seconds for step in steps)} for s, steps in done.steps.items()]
    save_rows(args.out, rows)
    counts = rows[0]["counts"]
    by_name = {row["strategy"]: row for row in rows}
    reference = by_name.get("equidistant")
    header = " | ".join(f"{k} angles" for k in counts)
    lines = [f"| strategy | PSNR (dB) at {header} | SSIM at {counts[-1]} | dB over equidistant at "
             f"{', '.join(map(str, counts[1:]))} | angles to reach equidistant's {counts[-1]} | time (min) |",
             "|---|" + "---|" * (len(counts) + 4)]
    for row in rows:
        over = ", ".join(f"{row['psnr'][k] - reference['psnr'][k]:+.2f}" for k in range(1, len(counts))) \
            if reference else "-"
        reach = fewest_to_reach(counts, row["psnr"], reference["psnr"][-1]) if reference else math.nan
        lines.append(f"| {row['strategy']} | " + " | ".join(f"{v:.2f}" for v in row["psnr"])
                     + f" | {row['ssim'][-1]:.3f} | {over} | {reach:.1f} | {row['seconds'] / 60:.1f} |")
    pool_note = (f"CT slice {args.size}x{args.size}, {args.candidates} candidate angles over 180 degrees, 2.5 % "
                 f"noise, DIP+TV {args.iterations} iterations, lin-DIP subspace rank {args.rank}, seed {args.seed}; "
                 f"whole comparison {seconds / 60:.1f} min.")
    figure = args.out / "design" / "design.png"
    page = pool_note + "\n\n" + "\n".join(lines) + "\n"
    if args.docs:
        shutil.copyfile(figure, args.docs.with_suffix(".png"))
        page += f"\n![PSNR by number of angles; the final designs]({args.docs.with_suffix('.png').name})\n"
    write_results(args.out, page, args.docs, f"# Results: choosing CT angles with lin-DIP\n\n{provenance()} "
                  "What it measures: the docstring of `benchmarks/design.py`; the method: "
                  "[Choosing measurements](../design.md).\n\n")


if __name__ == "__main__":
    main()
