"""Regenerate the documentation gallery: run the example configurations, copy their figures.

Each example is run with ``invprior run`` into ``--work`` (default ``gallery_runs/``); its
``figure.png`` (and ``uncertainty.png`` when it fits a posterior) is copied to
``docs/figures/gallery/<name>.png`` (``<name>_uncertainty.png``), and its metrics are
printed for the gallery page. Finished examples are skipped on a rerun (DIP runs also resume
from their checkpoints), so an interrupted run loses nothing. ``--demo DIR`` also copies the
figures of an ``invprior demo --out DIR`` run.

    python examples/gallery.py                   # every example (about 20 minutes on two CPU cores)
    python examples/gallery.py --only ct_lin_dip eit_dip
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from invprior.cli import main as invprior_main
from invprior.report import summary_lines

EXAMPLES = Path(__file__).resolve().parent
FIGURES = EXAMPLES.parent / "docs" / "figures" / "gallery"
#: gallery name -> example configuration, one or more per modality page
GALLERY = {
    "denoising_dip": "denoising_dip.toml",
    "inpainting_dip": "inpainting_dip.toml",
    "compressed_sensing_dip": "compressed_sensing_dip.toml",
    "ct_dip_tv": "ct_dip_tv.toml",
    "ct_edip": "ct_edip.toml",
    "ct_lin_dip": "ct_lin_dip.toml",
    "eit_dip": "eit_dip.toml",
    "deblurring_dip": "deblurring_dip.toml",
}


def copy_figures(run: Path, name: str) -> list[Path]:
    copied = []
    for source, suffix in (("figure.png", ""), ("uncertainty.png", "_uncertainty")):
        if (run / source).exists():
            target = FIGURES / f"{name}{suffix}.png"
            shutil.copyfile(run / source, target)
            copied.append(target)
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(GALLERY), help="these examples only")
    parser.add_argument("--work", type=Path, default=Path("gallery_runs"), help="where the runs write")
    parser.add_argument("--demo", type=Path, help="also copy the figures of an `invprior demo --out DIR` run")
    parser.add_argument("--force", action="store_true", help="rerun finished examples")
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    demo = args.demo.resolve() if args.demo is not None else None
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # files an example writes next to it (ct_edip's pretrained model) stay in the work folder
    for name in args.only or GALLERY:
        run = Path(name)
        if args.force or not (run / "metrics.json").exists():
            code = invprior_main(["run", str(EXAMPLES / GALLERY[name]), "--out", str(run), "--quiet"])
            if code != 0:
                raise SystemExit(f"{name}: invprior run exited with status {code}")
        copy_figures(run, name)
        metrics = json.loads((run / "metrics.json").read_text())
        lines = summary_lines(metrics, [role for role in ("baseline", "method") if role in metrics])
        print("\n".join([f"{name}:", *lines]), flush=True)
    if demo is not None:
        for path in copy_figures(demo, "demo"):
            print(f"demo: {path}")


if __name__ == "__main__":
    main()
