"""The ``invprior`` command line: ``run`` a configuration, ``demo``, ``bench`` a suite, ``list`` registered
components."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch

from invprior import __version__, registry
from invprior.config import load_config
from invprior.errors import ConfigError, InvpriorError
from invprior.threads import sharing_cores, thread_count
from invprior.validation import DTYPES, output_folder, torch_device, torch_dtype

THREADS_HELP = ("torch threads: auto (torch's default, less the cores other processes keep busy; the default) "
                "or a number")
DEVICE_HELP = "torch device: auto (a CUDA GPU when there is one, else the CPU; the default), cpu, cuda, cuda:N, mps"


def _use_threads(args: argparse.Namespace) -> AbstractContextManager[object]:
    """Set torch's thread count from ``--threads`` and return the context for the command's work: for ``auto``,
    torch's default less the cores busy right now, then following other processes' load during the work
    (``invprior.threads.sharing_cores``); a number stays as given."""
    default = torch.get_num_threads()
    try:
        count = thread_count(args.threads, default)
    except ValueError as exc:
        raise ConfigError(f"--threads: {exc}") from None
    torch.set_num_threads(count)
    if args.threads == "auto" and count < default and not args.quiet:
        print(f"using {count} of {default} torch threads: other processes keep the rest of the cores busy "
              "(--threads N to choose)")
    return sharing_cores(default) if args.threads == "auto" else nullcontext()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM stops the command as Ctrl-C does: what is finished is kept, exit code 130."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _working_in(out: Path, threads: AbstractContextManager[object]) -> Iterator[None]:
    """A command's work: ``out`` held (``folder_lock``), SIGTERM stopping it as Ctrl-C does, within ``threads``
    (the context ``_use_threads`` returned)."""
    from invprior.io import folder_lock

    with folder_lock(out), _sigterm_as_interrupt(), threads:
        yield


def _run(args: argparse.Namespace) -> int:
    from invprior.experiment import run
    from invprior.report import problem_notes, summary_lines, write_report

    threads = _use_threads(args)
    device = torch_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    config = load_config(args.config)
    out = output_folder(args.out)
    with _working_in(out, threads):
        done = run(config, not args.quiet, device, dtype, workdir=out)
        metrics = write_report(out, done.problem, {"baseline": done.baseline, "method": done.reconstruction},
                               config.raw, title=config.problem.label, posterior=done.posterior,
                               posterior_name=config.posterior.name if config.posterior else "")
        if not args.keep_checkpoint:  # the results are written: the state to resume from is no longer needed
            for path in done.checkpoints:
                path.unlink(missing_ok=True)
    for line in problem_notes(done.problem):
        print(line)
    print("\n".join(summary_lines(metrics, ["baseline", "method"])))
    written = ["metrics.json", "reconstruction.npz", "figure.png"]
    written += ["trace.csv"] if done.reconstruction.trace else []
    written += ["uncertainty.png"] if done.posterior is not None and done.problem.x_true is not None else []
    written += ["segmentation.png", "segmentation_figure.png"] if done.problem.reference is not None else []
    print(f"wrote {', '.join(str(out / name) for name in written)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from invprior.demo import run_demo

    threads = _use_threads(args)
    device = torch_device(args.device)
    out = output_folder(args.out)
    with _working_in(out, threads):
        run_demo(out, progress=not args.quiet, device=device, quick=args.quick, keep_checkpoint=args.keep_checkpoint)
    return 0


def _design(args: argparse.Namespace) -> int:
    from invprior.design.compare import compare_designs
    from invprior.design.config import load_design_config

    threads = _use_threads(args)
    device = torch_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    config = load_design_config(args.config)
    out = output_folder(args.out)
    settings = config.settings
    print(f"design: {', '.join(config.strategies)}; {settings.start} measurements, then {settings.batch} at a time "
          f"up to {settings.budget} -> {out}", flush=True)
    with _working_in(out, threads):
        done = compare_designs(config, out, device, dtype, progress=not args.quiet,
                               report=lambda line: print(line, flush=True))
    print(f"wrote {', '.join(str(path) for path in done.written)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from invprior.bench import load_suite, run_suite, write_results
    from invprior.bench.execute import SuiteInterrupted

    device = torch_device(args.device)
    name, runs = load_suite(args.suite)
    out = output_folder(args.out)
    print(f"suite {name}: {len(runs)} runs -> {out}")

    def report(record: dict) -> None:
        outcome = f"PSNR {record['psnr']:.2f} dB" if record["status"] == "ok" else f"FAILED: {record['error']}"
        print(f"  {record['label']:16s} {record['key']}  {outcome}  ({record['wall_time_s']:.1f} s)", flush=True)

    with _working_in(out, nullcontext()):  # every run sets its own thread count
        try:
            records = run_suite(runs, out, args.executor, args.workers, args.scheduler, args.threads, str(device),
                                progress=report)
        except SuiteInterrupted as exc:
            print(f"invprior: interrupted: {exc}", file=sys.stderr)
            return 130
        paths = write_results(records, out, name)
    failed = sum(r.get("status") != "ok" for r in records)
    print(f"{len(records)} runs ({failed} failed); wrote {', '.join(str(p) for p in paths)}")
    return 1 if failed else 0


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


def _work_options(command: argparse.ArgumentParser, dtype: bool) -> None:
    """The options of the commands that reconstruct in this process: --device, --dtype, --quiet, --threads."""
    command.add_argument("--device", default="auto", help=DEVICE_HELP)
    if dtype:
        command.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="floating-point precision")
    command.add_argument("--quiet", action="store_true", help="no progress bars")
    command.add_argument("--threads", default="auto", help=THREADS_HELP)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invprior", description=__doc__)
    parser.add_argument("--version", action="version", version=f"invprior {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one problem x one method from a TOML configuration")
    run.add_argument("config", help="TOML configuration file")
    run.add_argument("--out", required=True, help="output folder (metrics.json, reconstruction.npz, figure.png)")
    _work_options(run, dtype=True)
    run.add_argument("--keep-checkpoint", action="store_true",
                     help="keep the method's checkpoint in --out after a finished run (a stopped run always keeps it, "
                          "and the next run resumes from it)")
    run.set_defaults(handler=_run)
    demo = sub.add_parser("demo", help="the built-in demo: real CT slice, FBP vs TV vs DIP+TV")
    demo.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    demo.add_argument("--quick", action="store_true", help="a 64x64 version that runs in under a minute")
    _work_options(demo, dtype=False)
    demo.add_argument("--keep-checkpoint", action="store_true",
                      help="keep the DIP checkpoint in --out after a finished demo (a stopped one always keeps it)")
    demo.set_defaults(handler=_demo)
    design = sub.add_parser("design", help="choose measurements adaptively (lin-DIP information gain) and compare "
                                           "with equidistant and random designs")
    design.add_argument("config", help="TOML design configuration (a run configuration plus [design])")
    design.add_argument("--out", required=True, help="output folder (design.json, design.png, strategies/)")
    _work_options(design, dtype=True)
    design.set_defaults(handler=_design)
    bench = sub.add_parser("bench", help="run a benchmark suite (problems x methods x seeds), resumable")
    bench.add_argument("suite", help="suite file (TOML), e.g. benchmarks/suites/smoke.toml")
    bench.add_argument("--out", required=True, help="output folder (runs/, results.csv, summary.md, figures)")
    bench.add_argument("--executor", default="local", choices=["local", "dask"],
                       help="process pool (default) or dask.distributed")
    bench.add_argument("--scheduler", help="dask scheduler address (default: a LocalCluster)")
    bench.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    bench.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    bench.add_argument("--device", default="auto", help=DEVICE_HELP)
    bench.set_defaults(handler=_bench)
    lst = sub.add_parser("list", help="list registered components and the distribution providing each")
    lst.add_argument("kind", nargs="?", choices=registry.KINDS, help="only this kind")
    lst.set_defaults(handler=_list)
    return parser


def _one_line(message: str) -> str:
    """``message`` with its lines joined by spaces: every error the command reports is one line."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``invprior`` command: an ``InvpriorError``, a file that cannot be read or written, or
    running out of GPU memory is one line on stderr and exit code 2; an interrupt (Ctrl-C) is one line and 130."""
    args = make_parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return args.handler(args)
    except (InvpriorError, OSError) as exc:
        print(f"invprior: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as exc:
        print(f"invprior: error: out of GPU memory ({_one_line(str(exc))}); use a smaller problem or --device cpu",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("invprior: interrupted", file=sys.stderr)
        return 130
    finally:  # a caller of main in its own process gets its thread count back
        torch.set_num_threads(threads)

