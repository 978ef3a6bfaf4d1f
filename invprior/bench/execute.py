"""Run a suite: every run in its own worker process (a process pool, or a Dask cluster), one JSON
record per run written atomically under ``<out>/runs/<key>.json`` (and its reconstruction and truth
in ``<key>.npz``); finished runs are skipped.

The same function, ``run_one``, executes a run on either executor: it simulates the problem,
runs the method (and the posterior when configured) and returns the row, or the error with its
traceback when the run fails, so a failing run never stops the suite.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import resource
import subprocess
import time
import traceback
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from invprior.bench.suite import Run
from invprior.errors import ConfigError, StateFileError
from invprior.io import folder_lock, read_checked_json, write_checked_json, write_npz
from invprior.validation import choice, positive_int

__all__ = ["EXECUTORS", "SuiteInterrupted", "run_one", "run_suite", "git_commit"]

EXECUTORS = ("local", "dask")
#: Seconds to wait for a Dask scheduler given by its address.
SCHEDULER_TIMEOUT_S = 5
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


class SuiteInterrupted(KeyboardInterrupt):
    """``run_suite`` was stopped (Ctrl-C, or SIGTERM in the command line); its message says how many runs finished.
    Their records are kept and a new call resumes from them."""


def _dask_client(scheduler: str | None, workers: int):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("the dask executor needs dask.distributed: pip install 'invprior[bench]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"bench: cannot reach the dask scheduler at {scheduler!r} ({exc}); start it, correct "
                              "the address, or leave the scheduler out for a local cluster") from None
    return Client(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None))


def _read_record(folder: Path, run: Run) -> dict[str, Any] | None:
    """The verified record of ``run`` in ``folder`` if it finished; ``None`` (with a warning naming the file when it
    is damaged, foreign or its images are) when the run is still to do."""
    path = folder / f"{run.key}.json"
    if not path.exists():
        return None
    remedy = "The run is done again and its record replaced."
    try:
        record = read_checked_json(path, "run record", remedy)
    except StateFileError as exc:
        warnings.warn(str(exc), stacklevel=3)
        return None
    if record.get("key") != run.key:
        warnings.warn(f"{path}: holds the record of run {record.get('key')!r}, not {run.key!r}; it is not used. "
                      f"{remedy}", stacklevel=3)
        return None
    if record.get("status") == "ok" and not _intact(folder / f"{run.key}.npz"):
        warnings.warn(f"{folder / run.key}.npz: the images of a finished run are missing or damaged. {remedy}",
                      stacklevel=3)
        return None
    return record


def _intact(path: Path) -> bool:
    """Whether ``path`` is a readable ``.npz`` archive whose every member matches its CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def _pool(width: int) -> ProcessPoolExecutor:
    """A pool of ``width`` processes, each for one run only, forked from a server process that has imported this
    module (and torch) once, where the platform has one (``forkserver``); else started afresh (``spawn``)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(max_workers=width, max_tasks_per_child=1)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(max_workers=width, mp_context=context, max_tasks_per_child=1)


def _on_pools(todo: list[Run], workers: int, args: tuple, store: Callable[[dict[str, Any]], None],
              lost: Callable[[Run, str], None]) -> None:
    """Run ``run_one(run, *args)`` for every run of ``todo`` on process pools, at most ``workers`` at a time, one run
    per worker process, and ``store`` each record. A worker that dies breaks its pool and the runs in flight with it:
    when that is one run, it is the one that died and is recorded ``lost``; otherwise they are tried again one at a
    time in a pool of one worker (where a death is that run's), and a new pool takes up the remaining runs."""
    waiting, suspects = deque(todo), deque[Run]()
    while waiting or suspects:
        queue, width = (suspects, 1) if suspects else (waiting, workers)
        pool = _pool(width)
        flying: dict[Future, Run] = {}
        broken: list[Run] = []
        dead = False
        try:
            while (queue and not dead) or flying:
                while queue and not dead and len(flying) < width:
                    run = queue.popleft()
                    try:
                        flying[pool.submit(run_one, run, *args)] = run
                    except BrokenProcessPool:  # the pool broke since the last wait: the runs in flight tell who
                        queue.appendleft(run)
                        dead = True
                done, _ = wait(flying, return_when=FIRST_COMPLETED)
                for future in done:
                    run = flying.pop(future)
                    try:
                        record = future.result()
                    except BrokenProcessPool:
                        broken.append(run)
                        dead = True
                    except Exception as exc:  # the result could not come back (e.g. not picklable)
                        lost(run, f"{type(exc).__name__}: {exc}")
                    else:
                        store(record)
        except BaseException:  # interrupted: stop the workers at once; the stored records stay
            for process in list(pool._processes.values()):
                process.kill()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        if len(broken) == 1:
            lost(broken[0], "its worker process died (killed, or out of memory)")
        else:
            suspects.extend(broken)


def run_suite(runs: Iterable[Run], out: str | Path, executor: str = "local", workers: int = 2,
              scheduler: str | None = None, threads: int = 1, device: str = "cpu",
              progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every run of ``runs`` not yet finished in ``out``; return all records (old and new).

    ``executor="local"``: a process pool of ``workers`` processes, each used for one run only; a worker that dies
    (killed, out of memory) fails only the run it held, and the pool is replaced; ``"dask"``:
    ``dask.distributed`` at ``scheduler`` (a ``LocalCluster`` of ``workers`` processes when ``None``; there a worker
    serves several runs, so ``peak_memory_mib`` is its peak so far). Every run uses ``device`` (a torch device
    name). Records are checksummed: a damaged, truncated or foreign one is not trusted, and its run is done again
    (with a warning naming the file). Failed runs, including runs whose worker died, are recorded and tried again
    on the next call. ``out`` is held for the call (``invprior.io.folder_lock``). An interrupt (Ctrl-C) stops the
    workers and raises ``SuiteInterrupted``; the finished runs are kept.
    """
    choice(executor, EXECUTORS, "bench: executor")
    positive_int(workers, "bench: workers (--workers)")
    runs = list(runs)
    with folder_lock(out):
        folder = Path(out) / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        records: dict[str, dict[str, Any]] = {}
        for run in runs:
            record = _read_record(folder, run)
            if record is not None:
                records[run.key] = record
        todo = [r for r in runs if records.get(r.key, {}).get("status") != "ok"]
        commit = git_commit()

        def store(record: dict[str, Any]) -> None:
            images = record.pop(IMAGES, None)
            if images is not None:  # before the record: a record marked ok always has its images
                write_npz(folder / f"{record['key']}.npz", **images)
            plain = json.loads(json.dumps(record, default=str))  # JSON types, as in the file (where NaN is null)
            write_checked_json(folder / f"{record['key']}.json", plain)
            records[record["key"]] = plain
            if progress is not None:
                progress(plain)

        def lost(run: Run, why: str) -> None:
            store({"key": run.key, "label": run.label, "setting": run.setting, "method_key": run.method,
                   "status": "failed", "error": f"worker lost: {why}", "wall_time_s": float("nan"),
                   "commit": commit})

        try:
            if todo and executor == "local":
                _on_pools(todo, workers, (commit, threads, device), store, lost)
            elif todo:
                _on_dask(todo, scheduler, workers, (commit, threads, device), store, lost)
        except KeyboardInterrupt:
            finished = sum(records.get(r.key, {}).get("status") == "ok" for r in runs)
            raise SuiteInterrupted(f"{finished} of {len(runs)} runs finished and kept in {folder}; run the suite "
                                   "again to resume (finished runs are skipped)") from None
    return [records[r.key] for r in runs if r.key in records]


def _on_dask(todo: list[Run], scheduler: str | None, workers: int, args: tuple,
             store: Callable[[dict[str, Any]], None], lost: Callable[[Run, str], None]) -> None:
    """Run ``run_one(run, *args)`` for every run of ``todo`` on Dask and ``store`` each record; a run whose worker
    died is recorded ``lost``. The cluster started here is closed, also when interrupted."""
    from dask.distributed import as_completed as dask_completed

    client = _dask_client(scheduler, workers)
    try:
        futures = {client.submit(run_one, r, *args, pure=False): r for r in todo}
        for future in dask_completed(list(futures)):
            try:
                record = future.result()
            except Exception as exc:  # the worker itself died (killed, out of memory): record it, go on
                lost(futures[future], f"{type(exc).__name__}: {exc}")
            else:
                store(record)
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None and scheduler is None:
            cluster.close()
