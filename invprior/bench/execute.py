"""Run a suite: every run in its own worker process (a process pool, or a Dask cluster), one JSON
record per run written atomically under ``<out>/runs/<key>.json`` (and its reconstruction and truth
in ``<key>.npz``); finished runs are skipped.

The same function, ``run_one``, executes a run on either executor: it simulates the problem,
runs the method (and the posterior when configured) and returns the row, or the error with its
traceback when the run fails, so a failing run never stops the suite.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from invprior.bench.suite import Run
from invprior.errors import ConfigError
from invprior.io import atomic_write, write_npz
from invprior.validation import choice

__all__ = ["EXECUTORS", "run_one", "run_suite", "git_commit"]

EXECUTORS = ("local", "dask")
#: Key of a record's images (reconstruction and truth), which ``run_suite`` stores in ``runs/<key>.npz``.
IMAGES = "_images"


def git_commit() -> str:
    """The commit of the invprior checkout, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    else:
        out[prefix] = value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)


def run_one(run: Run, commit: str, threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Execute ``run`` on ``device`` with ``threads`` torch threads (the caller's count is restored) and return its
    record: settings, metrics, timings, peak memory, versions."""
    from invprior import __version__
    from invprior.analysis.calibration import posterior_calibration
    from invprior.config import parse_config
    from invprior.experiment import build_method, build_posterior, build_problem, scores

    caller_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    record: dict[str, Any] = {"key": run.key, "label": run.label, "setting": run.setting, "method_key": run.method,
                              "commit": commit, "invprior": __version__, "threads": threads, "device": device,
                              "torch": torch.__version__, "python": platform.python_version()}
    _flatten("", run.config, record)
    start = time.perf_counter()
    try:
        config = parse_config(run.config)
        problem = build_problem(config.problem, config.seed).to(device)
        x_true = problem.x_true
        if x_true is None:
            raise ConfigError("bench: the problem has no ground truth x_true to score the run against")
        result = build_method(config.method, "method").reconstruct(problem, progress=False)
        metrics = scores(result, problem)
        record.update(status="ok", psnr=metrics["psnr_mean"], ssim=metrics.get("ssim_mean"),
                      iterations=result.iterations, stop_reason=result.stop_reason)
        record[IMAGES] = {"x_hat": result.image.detach().cpu().numpy(), "x_true": x_true.cpu().numpy()}
        if config.posterior is not None:
            posterior = build_posterior(config.posterior, progress=False, seed=config.seed).fit(result, problem)
            record.update({f"posterior_{k}": v for k, v in posterior_calibration(posterior, x_true).items()})
    except Exception as exc:  # recorded, never raised: one failing run must not stop the suite
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
    finally:  # a run in the caller's process must not leave its thread count behind
        torch.set_num_threads(caller_threads)
    record["wall_time_s"] = time.perf_counter() - start
    record["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def _dask_client(scheduler: str | None, workers: int):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("the dask executor needs dask.distributed: pip install 'invprior[bench]'") from None
    if scheduler:
        return Client(scheduler)
    return Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))


def run_suite(runs: Iterable[Run], out: str | Path, executor: str = "local", workers: int = 2,
              scheduler: str | None = None, threads: int = 1, device: str = "cpu",
              progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every run of ``runs`` not yet finished in ``out``; return all records (old and new).

    ``executor="local"``: a process pool of ``workers`` processes, each used for one run only;
    ``"dask"``: ``dask.distributed`` at ``scheduler`` (a ``LocalCluster`` of ``workers`` processes when
    ``None``; there a worker serves several runs, so ``peak_memory_mib`` is its peak so far). Every run uses
    ``device`` (a torch device name). Failed
    runs, including runs whose worker died, are recorded and tried again on the next call.
    """
    choice(executor, EXECUTORS, "bench: executor")
    folder = Path(out) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    runs = list(runs)
    records = {r.key: json.loads((folder / f"{r.key}.json").read_text()) for r in runs
               if (folder / f"{r.key}.json").exists()}
    todo = [r for r in runs if records.get(r.key, {}).get("status") != "ok"]
    commit = git_commit()

    def store(record: dict[str, Any]) -> None:
        images = record.pop(IMAGES, None)
        if images is not None:  # before the record: a record marked ok always has its images
            write_npz(folder / f"{record['key']}.npz", **images)
        text = json.dumps(record, indent=1, default=str)
        atomic_write(folder / f"{record['key']}.json", lambda f: f.write(text.encode()))
        records[record["key"]] = record
        if progress is not None:
            progress(record)

    def collect(future, run: Run) -> None:
        try:
            store(future.result())
        except Exception as exc:  # the worker itself died (killed, out of memory): record it, go on
            store({"key": run.key, "label": run.label, "setting": run.setting, "method_key": run.method,
                   "status": "failed", "error": f"worker lost: {type(exc).__name__}: {exc}",
                   "wall_time_s": float("nan"), "commit": commit})

    if todo and executor == "local":
        with ProcessPoolExecutor(max_workers=workers, max_tasks_per_child=1) as pool:
            futures = {pool.submit(run_one, r, commit, threads, device): r for r in todo}
            for future in as_completed(futures):
                collect(future, futures[future])
    elif todo:
        from dask.distributed import as_completed as dask_completed
        client = _dask_client(scheduler, workers)
        try:
            futures = {client.submit(run_one, r, commit, threads, device, pure=False): r for r in todo}
            for future in dask_completed(list(futures)):
                collect(future, futures[future])
        finally:
            cluster = client.cluster
            client.close()
            if cluster is not None and scheduler is None:
                cluster.close()
    return [records[r.key] for r in runs if r.key in records]
