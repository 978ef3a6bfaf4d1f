"""The ``invprior`` command line: ``run`` a configuration, ``list`` registered components."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from invprior import registry
from invprior.config import load_config
from invprior.errors import InvpriorError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _run(args: argparse.Namespace) -> int:
    from invprior.experiment import run, scores
    from invprior.figures import comparison_figure
    from invprior.io import write_json, write_npz

    config = load_config(args.config)
    out = Path(args.out)
    problem, baseline, result = run(config, not args.quiet, args.device, DTYPES[args.dtype])
    metrics = {"config": config.raw, "problem": problem.metadata,
               "noise_norm": problem.noise_norm.tolist() if problem.noise_norm is not None else None,
               "baseline": scores(baseline, problem), "method": scores(result, problem)}
    write_json(out / "metrics.json", metrics)
    arrays = {"x_hat": result.image, "baseline": baseline.image, "y": problem.y}
    if problem.x_true is not None:
        arrays["x_true"] = problem.x_true
    write_npz(out / "reconstruction.npz", **{k: v.detach().cpu().numpy() for k, v in arrays.items()})
    panels = []
    caption = lambda name, m: f"{name}\nPSNR {m['psnr'][0]:.2f} dB, SSIM {m['ssim'][0]:.3f}" if "psnr" in m else name
    if problem.x_true is not None:
        panels.append(("ground truth", problem.x_true))
    panels += [(caption(baseline.method, metrics["baseline"]), baseline.image),
               (caption(result.method, metrics["method"]), result.image)]
    error = ("|error| of " + result.method, (result.image - problem.x_true).abs()) if problem.x_true is not None else None
    comparison_figure(out / "figure.png", panels, error, title=f"{config.problem.operator.name} / {config.problem.image.name}")
    for name in ("baseline", "method"):
        m = metrics[name]
        quality = f"PSNR {m['psnr_mean']:.2f} dB  SSIM {m['ssim_mean']:.3f}  " if "psnr_mean" in m else ""
        print(f"{name:9s} {m['method']:15s} {quality}time {m['wall_time_s']:.2f} s")
    print(f"wrote {out / 'metrics.json'}, {out / 'reconstruction.npz'}, {out / 'figure.png'}")
    return 0


def _list(args: argparse.Namespace) -> int:
    kinds = [args.kind] if args.kind else list(registry.KINDS)
    failures = 0
    for kind in kinds:
        entries = registry.entries(kind)
        _, failed = registry.load_all(kind)
        print(f"{kind}:")
        if not entries:
            print("  (none registered)")
        for name, entry in entries.items():
            status = "  BROKEN: " + failed[name] if name in failed else ""
            print(f"  {name:18s} {entry.distribution:20s} {entry.target}{status}")
        failures += len(failed)
    return 1 if failures else 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invprior", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one problem x one method from a TOML configuration")
    run.add_argument("config", help="TOML configuration file")
    run.add_argument("--out", required=True, help="output folder (metrics.json, reconstruction.npz, figure.png)")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    run.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="floating-point precision")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)
    lst = sub.add_parser("list", help="list registered components and the distribution providing each")
    lst.add_argument("kind", nargs="?", choices=registry.KINDS, help="only this kind")
    lst.set_defaults(handler=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``invprior`` command."""
    args = make_parser().parse_args(argv)
    try:
        return args.handler(args)
    except InvpriorError as exc:
        print(f"invprior: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
