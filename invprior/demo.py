"""``invprior demo``: the real CT slice, 30-angle parallel beam, 2.5 % noise; FBP vs TV vs DIP+TV,
then lin-DIP error bars around the DIP+TV image.

Data are simulated on a 3x finer grid (no inverse crime). TV picks its weight by the discrepancy
principle (what a user tries first); DIP+TV runs with ``DIP``'s automatic choices (TV weight by held-out
cross-validation, TV start, averaged weights, a 1000-iteration budget), so nothing is tuned with the ground
truth. The linearised Laplace posterior (scalable path, a short type-II fit and Matheron samples, sized for two
CPU cores) gives the std map and the calibration plot in ``uncertainty.png``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from invprior.config import ComponentSpec, parse_config
from invprior.errors import ConvergenceWarning
from invprior.experiment import build_method, build_posterior, build_problem
from invprior.report import summary_lines, write_report
from invprior.validation import output_folder

DEMO: dict[str, Any] = {
    "seed": 0,
    "problem": {"operator": "ct_parallel", "operator_params": {"num_angles": 30}, "image": "ct_slice",
                "size": 128, "fine_factor": 3, "noise": {"relative": 0.025}},
    "baseline": {"name": "fbp"},
    "method": {"name": "dip", "params": {
        "generator": "unet", "generator_params": {"preset": "small", "input_channels": 32},
        "regularizer": "tv_anisotropic", "weight": "auto", "init": "tv", "average": 0.99, "stopping": "fixed",
        "lr": 1e-3, "max_iterations": 1000, "log_every": 10}},
    "posterior": {"name": "linearized_laplace", "params": {
        "solver": {"kind": "scalable", "dtype": "float32"}, "prior": {"variance": "auto"},
        "evidence": {"iterations": 20, "lr": 0.05, "num_probes": 4, "cg_iterations": 50, "cg_rtol": 3e-2,
                     "preconditioner_rank": 1200},
        "sampling": {"num_samples": 1000, "cg_rtol": 3e-2}}},
}
QUICK = {"size": 64}

def demo_config(quick: bool = False) -> dict:
    """The demo's configuration; ``quick`` uses the image size in ``QUICK``."""
    config = copy.deepcopy(DEMO)
    if quick:
        config["problem"]["size"] = QUICK["size"]
    return config


def run_demo(out: Path, progress: bool = True, device: torch.device | str = "cpu", quick: bool = False,
             keep_checkpoint: bool = False) -> dict:
    """Run FBP, TV (discrepancy principle) and DIP+TV (automatic choices) and write metrics and figures to ``out``;
    DIP checkpoints in ``out`` (a stopped demo resumes) and, unless ``keep_checkpoint``, removes it once done. An
    ``out`` that cannot be written is refused before any work (``ConfigError``)."""
    output_folder(out)
    raw = demo_config(quick)
    config = parse_config(raw)
    assert config.baseline is not None and config.posterior is not None  # both are in DEMO
    problem = build_problem(config.problem, config.seed).to(device)
    dip = build_method(config.method, "method", checkpoint=out / f"checkpoint-dip-{config.problem.size}px.pt",
                       resume=True)
    results = {
        "fbp": build_method(config.baseline, "baseline").reconstruct(problem, progress),
        "tv": build_method(ComponentSpec("tv"), "tv").reconstruct(problem, progress),
        "dip_tv": dip.reconstruct(problem, progress),
    }
    posterior = build_posterior(config.posterior, progress=progress, seed=config.seed)
    with warnings.catch_warnings(record=True) as caught:  # the short demo budget leaves some CG solves loose
        warnings.simplefilter("always", ConvergenceWarning)
        posterior.fit(results["dip_tv"], problem)
    metrics = write_report(out, problem, results, raw, title="CT slice, 30 angles, 2.5 % noise", posterior=posterior,
                           posterior_name="lin-DIP")
    print("\n".join(summary_lines(metrics, list(results))))
    if not keep_checkpoint:  # the results are written: the state to resume from is no longer needed
        for path in dip.checkpoint_files(problem.batch_size):
            path.unlink(missing_ok=True)
    print(f"DIP+TV: {results['dip_tv'].stop_reason}")
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            print(f"note: {warning.message}")
    names = ("metrics.json", "reconstruction.npz", "figure.png", "uncertainty.png")
    written = ", ".join(str(out / name) for name in names)
    print(f"wrote {written}")
    return metrics

__all__ = ["run_demo", "demo_config"]
