"""Real EIT: the KTC2023 water tank, both phantoms at difficulty levels 1-7, every method, the challenge score.

The settings are those of ``examples/ktc2023.toml`` (difference imaging against the empty tank, model calibrated
on it, noise level from the redundancy of the current patterns, 64 x 64 grid), with only the measurement and
ground-truth files changed. Methods: the linearised one-step Gauss-Newton reconstruction (smoothness prior), the
example's regularised Gauss-Newton (its baseline), the example's DIP, the EDIP of ``examples/ktc2023_edip.toml``
(pretrained for each file, as the example does, so its time includes the pretraining; the models are kept in
``--out``/models/) and, on request (``--methods``), "lin-DIP"
(DIP with the example's lin-DIP error bars: the std map's forecast of the segmentation errors against the
observed ones) and "mesh-free" (``eit_mesh_free`` with its defaults on the same calibrated data). Nothing is
tuned on the ground truth. Per file and method: the KTC score of the Otsu segmentation, the time of the whole
reconstruction (reading and calibration included) and the data misfit against the noise level.

Rows go to ``--out``/rows.jsonl (written after each run; a rerun skips finished runs of the same settings), the
images to ``--out``/images/ (``[x, y]`` layout); ``--out``/results.md is the table with the machine and the date,
``--docs`` also writes it as the documentation's results page. The rows behind ``docs/results/ktc2023.md`` are
kept in ``benchmarks/results/ktc2023_rows.jsonl`` (copy them to ``--out``/rows.jsonl to extend that run). The
data of every level come from ``--data`` (the challenge's layout: ``level_N/dataK.mat``, ``level_N/ref.mat``,
``ground_truth/trueK.mat``).

    python benchmarks/ktc2023.py --data ../shared/data/real/ktc2023 --out bench_ktc --docs docs/results/ktc2023.md
    python benchmarks/ktc2023.py --data ../shared/data/real/ktc2023 --out /tmp/ktc --quick   # levels 1, 7; short fits
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
from invprior.experiment import build_method, build_posterior, build_problem, scores, support
from invprior.io import write_npz

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ktc2023.toml"
EDIP_EXAMPLE = ROOT / "examples" / "ktc2023_edip.toml"
LEVELS = range(1, 8)
PHANTOMS = (1, 2)
#: Mean score of a supervised post-processing U-Net trained on simulated data (four phantoms), from the data's README.
PUBLISHED = {1: 0.873, 7: 0.681}
POSTERIORS = ("lin-DIP",)
#: Labels run only when asked for (``--methods``).
ON_REQUEST = (*POSTERIORS, "mesh-free")


def methods() -> dict[str, dict]:
    """Label -> the [method] table to run (from the example)."""
    raw = tomllib.loads(EXAMPLE.read_text())
    return {"one-step GN": {"name": "one_step_gn", "params": {"weight": raw["baseline"]["params"]["weight"]}},
            "GN": raw["baseline"], "DIP": raw["method"], "EDIP": tomllib.loads(EDIP_EXAMPLE.read_text())["method"],
            "lin-DIP": raw["method"], "mesh-free": {"name": "eit_mesh_free", "params": {}}}


def run_one(data: Path, level: int, phantom: int, label: str, method: dict, quick: bool, images: Path) -> dict:
    raw = tomllib.loads(EXAMPLE.read_text())
    raw["problem"].update(file=str(data / f"level_{level}" / f"data{phantom}.mat"),
                          reference=str(data / "ground_truth" / f"true{phantom}.mat"))
    raw["problem"]["reader_params"]["reference_measurement_file"] = str(data / f"level_{level}" / "ref.mat")
    raw["method"] = json.loads(json.dumps(method))
    if raw["method"]["name"] == "edip":   # pretrained for each measurement (its electrodes and noise level), kept
        raw["method"]["params"]["pretrained"] = str(images.parent / "models" /
                                                    f"level_{level}_phantom{phantom}{'_quick' * quick}.pt")
        if quick:
            raw["method"]["params"]["pretrain"].update(count=64, epochs=1)
    if quick and raw["method"]["name"] in ("dip", "edip"):
        raw["method"]["params"]["max_iterations"] = 100
    if label not in POSTERIORS:
        raw.pop("posterior", None)
    config = parse_config(raw, EXAMPLE.parent)
    start = time.perf_counter()
    problem = build_problem(config.problem, config.seed)
    result = build_method(config.method, "method").reconstruct(problem, progress=False)
    seconds = time.perf_counter() - start
    score = scores(result, problem)
    write_npz(images / f"level{level}_phantom{phantom}_{label.replace(' ', '_')}.npz",
              image=result.image.detach().cpu().numpy())
    meta = problem.metadata
    row = {"score": score["ktc_score"][0], "seconds": seconds, "reconstruction_seconds": result.wall_time,
           "residual": score["residual_norm"][0], "noise_norm": float(problem.noise_norm[0]),
           "noise_std": meta["noise"]["std"][0], "channels": meta["channels"]["kept"],
           "background": meta["calibration"]["background"],
           "calibration_misfit": meta["calibration"]["relative_misfit"],
           "stop_reason": result.stop_reason, "iterations": result.iterations}
    if config.posterior is not None:
        start = time.perf_counter()
        posterior = build_posterior(config.posterior, progress=False, seed=config.seed).fit(result, problem)
        calibration = segmentation_calibration(posterior.mean, posterior.std, problem.reference, problem.task,
                                               support(problem))
        row.update(posterior_seconds=time.perf_counter() - start, mean_std=float(posterior.std.mean()),
                   expected_error_rate=calibration.expected_error_rate,
                   observed_error_rate=calibration.observed_error_rate, auroc=calibration.auroc)
    return row


def table(rows: list[dict], labels: list[str], host: str, settings: dict) -> str:
    lines = [f"Machine: {host}, {settings['threads']} torch threads; date {datetime.date.today().isoformat()}; "
             "grid 64 x 64; score = mean of the two phantoms' KTC scores (each in brackets), time per phantom.", "",
             "| level | " + " | ".join(f"{label} score | {label} time" for label in labels) +
             " | supervised U-Net (published) |", "|---|" + "---|---|" * len(labels) + "---|"]
    for level in LEVELS:
        cells = []
        for label in labels:
            found = sorted((r for r in rows if r["level"] == level and r["method"] == label),
                           key=lambda r: r["phantom"])
            if len(found) != len(PHANTOMS):
                cells.append("- | -")
                continue
            mean = sum(r["score"] for r in found) / len(found)
            each = " / ".join(f"{r['score']:.3f}" for r in found)
            cells.append(f"**{mean:.3f}** ({each}) | {max(r['seconds'] for r in found):.0f} s")
        if any(cell != "- | -" for cell in cells):
            lines.append(f"| {level} | " + " | ".join(cells) + f" | {PUBLISHED.get(level, '-')} |")
    return "\n".join(lines) + "\n"


def posterior_table(rows: list[dict], label: str) -> str:
    lines = ["| level | phantom | DIP score | lin-DIP time | mean std | expected error rate | observed error rate | "
             "AUROC |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["method"] == label), key=lambda r: (r["level"], r["phantom"])):
        lines.append(f"| {r['level']} | {r['phantom']} | {r['score']:.3f} | {r['posterior_seconds']:.0f} s | "
                     f"{r['mean_std']:.3f} | {r['expected_error_rate']:.4f} | {r['observed_error_rate']:.4f} | "
                     f"{r['auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "real" / "ktc2023")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--docs", type=Path, help="also write the table as this documentation page")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="*", help="labels to run (default: all but lin-DIP and mesh-free)")
    parser.add_argument("--levels", nargs="*", type=int, help="levels to run (default: 1-7)")
    parser.add_argument("--quick", action="store_true", help="levels 1 and 7, 100 DIP steps")
    args = parser.parse_args()
    if not (args.data / "level_1" / "ref.mat").is_file():
        parser.error(f"{args.data}: not the KTC2023 folder layout (level_1/ref.mat is missing); give --data")
    torch.set_num_threads(args.threads)
    available = methods()
    labels = args.methods or [label for label in available if label not in ON_REQUEST]
    unknown = sorted(set(labels) - set(available))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(available)}")
    levels = [1, 7] if args.quick else (args.levels or list(LEVELS))
    settings = {"threads": args.threads, "quick": args.quick}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(args.out, settings)
    for level in levels:
        for phantom in PHANTOMS:
            for label in labels:
                if any(r["level"] == level and r["phantom"] == phantom and r["method"] == label for r in rows):
                    continue
                row = {"level": level, "phantom": phantom, "method": label, "settings": settings,
                       **run_one(args.data, level, phantom, label, available[label], args.quick, args.out / "images")}
                print(f"level {level} phantom {phantom} {label:12s} score {row['score']:.3f}  {row['seconds']:.0f} s  "
                      f"residual {row['residual']:.3f} (noise {row['noise_norm']:.3f})" + posterior_summary(row),
                      flush=True)
                rows.append(row)
                save_rows(args.out, rows)
    shown = [label for label in available if label not in POSTERIORS and any(r["method"] == label for r in rows)]
    page = table(rows, shown, machine(), settings)
    for label in POSTERIORS:
        if any(r["method"] == label for r in rows):
            page += (f"\n## Error bars ({label} around DIP)\n\nError rates of the three-class segmentation on the "
                     "256 x 256 grid: expected from the std (the probability of leaving the pixel's Otsu class), "
                     "observed against the ground truth; AUROC of that probability for the wrong pixels.\n\n"
                     + posterior_table(rows, label))
    write_results(args.out, page, args.docs,
                  "# Results: KTC2023 water-tank EIT\n\nWritten by `benchmarks/ktc2023.py` (settings of "
                  "`examples/ktc2023.toml`, EDIP those of `examples/ktc2023_edip.toml`, pretrained for each file "
                  "and timed with its pretraining; the score is the challenge's, see "
                  "[EIT on measured data](../eit.md#measured-data-the-ktc2023-water-tank)).\n\n")


if __name__ == "__main__":
    main()
