"""DIP+TV with automatic choices against TV, over a grid of CT settings and four other operators.

Grid: parallel-beam CT of the CT slice and the ellipses (64 x 64, data from a 3x finer grid) at 10 / 20 / 30
angles and 2.5 / 5 / 10 % noise, and denoising, inpainting, Gaussian compressed sensing and Gaussian deblurring of
the cameraman and the ellipses (64 x 64), each for every ``--seeds`` seed. Columns: the pseudo-inverse (FBP for
CT), TV with the discrepancy principle and with held-out cross-validation (the library's grids, 9 and 17 weights),
TV with the oracle weight (the ground truth picks it from 17 weights: a reference only), DIP+TV as it was before
the robust defaults ("before": a fraction 0.3 of TV's discrepancy weight, ES-WMV with window 100 and patience
1000, at most 3000 iterations), DIP+TV with the defaults
of ``DIP`` ("now": cross-validated TV weight, TV start, averaged weights, 1000 iterations), the best PSNR the
"now" run's kept (averaged) network reached along its trajectory (logged every 10 iterations: what a perfect stop
would have kept) and the wall time of both DIP fits. Nothing but the oracle column sees the ground truth.

Rows go to ``--out``/rows.jsonl (rewritten atomically after each setting-seed; a rerun skips finished ones). The
page (per-setting means over the seeds, the grid summary against the goals, the machine and the date) goes to
``--out``/results.md and, with ``--docs``, to the documentation together with the figure of the gain over oracle
TV per setting. The rows behind ``docs/results/dip_robustness.md`` are kept in
``benchmarks/results/dip_robustness_rows.jsonl``.

    python benchmarks/dip_robustness.py --out bench_robust --docs docs/results/dip_robustness.md
    python benchmarks/dip_robustness.py --out /tmp/robust --seeds 0 --only ct   # one seed of the CT grid
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from result_rows import machine, save_rows, write_results

from invprior.config import parse_config
from invprior.core.problem import InverseProblem
from invprior.core.scaling import data_scale
from invprior.experiment import build_problem
from invprior.io import atomic_write
from invprior.methods.classical import PseudoInverse, TVLeastSquares
from invprior.methods.dip import DIP
from invprior.metrics import psnr

GENERATOR = {"preset": "small", "input_channels": 32}
#: DIP+TV as the demo and the suites ran it before the robust defaults.
BEFORE = dict(stopping="eswmv", stopping_params={"window": 100, "patience": 1000}, max_iterations=3000,
              average=0.0, init="none")
BEFORE_FRACTION = 0.3


@dataclass(frozen=True)
class Setting:
    operator: str
    operator_params: tuple
    image: str
    noise: float

    @property
    def label(self) -> str:
        params = ", ".join(f"{k} {v}" for k, v in self.operator_params)
        return f"{self.operator}{' (' + params + ')' if params else ''} / {self.image} / {100 * self.noise:g} %"


def grid(only: str | None) -> list[Setting]:
    ct = [Setting("ct_parallel", (("num_angles", a),), image, noise) for image in ("ct_slice", "ellipses")
          for a in (10, 20, 30) for noise in (0.025, 0.05, 0.1)]
    others = [Setting(op, params, image, noise) for op, params, noise in (
        ("denoising", (), 0.1), ("inpainting", (("missing_fraction", 0.5),), 0.05),
        ("cs_gaussian", (("ratio", 0.3),), 0.05), ("blur", (("sigma", 1.5),), 0.025))
        for image in ("camera", "ellipses")]
    return {"ct": ct, "others": others}.get(only, ct + others)


def problem_of(setting: Setting, seed: int) -> InverseProblem:
    config = parse_config({"seed": seed, "problem": {
        "operator": setting.operator, "operator_params": dict(setting.operator_params), "image": setting.image,
        "size": 64, "fine_factor": 3 if setting.operator == "ct_parallel" else 1,
        "noise": {"relative": setting.noise}}, "method": {"name": "fbp"}})
    return build_problem(config.problem, seed)


def run(setting: Setting, seed: int) -> dict:
    problem = problem_of(setting, seed)

    def quality(image) -> float:
        return float(psnr(image, problem.x_true)[0])

    row: dict = {"setting": asdict(setting), "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if problem.operator.has_pseudo_inverse:
            row["pseudo_inverse"] = quality(PseudoInverse().reconstruct(problem).image)
        for rule in ("discrepancy", "cv", "oracle"):
            start = time.perf_counter()
            tv = TVLeastSquares(weight=rule, grid_size=17 if rule == "oracle" else None).reconstruct(
                problem, progress=False)
            row[f"tv_{rule}"], row[f"tv_{rule}_weight"] = quality(tv.image), tv.params["weight"][0]
            row[f"tv_{rule}_seconds"] = time.perf_counter() - start
        scale = float(data_scale(problem)[0])
        before_weight = BEFORE_FRACTION * 2.0 * row["tv_discrepancy_weight"] / scale / problem.y[0].numel()
        for name, dip in (("before", DIP(generator_params=GENERATOR, weight=before_weight, seed=seed, **BEFORE)),
                          ("now", DIP(generator_params=GENERATOR, seed=seed))):
            start = time.perf_counter()
            fit = dip.reconstruct(problem, progress=False)
            row[f"dip_{name}_seconds"] = time.perf_counter() - start
            row[f"dip_{name}"], row[f"dip_{name}_iterations"] = quality(fit.image), fit.extras["best_iteration"][0]
        row["dip_now_best"] = max(fit.trace["psnr_average"])
        row["dip_now_trace"] = {"iteration": fit.trace["iteration"], "psnr_average": fit.trace["psnr_average"]}
    return row


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def setting_of(row: dict) -> Setting:
    """The setting a stored row was run for (JSON turned its parameter pairs into lists)."""
    return Setting(**{**row["setting"], "operator_params": tuple(tuple(p) for p in row["setting"]["operator_params"])})


def page(rows: list[dict], threads: int) -> tuple[str, list[tuple[str, float, float]]]:
    """The results page and, per setting, (label, gain of "before", gain of "now" over oracle TV)."""
    by_setting: dict[str, list[dict]] = {}
    for row in rows:
        by_setting.setdefault(setting_of(row).label, []).append(row)

    def mean(group: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in group])) if all(key in r for r in group) else float("nan")

    lines = ["| setting | seeds | pseudo-inverse | TV discrepancy | TV cv | TV oracle | DIP+TV before | DIP+TV now "
             "| now: best iterate | now - oracle TV | time before / now |", "|" + "---|" * 11]
    gains = []
    for label, group in by_setting.items():
        cells = [mean(group, k) for k in ("pseudo_inverse", "tv_discrepancy", "tv_cv", "tv_oracle", "dip_before",
                                          "dip_now", "dip_now_best")]
        text = ["-" if np.isnan(c) else f"{c:.2f}" for c in cells]
        text[5] = f"**{text[5]}**"
        gain = cells[5] - cells[3]
        lines.append(f"| {label} | {len(group)} | " + " | ".join(text) + f" | {gain:+.2f} | "
                     f"{mean(group, 'dip_before_seconds'):.0f} / {mean(group, 'dip_now_seconds'):.0f} s |")
        gains.append((label, cells[4] - cells[3], gain))

    def everything(key: str) -> np.ndarray:
        return np.array([r[key] for r in rows])

    now, oracle = everything("dip_now"), everything("tv_oracle")
    below = [f"{setting_of(r).label} seed {r['seed']} ({r['dip_now'] - r['tv_discrepancy']:+.2f} dB)"
             for r in rows if r["dip_now"] < r["tv_discrepancy"]]
    cost = everything("dip_now_seconds") / everything("dip_before_seconds")
    summary = [
        f"- DIP+TV now - oracle TV, mean over {len(rows)} setting-seeds: **{np.mean(now - oracle):+.2f} dB** "
        f"(before: {np.mean(everything('dip_before') - oracle):+.2f} dB; TV cv: "
        f"{np.mean(everything('tv_cv') - oracle):+.2f} dB); ahead of oracle TV on {int((now > oracle).sum())}.",
        f"- Below TV with the discrepancy principle: {len(below)} of {len(rows)}"
        + (f" ({'; '.join(below)})." if below else "."),
        f"- The stop loses {np.mean(everything('dip_now_best') - now):.2f} dB on average against the best "
        f"(averaged) iterate of the same run (largest {np.max(everything('dip_now_best') - now):.2f} dB).",
        f"- Cost: DIP+TV now takes {np.mean(cost):.2f}x the wall time of before (range {cost.min():.2f}-"
        f"{cost.max():.2f}x), the cross-validated TV weight and the TV start included."]
    head = (f"Machine: {machine()}, {threads} torch threads; date {datetime.date.today()}; 64 x 64 images; "
            "PSNR in dB, mean over the seeds; time per DIP fit.\n\n")
    return head + "\n".join(summary) + "\n\n" + "\n".join(lines) + "\n", gains


def figure(gains: list[tuple[str, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.32 * len(gains) + 1.2))
    rows = np.arange(len(gains))
    ax.barh(rows - 0.2, [g[1] for g in gains], height=0.4, label="DIP+TV before", color="0.7")
    ax.barh(rows + 0.2, [g[2] for g in gains], height=0.4, label="DIP+TV now", color="tab:blue")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(rows, [g[0] for g in gains], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("PSNR gain over TV with the oracle weight (dB)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_robust"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=("ct", "others"), help="run only the CT grid or only the other operators")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--docs", type=Path, help="also write the results page here (and its figure beside it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = load(args.out / "rows.jsonl")
    done = {(json.dumps(r["setting"], sort_keys=True), r["seed"]) for r in rows}
    for setting in grid(args.only):
        for seed in args.seeds:
            if (json.dumps(asdict(setting), sort_keys=True), seed) in done:
                continue
            row = run(setting, seed)
            rows.append(json.loads(json.dumps(row)))  # as a rerun reads it back
            save_rows(args.out, rows)
            print(f"{setting.label} seed {seed}: TV disc {row['tv_discrepancy']:.2f} cv {row['tv_cv']:.2f} oracle "
                  f"{row['tv_oracle']:.2f} | DIP before {row['dip_before']:.2f} ({row['dip_before_seconds']:.0f} s) "
                  f"now {row['dip_now']:.2f} ({row['dip_now_seconds']:.0f} s, best {row['dip_now_best']:.2f})",
                  flush=True)
    text, gains = page(rows, args.threads)
    header = ("# Results: DIP+TV without ground truth\n\nWritten by `benchmarks/dip_robustness.py`; what the "
              "columns mean is in its docstring and in [DIP](../dip.md#automatic-choices).\n\n"
              "![PSNR gain over oracle TV per setting](../figures/dip_robustness.png)\n\n")
    write_results(args.out, text, args.docs, header)
    figure(gains, args.out / "gain_over_oracle_tv.png")
    if args.docs:
        figure(gains, args.docs.parent.parent / "figures" / "dip_robustness.png")


if __name__ == "__main__":
    main()
