"""Educated DIP against DIP on parallel-beam CT: rise time, steady PSNR and the cost of pretraining.

One U-Net is pretrained on random-ellipse pairs (FBP input -> phantom) pushed through the same scan and
noise model (written to ``--out``/pretrained.pt and reused; pretraining resumes from its checkpoint).
Then, on the real CT slice and on held-out ellipse phantoms (data simulated on a 3x finer grid), DIP
(noise input, fresh weights) and EDIP (FBP input, pretrained weights) run the same DIP+TV loss for the
same number of iterations (wall times include DIP's automatic TV-weight solve, a few seconds). Per run: steady
PSNR (median of the last 10 % of the trace), rise time
(first iteration within 0.1 dB of the run's own steady PSNR), the iteration and wall time at which the
run first comes within 0.1 dB of DIP's steady PSNR, and the speed-up of EDIP over DIP to that target.

Rows go to ``--out``/rows.jsonl (appended atomically per run; a rerun skips finished runs); a Markdown
table is printed and ``--out``/edip.png shows PSNR against iteration and the Jacobian spectra of
both networks at initialisation on the CT slice.

    python benchmarks/edip_speedup.py --size 128 --count 3000 --epochs 12 --out bench_edip
    python benchmarks/edip_speedup.py --quick --out /tmp/edip_quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from result_rows import provenance

from invprior.analysis.convergence import rise_time, steady_psnr
from invprior.analysis.jacobian import jacobian_svd
from invprior.config import parse_config
from invprior.data.synthetic import SyntheticPairs
from invprior.experiment import build_problem
from invprior.figures import convergence_figure
from invprior.io import atomic_write
from invprior.methods.dip import DIP
from invprior.methods.edip import EDIP
from invprior.methods.pretrain import pretrain
from invprior.methods.pretrained import load_pretrained

HELD_OUT_SEED = 10_000  # phantoms drawn from this seed onwards are never used for pretraining


def problem_for(image: str, seed: int, args: argparse.Namespace):
    raw = {"seed": seed, "problem": {"operator": "ct_parallel", "operator_params": {"num_angles": args.angles},
                                     "image": image, "size": args.size, "fine_factor": 3,
                                     "noise": {"relative": args.noise}},
           "method": {"name": "fbp"}}
    return build_problem(parse_config(raw).problem, seed)


def phantom_settings(args: argparse.Namespace) -> dict:
    """The pretraining phantoms: plain random ellipses, or with ``--ct-like`` a body ellipse with
    brighter and darker structures carved into it (closer to a CT slice)."""
    if not args.ct_like:
        return {}
    return {"background": (0.2, 0.7), "intensity_range": (-0.45, 0.5), "num_ellipses": (6, 15),
            "axis_range": (0.03, 0.35)}


def pretrained_model(args: argparse.Namespace, operator, network: dict) -> tuple[Path, dict]:
    path = args.out / "pretrained.pt"
    if path.exists():
        model = load_pretrained(path)
        return path, model.metadata.get("cost", {})
    from invprior.core.noise import GaussianNoise
    noise = GaussianNoise(relative=args.noise)
    start = time.perf_counter()
    phantom = phantom_settings(args)
    training = SyntheticPairs(operator, args.count, noise, seed=0, fine_factor=3, **phantom).cache(
        args.out / "pairs.pt")
    validation = SyntheticPairs(operator, 64, noise, seed=1, fine_factor=3, **phantom).cache_in_memory()
    data_s = time.perf_counter() - start
    start = time.perf_counter()
    model = pretrain(training, validation, "unet", network, epochs=args.epochs, batch_size=args.batch_size,
                     lr=args.pretrain_lr, out=path)
    train_s = time.perf_counter() - start
    model.metadata["cost"] = {"data_s": data_s, "train_s": train_s, "count": args.count, "epochs": args.epochs,
                              "val_psnr": model.history["val_psnr"][-1],
                              "val_input_psnr": model.history["val_input_psnr"][-1]}
    model.save(path)
    return path, model.metadata["cost"]


def run_pair(problem, path: Path, args: argparse.Namespace, network: dict) -> dict:
    common = dict(regularizer="tv_anisotropic", weight="auto", stopping="fixed",
                  stopping_params={"iterations": args.iterations}, max_iterations=args.iterations, log_every=10)
    runs = {}
    for name, method in (("dip", DIP(generator_params={**network, "input_channels": 32}, lr=args.dip_lr, **common)),
                         ("edip", EDIP(pretrained=path, lr=args.edip_lr, **common))):
        result = method.reconstruct(problem, progress=True)
        runs[name] = {"iterations": result.trace["iteration"], "psnr": result.trace["psnr"],
                      "seconds_per_iteration": result.wall_time / result.iterations}
    target = steady_psnr(runs["dip"]["psnr"])
    for run in runs.values():
        run["steady_psnr"] = steady_psnr(run["psnr"])
        run["rise_time"] = rise_time(run["iterations"], run["psnr"])
        run["to_dip_steady"] = rise_time(run["iterations"], run["psnr"], target=target)
    return runs


def spectra(problem, path: Path, network: dict, k: int) -> list[tuple[str, torch.Tensor]]:
    """Leading singular values of dG/dtheta at initialisation: DIP (fresh, noise input) and EDIP."""
    out = []
    dip = DIP(generator_params={**network, "input_channels": 32})._build_generator(problem)
    edip = load_pretrained(path).generator.to(problem.y.dtype)
    for label, generator in (("DIP at initialisation", dip), ("EDIP (pretrained)", edip)):
        z = generator.make_input(problem, 0)
        out.append((label, jacobian_svd(generator, z, k, power_iterations=1)[1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--angles", type=int, default=30)
    parser.add_argument("--noise", type=float, default=0.025)
    parser.add_argument("--count", type=int, default=3000, help="pretraining pairs")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--iterations", type=int, default=3000, help="DIP and EDIP iterations per run")
    parser.add_argument("--dip-lr", type=float, default=1e-3)
    parser.add_argument("--edip-lr", type=float, default=3e-4)
    parser.add_argument("--held-out", type=int, default=2, help="held-out ellipse phantoms")
    parser.add_argument("--spectrum-k", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("bench_edip"))
    parser.add_argument("--ct-like", action="store_true", help="pretrain on CT-like phantoms (body ellipse)")
    parser.add_argument("--quick", action="store_true", help="32x32, 20 angles, 512 pairs: a smoke run")
    parser.add_argument("--docs", type=Path, help="also write the table as this results page (e.g. "
                                                  "docs/results/edip.md), with the command, machine and date")
    args = parser.parse_args()
    if args.quick:
        args.size, args.angles, args.count, args.epochs, args.iterations, args.held_out = 32, 20, 512, 6, 600, 1
        args.spectrum_k = 20
    args.out.mkdir(parents=True, exist_ok=True)
    network = {"preset": "small"}
    images = [("ct_slice", 0)] + [("ellipses", HELD_OUT_SEED + i) for i in range(args.held_out)]
    first = problem_for(*images[0], args)
    path, cost = pretrained_model(args, first.operator, network)
    print(f"pretraining: {json.dumps(cost)}")

    rows_path = args.out / "rows.jsonl"
    settings = {k: getattr(args, k) for k in ("size", "angles", "noise", "count", "epochs", "iterations", "dip_lr",
                                              "edip_lr", "ct_like")}
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    rows = [r for r in rows if r.get("settings") == settings]  # rows of other settings are not mixed in
    done = {(r["image"], r["seed"]) for r in rows}
    for image, seed in images:
        if (image, seed) in done:
            continue
        problem = first if (image, seed) == images[0] else problem_for(image, seed, args)
        runs = run_pair(problem, path, args, network)
        rows.append({"image": image, "seed": seed, "settings": settings,
                     **{f"{name}_{key}": value for name, run in runs.items() for key, value in run.items()}})
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(rows_path, lambda f: f.write(text.encode()))

    lines = ["| image | DIP steady | EDIP steady | DIP rise | EDIP rise | EDIP to DIP steady (it) | speed-up (it) "
             "| speed-up (time) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dip_it, edip_it = r["dip_to_dip_steady"], r["edip_to_dip_steady"]
        speed = dip_it / edip_it if dip_it and edip_it else float("nan")
        time_speed = speed * r["dip_seconds_per_iteration"] / r["edip_seconds_per_iteration"]
        lines.append(f"| {r['image']} ({r['seed']}) | {r['dip_steady_psnr']:.2f} | {r['edip_steady_psnr']:.2f} "
                     f"| {r['dip_rise_time']} | {r['edip_rise_time']} | {edip_it} | {speed:.1f}x | {time_speed:.1f}x |")
    report = "\n".join(lines)
    print("\n" + report)
    if args.docs:
        text = f"# Results: Educated DIP on CT\n\n{provenance()} Pretraining: {json.dumps(cost)}.\n\n{report}\n"
        atomic_write(args.docs, lambda f: f.write(text.encode()))
    head = rows[0]
    marks = {"DIP": head["dip_to_dip_steady"], "EDIP": head["edip_to_dip_steady"]}
    curves = [("DIP", head["dip_iterations"], head["dip_psnr"]), ("EDIP", head["edip_iterations"], head["edip_psnr"])]
    figure = convergence_figure(args.out / "edip.png", curves, spectra(first, path, network, args.spectrum_k),
                                title=f"CT slice {args.size}x{args.size}, {args.angles} angles, "
                                      f"{100 * args.noise:g} % noise",
                                marks=marks, reference=head["dip_steady_psnr"] - 0.1)
    print(f"wrote {rows_path} and {figure}")


if __name__ == "__main__":
    main()
