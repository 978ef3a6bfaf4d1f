"""Sharing the CPU with other processes: a torch thread count that leaves busy cores alone.

torch runs its CPU kernels on as many threads as there are cores, and those threads spin for a while after
every parallel region, waiting for the next. Beside another busy process one of them always waits for a core
the other process holds, and a fit slows down several times (``benchmarks/contention.py`` measures it); on
the cores that are idle it runs at full speed. ``thread_count("auto", ...)`` therefore counts the cores idle
when a command starts. It changes the whole process, so the library never applies it: the ``invprior``
command does (``--threads auto``), and so can any script that owns its process. A process that starts later
still competes with the threads chosen; ``OMP_WAIT_POLICY=PASSIVE`` in the environment before torch is
imported makes idle threads sleep instead, which costs speed when nothing else runs.
"""

from __future__ import annotations

import os
import time


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """``(idle, total)`` clock ticks so far, summed over ``cpus``, from ``/proc/stat`` (Linux); else ``None``."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    idle = total = 0.0
    for line in lines:
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [float(t) for t in ticks[:8]]  # user nice system idle iowait irq softirq steal
            idle += values[3] + values[4]
            total += sum(values)
    return (idle, total) if total > 0 else None


def idle_cores(interval: float = 0.2) -> float | None:
    """How many of the cores this process may use were idle over the next ``interval`` seconds (``/proc/stat``,
    Linux); ``None`` where that cannot be measured."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    before = _cpu_times(cpus)
    if before is None:
        return None
    time.sleep(interval)
    after = _cpu_times(cpus)
    if after is None or after[1] <= before[1]:
        return None
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def thread_count(requested: str | int, default: int) -> int:
    """The torch thread count for ``requested``: a positive number as given, or ``"auto"``: ``default`` (torch's
    own choice) capped by the cores idle right now (rounded, at least 1)."""
    if requested != "auto":
        count = int(requested) if str(requested).isdigit() else 0
        if count < 1:
            raise ValueError(f"threads must be 'auto' or a positive integer, got {requested!r}")
        return count
    idle = idle_cores()
    return default if idle is None else max(1, min(default, round(idle)))
