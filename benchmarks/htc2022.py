"""Real limited-angle CT: the HTC2022 phantom ``tb`` at 30 to 90 degrees, every method, scored by MCC.

The settings are those of the examples: ``examples/htc2022_tb.toml`` (TV),
``examples/htc2022_tb_dip.toml`` (DIP+TV) and ``examples/htc2022_tb_edip.toml`` (EDIP, pretrained afresh for
every scan's geometry) -- the same reader, beam-hardening correction, bounds and
fitted disc support -- with only the measurement file changed; "lin-DIP" refits DIP+TV and adds the DIP
example's posterior (its std map, and how well the std forecasts the segmentation's errors). Nothing is tuned
on the reference segmentation. First the beam-hardening correction and the acrylic attenuation are calibrated on the
solid-disc scan and compared with the values in the examples. Per file and method: the MCC of the
Otsu segmentation against the organisers' reference and the wall time.

Rows go to ``--out``/rows.jsonl (written atomically after each run; a rerun skips finished runs of the
same settings); ``--out``/results.md is the table with the machine and the date, and ``--docs`` also
writes it as the documentation's results page.

    python benchmarks/htc2022.py --out bench_htc2022 --docs docs/results/htc2022.md
    python benchmarks/htc2022.py --quick --out /tmp/htc_quick      # 64 x 64, two files, short fits
    python benchmarks/htc2022.py --out bench_htc2022 --methods EDIP --files htc2022_tb_90deg.mat
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import tomllib
from pathlib import Path

import torch
from result_rows import load_rows, machine, posterior_summary, save_rows, write_results

from invprior.analysis.segmentation import segmentation_calibration
from invprior.config import parse_config
from invprior.experiment import build_method, build_posterior, build_problem, scores
from invprior.readers.beam_hardening import calibrate_beam_hardening
from invprior.readers.ct import read_htc2022

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DATA = EXAMPLES / "data" / "htc2022"
FILES = ["htc2022_tb_90deg.mat", "htc2022_tb_80deg.mat", "htc2022_tb_70deg.mat", "htc2022_tb_60deg.mat",
         "htc2022_tb_50deg.mat", "htc2022_tb_40deg.mat", "htc2022_tb_30deg_from42.mat",
         "htc2022_tb_30deg_from269.mat"]
#: MCC on tb of the model-based directional-TV method that took 3rd place in HTC2022 (known attenuation and
#: a fitted disc mask), from the data's README.
PUBLISHED = {90: 0.932, 60: 0.884, 30: 0.759}


#: Labels that fit a posterior after their method; they have a table of their own.
POSTERIORS = ("lin-DIP",)


def methods() -> dict[str, tuple[dict, dict]]:
    """Label -> (raw configuration of the example it comes from, the [method] table to run); a label in
    ``POSTERIORS`` also fits the example's [posterior]."""
    tv = tomllib.loads((EXAMPLES / "htc2022_tb.toml").read_text())
    dip = tomllib.loads((EXAMPLES / "htc2022_tb_dip.toml").read_text())
    edip = tomllib.loads((EXAMPLES / "htc2022_tb_edip.toml").read_text())
    without_posterior = {key: value for key, value in dip.items() if key != "posterior"}
    return {"FBP": (tv, {"name": "fbp"}), "TV": (tv, tv["method"]), "DIP+TV": (without_posterior, dip["method"]),
            "EDIP": (edip, edip["method"]), "lin-DIP": (dip, dip["method"])}


def calibration_check(size: int) -> dict:
    """The solid-disc calibration, next to the values the examples hold."""
    calibration = calibrate_beam_hardening(read_htc2022(DATA / "htc2022_solid_disc_30deg.mat", size=size))
    example = tomllib.loads((EXAMPLES / "htc2022_tb.toml").read_text())["problem"]
    return {"coefficients": list(calibration.correction.coefficients), "attenuation": calibration.attenuation,
            "disc_diameter_mm": 2 * calibration.disc.radius, "misfit_linear": calibration.misfit_linear,
            "misfit_corrected": calibration.misfit_corrected,
            "example_coefficients": example["reader_params"]["beam_hardening"],
            "example_attenuation": example["constraints"]["upper"]}


def run_one(raw: dict, method: dict, name: str, size: int, quick: bool) -> dict:
    raw = {**raw, "problem": {**raw["problem"], "file": str(DATA / name), "size": size,
                              "reference": str(DATA / "htc2022_tb_full_recon_fbp_seg.png")},
           "method": json.loads(json.dumps(method))}
    if quick and raw["method"]["name"] in ("dip", "edip"):
        raw["method"].setdefault("params", {})["max_iterations"] = 100
    if quick and raw["method"]["name"] == "edip":
        raw["method"]["params"]["pretrain"].update(count=64, validation_count=8, epochs=1)
    if quick and raw["method"]["name"] == "tv":
        raw["method"].setdefault("params", {}).update(iterations=100, grid_size=3)
    config = parse_config(raw, EXAMPLES)
    start = time.perf_counter()
    problem = build_problem(config.problem, config.seed)
    result = build_method(config.method, "method").reconstruct(problem, progress=False)
    seconds = time.perf_counter() - start
    score = scores(result, problem)
    row = {"mcc": score["mcc"][0], "seconds": seconds, "noise_std": float(problem.noise_std[0]),
           "stop_reason": result.stop_reason, "iterations": result.iterations}
    if config.posterior is not None:
        start = time.perf_counter()
        posterior = build_posterior(config.posterior, progress=False, seed=config.seed).fit(result, problem)
        calibration = segmentation_calibration(posterior.mean, posterior.std, problem.reference)
        row.update(posterior_seconds=time.perf_counter() - start, captured_variance=posterior.captured_variance,
                   noise_std_fitted=posterior.noise_variance ** 0.5, mean_std=float(posterior.std.mean()),
                   expected_error_rate=calibration.expected_error_rate,
                   observed_error_rate=calibration.observed_error_rate, auroc=calibration.auroc)
    return row


def angle_of(name: str) -> int:
    return int(name.split("_")[2].removesuffix(".mat").removesuffix("deg"))


def table(rows: list[dict], labels: list[str], host: str, settings: dict) -> str:
    lines = [f"Machine: {host}, {settings['threads']} torch threads; date {datetime.date.today().isoformat()}; "
             f"grid {settings['size']} x {settings['size']}.", "",
             "| data | " + " | ".join(f"{label} MCC | {label} time" for label in labels) + " | published (3rd place) |",
             "|---|" + "---|---|" * len(labels) + "---|"]
    for name in FILES:
        found = {r["method"]: r for r in rows if r["file"] == name}
        if not found:
            continue
        cells = [f"{found[label]['mcc']:.3f} | {found[label]['seconds']:.0f} s" if label in found else "- | -"
                 for label in labels]
        published = PUBLISHED.get(angle_of(name))
        lines.append(f"| {name.removeprefix('htc2022_').removesuffix('.mat')} | " + " | ".join(cells) +
                     f" | {published if published is not None else '-'} |")
    means = []
    scored = {r["file"] for r in rows}
    for label in labels:
        values = [r["mcc"] for r in rows if r["method"] == label]
        means.append(f"{sum(values) / len(values):.3f} | " if values and len(values) == len(scored) else "- | ")
    lines.append("| mean | " + " ".join(f"{m}|" for m in means) + " |")
    return "\n".join(lines) + "\n"


def posterior_table(rows: list[dict], label: str) -> str:
    """The error bars: time, the prior variance the subspace keeps, the noise std (estimated / fitted), the
    mean std, and the segmentation's expected against observed error rate with the std's AUROC."""
    lines = [f"| data | DIP+TV MCC | {label} time | prior variance kept | noise std estimated / fitted | mean std "
             "(1/mm) | expected error rate | observed error rate | AUROC |", "|---|---|---|---|---|---|---|---|---|"]
    for name in FILES:
        for r in rows:
            if r["file"] == name and r["method"] == label:
                lines.append(f"| {name.removeprefix('htc2022_').removesuffix('.mat')} | {r['mcc']:.3f} | "
                             f"{r['posterior_seconds']:.0f} s | {r['captured_variance']:.3f} | "
                             f"{r['noise_std']:.2e} / {r['noise_std_fitted']:.2e} | {r['mean_std']:.1e} | "
                             f"{r['expected_error_rate']:.4f} | {r['observed_error_rate']:.4f} | {r['auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--docs", type=Path, help="also write the table as this documentation page")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", help="labels to run (default: all)")
    parser.add_argument("--files", nargs="*", help="measurement files to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="64 x 64, 90 and 30 degrees, short fits")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = FILES[:1] + FILES[6:7] if args.quick else FILES
    unknown = sorted(set(args.files or []) - set(FILES))
    if unknown:
        parser.error(f"unknown files {unknown}; choose from {FILES}")
    files = [name for name in files if not args.files or name in args.files]
    size = 64 if args.quick else args.size
    settings = {"size": size, "threads": args.threads, "quick": args.quick}
    args.out.mkdir(parents=True, exist_ok=True)

    check = calibration_check(size)
    print("beam-hardening calibration on the solid disc: " + json.dumps(check))
    available = methods()
    labels = [label for label in available if not args.methods or label in args.methods]
    rows = load_rows(args.out, settings)
    for name in files:
        for label in labels:
            if any(r["file"] == name and r["method"] == label for r in rows):
                continue
            raw, method = available[label]
            row = {"file": name, "method": label, "settings": settings, **run_one(raw, method, name, size, args.quick)}
            print(f"{name:32s} {label:8s} MCC {row['mcc']:.3f}  {row['seconds']:.0f} s" + posterior_summary(row),
                  flush=True)
            rows.append(row)
            save_rows(args.out, rows)
    shown = [label for label in available if label not in POSTERIORS and any(r["method"] == label for r in rows)]
    page = table(rows, shown, machine(), settings)
    for label in POSTERIORS:
        if any(r["method"] == label for r in rows):
            page += (f"\n## Error bars ({label} around DIP+TV)\n\nThe DIP example's posterior "
                     "(`solver = \"subspace\"`); error rates on the reference grid: expected from the std (the "
                     "probability of leaving the pixel's Otsu class), observed against the reference; AUROC of that "
                     "probability for the wrong pixels.\n\n"
                     + posterior_table(rows, label))
    write_results(args.out, page, args.docs,
                  "# Results: HTC2022 limited-angle CT\n\nWritten by `benchmarks/htc2022.py` (settings of "
                  "`examples/htc2022_tb.toml`, `examples/htc2022_tb_dip.toml` and `examples/htc2022_tb_edip.toml`; "
                  "see [Your own data](../own-data.md)). MCC of the Otsu segmentation against the organisers' "
                  "reference; time per reconstruction including the disc fit, for DIP+TV and EDIP their automatic "
                  "TV weight and for EDIP its pretraining. A dash: not run; means only over complete columns.\n\n")


if __name__ == "__main__":
    main()
