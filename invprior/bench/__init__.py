"""Benchmark suites: grids of problems x methods x seeds, run isolated on a process pool or a Dask
cluster, resumable, summarised as a table, a Markdown summary and figures (``invprior bench``)."""

from invprior.bench.execute import run_one, run_suite
from invprior.bench.report import write_results
from invprior.bench.suite import Run, expand_suite, load_suite

__all__ = ["Run", "expand_suite", "load_suite", "run_one", "run_suite", "write_results"]
