"""DIP fits alone and beside another busy process, with invprior's thread choice and with torch's.

Each fit is the ``invprior run`` command in a fresh process on a fresh output folder (wall time of the whole
command: start-up, the automatic TV weight and the DIP+TV fit). "invprior" runs the command as shipped:
``--threads auto`` takes torch's thread count less the cores busy when it starts, then follows other processes'
load during the fit (``invprior.threads``).
"torch" keeps torch's default, a thread on every core (``--threads`` = that count). The competitor is a
pure-Python busy loop on one core (``loop``) or a torch process multiplying matrices with torch's defaults
(``torch``); "beside" starts it a second before the fit, "joined" ``--join-after`` seconds after the fit
started (then the thread count was chosen on an idle machine); it is killed when the fit ends. Nothing else
should run meanwhile. The slowdown is the time beside (joined) over the time alone of the same settings.

    python benchmarks/contention.py --out bench_contention [--docs docs/results/contention.md]
    python benchmarks/contention.py --quick --out /tmp/contention
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from result_rows import provenance, write_results

COMPETITORS = {
    "loop": "while True: pass",
    "torch": "import torch\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a.T / 256)",
}

CONFIG = """seed = 0
[problem]
operator = "ct_parallel"
image = "ct_slice"
size = {size}
operator_params = {{ num_angles = 30 }}
noise = {{ relative = 0.025 }}
[method]
name = "dip"
[method.params]
generator_params = {{ preset = "small" }}
max_iterations = {iterations}
"""


def settings_arguments(name: str) -> list[str]:
    """The command's extra arguments for the settings called ``name``."""
    return [] if name == "invprior" else ["--threads", str(torch.get_num_threads())]


def timed_run(config: Path, out: Path, settings: str, competitor: str | None, join_after: float | None) -> float:
    """Seconds of one ``invprior run`` with ``settings``, alone (no ``competitor``), beside it (``join_after``
    ``None``: it starts first) or joined by it ``join_after`` seconds into the run."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "invprior", "run", str(config), "--out", str(out), "--quiet",
               *settings_arguments(settings)]
    rival = None
    try:
        if competitor and join_after is None:
            rival = subprocess.Popen([sys.executable, "-c", COMPETITORS[competitor]])
            time.sleep(1.0)
        start = time.perf_counter()
        fit = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        if competitor and join_after is not None:
            try:
                fit.wait(timeout=join_after)
            except subprocess.TimeoutExpired:
                rival = subprocess.Popen([sys.executable, "-c", COMPETITORS[competitor]])
        if fit.wait() != 0:
            raise RuntimeError(f"{' '.join(command)} failed")
        return time.perf_counter() - start
    finally:
        if rival:
            rival.kill()
            rival.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes (CT slice, 30 angles)")
    parser.add_argument("--iterations", type=int, default=300, help="DIP iterations per fit")
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="loop")
    parser.add_argument("--join-after", type=float, default=5.0, help="seconds into the fit the joining competitor "
                                                                         "starts")
    parser.add_argument("--out", type=Path, default=Path("bench_contention"))
    parser.add_argument("--quick", action="store_true", help="32x32, 100 iterations: a smoke run")
    parser.add_argument("--docs", type=Path, help="also write the table as this results page (e.g. "
                                                  "docs/results/contention.md), with the command, machine and date")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.iterations = [32], 100
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"| image | settings | alone (s) | beside a busy {args.competitor} (s) | slowdown "
             f"| joined after {args.join_after:g} s (s) | slowdown |", "|---|---|---|---|---|---|---|"]
    for size in args.sizes:
        config = args.out / f"ct_{size}.toml"
        config.write_text(CONFIG.format(size=size, iterations=args.iterations))
        for settings in ("invprior", "torch"):
            alone = timed_run(config, args.out / "run", settings, None, None)
            beside = timed_run(config, args.out / "run", settings, args.competitor, None)
            joined = timed_run(config, args.out / "run", settings, args.competitor, args.join_after)
            lines.append(f"| {size}x{size}, {args.iterations} it | {settings} | {alone:.1f} | {beside:.1f} "
                         f"| {beside / alone:.2f}x | {joined:.1f} | {joined / alone:.2f}x |")
            print(lines[-1], flush=True)
    shutil.rmtree(args.out / "run", ignore_errors=True)
    page = "\n".join(lines) + "\n"
    write_results(args.out, page, args.docs, f"# Results: DIP beside another busy process\n\n{provenance()} "
                  "What it measures: the docstring of `benchmarks/contention.py`.\n\n")


if __name__ == "__main__":
    main()
