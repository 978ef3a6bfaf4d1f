"""Calibration of lin-DIP against MC dropout and a deep ensemble on parallel-beam CT.

For every setting (image size x image x number of angles x noise level) one DIP+TV is fitted with
dropout p = 0.05 in its U-Net; then lin-DIP with plain type-II maximum likelihood ("MLL"), lin-DIP
with the TV-PredCP hyperprior ("TV-MAP"), MC dropout on that network and a deep ensemble of DIP
runs are fitted around it. lin-DIP keeps its default image-space noise term
(``image_noise="projected"``) and chooses its mean by the discrepancy principle (``predictive_mean="auto"``);
``lin_mll_no_eta`` and ``lin_mll_dip_mean``, not run by default, are MLL without the term and MLL around the DIP
fit ``x*`` whatever its discrepancy. Each row:
test log-likelihood of the ground truth per pixel on p x p patches (p = 1, 2, 10), 95 % coverage,
mean std, RMSE, wall time of the uncertainty fit (with its ratio to the DIP fit) and its peak extra resident memory
(sampled every 10 ms from /proc).
Like the ``invprior`` command, the script lets the C heap keep freed memory (``invprior.allocator``: lin-DIP's
batched products then reuse their pages instead of faulting in fresh ones); ``--plain-allocator`` keeps glibc's
defaults.

Rows go to ``--out`` (JSON lines, appended atomically per row); a rerun skips the rows already
there, so an interrupted benchmark resumes. At the end a Markdown table is printed, then per setting lin-DIP's
margin over the best baseline at p = 1, 2, 10 and the number of settings lin-DIP wins. ``lin_mixture``
(not run by default) is lin-DIP around each of the deep ensemble's fits, an equal-weight Gaussian mixture
(``LaplaceMixture``); it is scored against the baselines in a table of its own. Run with ``deep_ensemble`` it
reuses the ensemble's member fits (``fit_around``; same seeds) and its time counts theirs.

    python benchmarks/uq_calibration.py --sizes 28 --angles 5 10 20 30 --noise 0.05 0.1
    python benchmarks/uq_calibration.py --sizes 128 --images ct_slice --angles 30 --noise 0.025 --methods lin_mll
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import warnings
from pathlib import Path

import torch
from result_rows import provenance

from invprior.allocator import reuse_freed_memory
from invprior.analysis.calibration import posterior_calibration
from invprior.config import ComponentSpec, parse_config
from invprior.errors import ConvergenceWarning
from invprior.experiment import build_method, build_posterior, build_problem
from invprior.io import atomic_write
from invprior.report import mean_choice

PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every 10 ms by a thread."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2 ** 20


def dip_params(size: int, patience: int = 500) -> dict:
    """DIP+TV with a 3-scale U-Net (dropout 0.05 so MC dropout can use the same fit); ES-WMV stopping
    (window 100, ``patience`` iterations, watching only once ``||A x - y|| <= 1.1 delta``: no stop before the data
    are fitted); Adam's lr 1e-2 up to 32x32, 3e-3 at 64x64, 1e-3 above (the demo's)."""
    return {"generator": "unet", "generator_params": {"preset": "small", "scales": 3,
                                                      "channels": 16 if size <= 32 else 32, "dropout": 0.05},
            "regularizer": "tv_anisotropic", "weight": "auto", "stopping": "eswmv",
            "stopping_params": {"window": 100, "patience": patience, "discrepancy_tau": 1.1},
            "lr": 1e-2 if size <= 32 else 3e-3 if size <= 64 else 1e-3,
            "max_iterations": 2000 if size <= 32 else 3000}


def posterior_specs(size: int, quick: bool, steps: int, variance: float | str, samples: int | None) -> dict[str, dict]:
    """Registry name and parameters per method; the scalable lin-DIP path above 32x32 pixels."""
    scalable = size * size > 1024
    samples = samples or (64 if quick else 1000)
    solver: dict = {"kind": "exact"}
    prior = {"variance": variance}
    evidence: dict = {"iterations": steps, "lr": 0.05}
    sampling: dict = {}
    if scalable:
        solver = {"kind": "scalable", "batch": "auto", "dtype": "float32"}
        evidence.update(num_probes=4 if size >= 128 else 8, cg_iterations=50, preconditioner_rank=1200)
        sampling = {"preconditioner_rank": 2000 if size >= 128 else 1200, "num_samples": samples, "cg_rtol": 1e-2}
    lin = {"solver": solver, "prior": prior, "evidence": evidence, "sampling": sampling}
    members = 2 if quick else 5
    per_member = {"num_samples": max(1, samples // members)} if scalable else {}  # the pool holds ``samples``
    return {
        "lin_mll": {"name": "linearized_laplace", "params": dict(lin)},
        "lin_tv_map": {"name": "linearized_laplace", "params": {**lin, "prior": {**prior, "hyperprior": "tv_pred_cp"}}},
        "lin_mll_no_eta": {"name": "linearized_laplace", "params": {**lin, "sampling": {**sampling,
                                                                                         "image_noise": "none"}}},
        "lin_mll_dip_mean": {"name": "linearized_laplace", "params": {**lin, "sampling": {**sampling,
                                                                                           "mean": "network"}}},
        "mc_dropout": {"name": "mc_dropout", "params": {"num_samples": samples}},
        "deep_ensemble": {"name": "deep_ensemble", "params": {"members": members}},
        "lin_mixture": {"name": "laplace_mixture",
                        "params": {"members": members, "laplace": {**lin, "sampling": {**sampling, **per_member}}}},
    }


def key(row: dict) -> tuple:
    return (row["size"], row["image"], row["angles"], row["noise"], row["seed"], row.get("patience", 500),
            row["method"])


def run_setting(size: int, image: str, angles: int, noise: float, seed: int, methods: list[str],
                args: argparse.Namespace, done: set[tuple]) -> list[dict]:
    quick, out = args.quick, args.out
    config = parse_config({
        "seed": seed,
        "problem": {"operator": "ct_parallel", "operator_params": {"num_angles": angles}, "image": image,
                    "size": size, "noise": {"relative": noise}},
        "method": {"name": "dip",
                   "params": {**dip_params(size, args.patience), **({"max_iterations": 200} if quick else {})}},
    })
    base = {"size": size, "image": image, "angles": angles, "noise": noise, "seed": seed,
            **({"patience": args.patience} if args.patience != 500 else {})}
    todo = [m for m in methods if key({**base, "method": m}) not in done]
    if not todo:
        return []
    problem = build_problem(config.problem, seed, torch.float32)
    dip = build_method(config.method, "method").reconstruct(problem, progress=False)
    psnr = float(-10 * torch.log10(((dip.image - problem.x_true) ** 2).mean() / problem.x_true.max() ** 2))
    rows = []
    specs = posterior_specs(size, quick, args.steps, args.variance, args.samples)
    ensemble: dict = {}  # the deep ensemble's member fits, which the mixture reuses (same seeds)
    for method in sorted(todo, key=lambda m: m == "lin_mixture"):
        spec = ComponentSpec(specs[method]["name"], specs[method]["params"])
        posterior = build_posterior(spec, progress=False, seed=seed)
        reused = method == "lin_mixture" and bool(ensemble)
        with warnings.catch_warnings(record=True) as caught, PeakMemory() as memory:
            warnings.simplefilter("always", RuntimeWarning)
            start = time.perf_counter()
            if reused:
                posterior.fit_around(ensemble["fits"], problem)
            else:
                posterior.fit(dip, problem)
            seconds = time.perf_counter() - start + (ensemble["seconds"] if reused else 0.0)
        if method == "deep_ensemble":
            ensemble = {"fits": posterior.fits, "seconds": seconds}
        others = [str(w.message) for w in caught if not issubclass(w.category, ConvergenceWarning)]
        row = {**base, "method": method, "dip_psnr": psnr, "dip_seconds": dip.wall_time,
               "dip_iterations": dip.iterations, "dip_kept_iteration": dip.extras["best_iteration"],
               "reused_freed_memory": args.reused_freed_memory,
               "seconds": seconds, "time_ratio_to_dip": seconds / dip.wall_time, "peak_extra_mib": memory.extra_mib,
               **({"reused_member_fits_seconds": ensemble["seconds"]} if reused else {}),
               "cg_warnings": len(caught) - len(others),
               "other_warnings": sorted({message[:200] for message in others}),
               "cg_summary": getattr(posterior, "cg_summary", {}),
               **mean_choice(posterior),
               **posterior_calibration(posterior, problem.x_true)}
        rows.append(row)
        with out.open("a") as handle:  # one complete line per row: a killed run loses at most the row in flight
            handle.write(json.dumps(row) + "\n")
        print(f"{size}px {image} {angles} angles {noise:.0%}: {method:13s} LL1 {row.get('ll_p1', float('nan')):7.3f} "
              f"cov {row['coverage_95']:.3f}  {seconds:7.1f} s ({row['time_ratio_to_dip']:.2f}x DIP)  "
              f"{memory.extra_mib:7.1f} MiB", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| size | image | angles | noise | method | LL p=1 | LL p=2 | LL p=10 | coverage 95 | time s | x DIP | "
            "peak MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda row, k: f"{row[k]:.3f}" if k in row else "-"  # noqa: E731
    for row in sorted(rows, key=key):
        lines.append(f"| {row['size']} | {row['image']} | {row['angles']} | {row['noise']:.0%} | {row['method']} | "
                     f"{fmt(row, 'll_p1')} | {fmt(row, 'll_p2')} | {fmt(row, 'll_p10')} | {row['coverage_95']:.3f} | "
                     f"{row['seconds']:.1f} | {row['time_ratio_to_dip']:.2f} | {row['peak_extra_mib']:.0f} |")
    return "\n".join(lines)


LL_PATCHES = (1, 2, 10)


CONTENDERS = {  # the lin-DIP around the one DIP fit, and the mixture around the ensemble's fits
    "lin-DIP": lambda method: method.startswith("lin_") and method != "lin_mixture",
    "lin-DIP mixture": lambda method: method == "lin_mixture",
}


def winners(rows: list[dict], contender: str = "lin-DIP") -> str:
    """Per setting, the contender's best test log-likelihood (``CONTENDERS``) against the best baseline's (MC
    dropout, deep ensemble) at p = 1, 2, 10 (margin = difference in nats per pixel), and in how many settings
    with both it wins; empty when no setting has both."""
    settings: dict[tuple, list[dict]] = {}
    for row in rows:
        settings.setdefault(key(row)[:-1], []).append(row)
    head = "| setting | " + " | ".join(f"p={p}: {contender} - best baseline" for p in LL_PATCHES) + " |"
    lines, wins, counted = [head, "|" + "---|" * (head.count("|") - 1)], dict.fromkeys(LL_PATCHES, 0), 0
    for setting, group in sorted(settings.items()):
        lin = [r for r in group if CONTENDERS[contender](r["method"])]
        other = [r for r in group if not r["method"].startswith("lin_")]
        if not lin or not other:
            continue
        counted += 1
        cells = []
        for p in LL_PATCHES:
            best_lin = max(r.get(f"ll_p{p}", float("-inf")) for r in lin)
            best_other = max(other, key=lambda r: r.get(f"ll_p{p}", float("-inf")))
            margin = best_lin - best_other.get(f"ll_p{p}", float("-inf"))
            wins[p] += margin > 0
            cells.append(f"{margin:+.3g}" + ("" if margin > 0 else f" ({best_other['method']})"))
        size, image, angles, noise, seed, patience = setting
        label = f"{size} {image} {angles} angles {noise:.0%}" + (f" seed {seed}" if seed else "") + (
            f" patience {patience}" if patience != 500 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if not counted:
        return ""
    counts = ", ".join(f"p = {p}: {wins[p]} of {counted}" for p in LL_PATCHES)
    return "\n".join(lines) + f"\n\n{contender} has the best test log-likelihood in {counts} settings.\n"


def read_rows(path: Path) -> list[dict]:
    """The complete rows of an earlier run (a line cut short by a kill is dropped and rerun)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28])
    parser.add_argument("--images", nargs="+", default=["ellipses", "ct_slice"])
    parser.add_argument("--angles", type=int, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=["lin_mll", "lin_tv_map", "mc_dropout", "deep_ensemble"])
    parser.add_argument("--out", type=Path, default=Path("uq_calibration.jsonl"))
    parser.add_argument("--docs", type=Path, help="also write the tables as this results page (e.g. "
                                                  "docs/results/lin_dip.md), with the command, machine and date")
    parser.add_argument("--quick", action="store_true", help="a few steps and samples: checks the script runs")
    parser.add_argument("--steps", type=int, default=20, help="lin-DIP type-II Adam steps (default 20)")
    parser.add_argument("--variance", type=lambda v: v if v == "auto" else float(v), default="auto",
                        help="lin-DIP's starting prior variance: 'auto' (default) or a number")
    parser.add_argument("--samples", type=int, help="posterior samples (default 1000)")
    parser.add_argument("--patience", type=int, default=500,
                        help="ES-WMV patience of the DIP fits (default 500, the tables' protocol; "
                             "the library's is 1000)")
    parser.add_argument("--plain-allocator", action="store_true",
                        help="keep glibc's allocator defaults (by default the C heap keeps freed memory, as in the "
                             "invprior command: invprior.allocator)")
    args = parser.parse_args()
    args.reused_freed_memory = False if args.plain_allocator else reuse_freed_memory()
    rows = read_rows(args.out)
    done = {key(row) for row in rows}
    for size in args.sizes:
        for image in args.images:
            for angles in args.angles:
                for noise in args.noise:
                    for seed in args.seeds:
                        rows += run_setting(size, image, angles, noise, seed, args.methods, args, done)
    report = "\n\n".join([table(rows), *filter(None, (winners(rows, c) for c in CONTENDERS))])
    print(report)
    if args.docs:
        text = f"# Results: lin-DIP error bars on CT\n\n{provenance()}\n\n{report}\n".encode()
        atomic_write(args.docs, lambda handle: handle.write(text))


if __name__ == "__main__":
    main()
