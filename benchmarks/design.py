"""Adaptive CT angle selection with lin-DIP against equidistant and random designs.

``--data simulated`` (default): parallel-beam CT of the CT slice with 180 candidate angles over 180 degrees
and 2.5 % noise, reconstructed with DIP+TV (the configuration below) after each acquisition: 5 equidistant
angles, then batches of 5 up to the budget, scored by PSNR (and SSIM) against the ground truth.
``--data htc2022``: the HTC2022 phantom ``tb`` measured at 181 angles over 90 degrees (the pool), with the
data, physics and DIP+TV settings of ``examples/htc2022_tb_dip.toml`` on a coarser grid: 10 equidistant angles,
then batches of 10 up to the budget, scored by the MCC of the Otsu segmentation against the organisers'
reference. ``lin_dip`` chooses by expected information gain under lin-DIP's posterior (subspace solver),
``variance`` by the gain under its pixel-wise variance alone, ``tikhonov`` by the gain under a smoothness-prior
Gaussian posterior (no network), ``equidistant`` and ``random`` do not look at the data. Every refit after the
first starts from the previous network (warm start). Per strategy and number of angles: the score, the
difference to the equidistant design, and the fewest angles at which the strategy reaches the equidistant
design's score at the budget (linear
interpolation between the scored counts). The comparison resumes step by step from ``--out``/design
(``invprior design``'s records).

    python benchmarks/design.py --out bench_design --docs docs/results/design.md
    python benchmarks/design.py --data htc2022 --out bench_design_htc --docs docs/results/design_htc2022.md
    python benchmarks/design.py --quick --out /tmp/design_quick      # 32x32, 100 DIP iterations
"""

from __future__ import annotations

import argparse
import math
import shutil
import tomllib
from pathlib import Path

from result_rows import provenance, save_rows, write_results

from invprior.design.compare import compare_designs
from invprior.design.config import parse_design_config
from invprior.design.report import main_score

ROOT = Path(__file__).resolve().parents[1]
SIMULATED = """seed = {seed}
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
"""
POSTERIOR = {"name": "linearized_laplace",
             "params": {"solver": {"kind": "subspace", "subspace_rank": 200},
                        "evidence": {"iterations": 20, "lr": 0.05}}}
STRATEGIES = ["lin_dip", "variance", "tikhonov", "equidistant", "random"]


def simulated(args: argparse.Namespace) -> tuple[dict, str]:
    raw = tomllib.loads(SIMULATED.format(seed=args.seed, candidates=180, size=args.size,
                                         iterations=args.iterations))
    raw["posterior"] = POSTERIOR
    raw["design"] = {"strategies": args.strategies, "budget": args.budget, "start": 5, "batch": 5}
    return raw, (f"CT slice {args.size}x{args.size}, 180 candidate angles over 180 degrees, 2.5 % noise, DIP+TV "
                 f"{args.iterations} iterations, lin-DIP subspace rank 200, seed {args.seed}")


def htc2022(args: argparse.Namespace) -> tuple[dict, str]:
    example = ROOT / "examples" / "htc2022_tb_dip.toml"
    raw = tomllib.loads(example.read_text())
    data = example.parent
    raw.pop("baseline", None)
    raw["problem"] = {**raw["problem"], "size": args.size, "file": str(data / raw["problem"]["file"]),
                      "reference": str(data / raw["problem"]["reference"])}
    raw["method"]["params"]["max_iterations"] = args.iterations
    raw["posterior"]["params"]["solver"]["subspace_rank"] = 200
    raw["design"] = {"strategies": args.strategies, "budget": args.budget, "start": 10, "batch": 10}
    return raw, (f"HTC2022 `tb` at 90 degrees (181 measured angles), {args.size}x{args.size}, settings of "
                 f"`examples/htc2022_tb_dip.toml` with at most {args.iterations} DIP iterations and lin-DIP subspace "
                 "rank 200; the disc support is fitted to all 181 angles for every strategy")


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


def table(rows: list[dict], score: str) -> list[str]:
    counts = rows[0]["counts"]
    unit = " (dB)" if score == "psnr" else ""
    lines = [f"| strategy | {score.upper()}{unit} at " + " / ".join(map(str, counts)) + " angles "
             f"| over equidistant at {' / '.join(map(str, counts[1:]))} | angles to reach equidistant's "
             f"{counts[-1]} | time (min) |", "|---|---|---|---|---|"]
    reference = next((row for row in rows if row["strategy"] == "equidistant"), None)
    for row in rows:
        values = row["scores"][score]
        over = " / ".join(f"{values[k] - reference['scores'][score][k]:+.3f}" for k in range(1, len(counts))) \
            if reference else "-"
        reach = fewest_to_reach(counts, values, reference["scores"][score][-1]) if reference else math.nan
        reached = "not reached" if math.isnan(reach) else f"{reach:.1f}"
        lines.append(f"| {row['strategy']} | " + " / ".join(f"{v:.3f}" for v in values)
                     + f" | {over} | {reached} | {row['seconds'] / 60:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["simulated", "htc2022"], default="simulated")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--budget", type=int, help="angles in the end (default 20 simulated, 40 HTC2022)")
    parser.add_argument("--iterations", type=int, default=500, help="DIP iterations per reconstruction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--out", type=Path, default=Path("bench_design"))
    parser.add_argument("--quick", action="store_true", help="32x32, 100 DIP iterations, a budget of two "
                                                              "batches: a smoke run")
    parser.add_argument("--docs", type=Path, help="also write the table as this results page (and the figure "
                                                  "beside it)")
    args = parser.parse_args()
    if args.budget is None:
        args.budget = 20 if args.data == "simulated" else 40
    if args.quick:
        args.size, args.iterations, args.budget = 32, 100, 10 if args.data == "simulated" else 20
    raw, note = (simulated if args.data == "simulated" else htc2022)(args)
    config = parse_design_config(raw, ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    done = compare_designs(config, args.out / "design", progress=False,
                           report=lambda line: print(line, flush=True))
    score = main_score(next(iter(done.steps.values())))
    rows = [{"settings": {**vars(args), "out": str(args.out), "docs": str(args.docs)}, "strategy": strategy,
             "counts": [len(step.design) for step in steps],
             "scores": {name: [step.scores[name] for step in steps] for name in steps[-1].scores},
             "seconds": sum(step.seconds for step in steps)} for strategy, steps in done.steps.items()]
    save_rows(args.out, rows)
    minutes = sum(row["seconds"] for row in rows) / 60
    page = f"{note}; all strategies {minutes:.1f} min.\n\n" + "\n".join(table(rows, score)) + "\n"
    if args.docs:
        figure = args.docs.with_suffix(".png")
        shutil.copyfile(args.out / "design" / "design.png", figure)
        page += f"\n![{score.upper()} by number of angles; the final designs; the images]({figure.name})\n"
    title = "choosing CT angles" if args.data == "simulated" else "choosing HTC2022 angles"
    write_results(args.out, page, args.docs, f"# Results: {title} with lin-DIP\n\n"
                  f"{provenance()} What it measures: the docstring of `benchmarks/design.py`; the method: "
                  "[Choosing measurements](../design.md).\n\n")


if __name__ == "__main__":
    main()
