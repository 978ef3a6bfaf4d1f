"""Sharing the CPU with other processes: OpenMP threads that sleep when idle, and a torch thread count
that leaves busy cores alone.

torch's CPU kernels run on OpenMP threads that, by default, spin for a while after every parallel
region, waiting for the next. Alone, that saves a wake-up; beside another busy process the spinning
threads take the cores it needs and both crawl (``benchmarks/contention.py`` measures it). Two process
settings avoid that: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning; read once, when
torch loads OpenMP, so it must be set before ``import torch``) and no more torch threads than there are
idle cores. Both change the whole process, so the library never applies them: the ``invprior`` command
does, and so can any script that owns its process.
"""

from __future__ import annotations

import os
import sys
import time

WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_waiting() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already; ``True`` if that takes effect, i.e. torch
    has not been imported yet and the variable was not set by the user."""
    if WAIT_POLICY in os.environ or "torch" in sys.modules:
        return False
    os.environ[WAIT_POLICY] = "PASSIVE"
    return True


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
