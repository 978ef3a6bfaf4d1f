"""Sharing the CPU with other processes: a torch thread count that leaves busy cores alone.

torch runs its CPU kernels on as many threads as there are cores, and those threads spin for a while after
every parallel region, waiting for the next. Beside another busy process one of them always waits for a core
the other process holds, and a fit slows down several times (``benchmarks/contention.py`` measures it); on
the cores that are idle it runs at full speed. ``thread_count("auto", ...)`` therefore counts the cores idle
when a command starts, and within ``sharing_cores(ceiling)`` the long loops (DIP, TV, pretraining, lin-DIP)
call ``follow_load()``, which every few seconds sets the count to the cores other processes leave idle, up to
``ceiling``: a process that starts or ends during a fit is followed. Both change the whole process, so the
library never applies them on its own: the ``invprior`` command does (``--threads auto``), and so can any
script that owns its process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch


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


def _usable_cpus() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _idle_between(before: tuple[float, float], after: tuple[float, float], cpus: int) -> float | None:
    """Cores idle between two ``(idle, total)`` readings of ``_cpu_times`` over ``cpus`` cores; ``None`` when no
    tick has passed."""
    if after[1] <= before[1]:
        return None
    return cpus * (after[0] - before[0]) / (after[1] - before[1])


def idle_cores(interval: float = 0.2) -> float | None:
    """How many of the cores this process may use were idle over the next ``interval`` seconds (``/proc/stat``,
    Linux); ``None`` where that cannot be measured."""
    cpus = _usable_cpus()
    before = _cpu_times(cpus)
    if before is None:
        return None
    time.sleep(interval)
    after = _cpu_times(cpus)
    return None if after is None else _idle_between(before, after, len(cpus))


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


class CoreShare:
    """Follows other processes' load: ``step()``, called from the thread that runs torch's kernels, sets torch's
    thread count to the usable cores less those other processes kept busy since the last measurement (all busy
    cores in ``/proc/stat`` less this process's CPU time), rounded, between 1 and ``ceiling``; it measures once
    every ``period`` seconds and costs a clock read otherwise."""

    def __init__(self, ceiling: int, period: float = 2.0) -> None:
        if ceiling < 1 or period <= 0:
            raise ValueError(f"CoreShare needs ceiling >= 1 and period > 0, got {ceiling} and {period}")
        self.ceiling, self.period = ceiling, period
        self.cpus = _usable_cpus()
        self._last = self._measure()

    def _measure(self) -> tuple[float, float, tuple[float, float]] | None:
        """``(wall clock, process CPU seconds, (idle, total) ticks)`` now; ``None`` off Linux."""
        ticks = _cpu_times(self.cpus)
        return None if ticks is None else (time.monotonic(), time.process_time(), ticks)

    def other_busy_cores(self) -> float | None:
        """Cores other processes kept busy since the last measurement, which this starts anew; ``None`` when
        nothing can be measured (off Linux, or no tick has passed)."""
        now = self._measure()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        idle = _idle_between(last[2], now[2], len(self.cpus))
        if idle is None:
            return None
        return max(0.0, len(self.cpus) - idle - (now[1] - last[1]) / (now[0] - last[0]))

    def step(self) -> None:
        """Set the thread count when ``period`` seconds have passed since the last measurement."""
        if self._last is None or time.monotonic() - self._last[0] < self.period:
            return
        others = self.other_busy_cores()
        if others is None:
            return
        count = max(1, min(self.ceiling, round(len(self.cpus) - others)))
        if count != torch.get_num_threads():
            torch.set_num_threads(count)


_SHARE: ContextVar[CoreShare | None] = ContextVar("invprior_core_share", default=None)


@contextmanager
def sharing_cores(ceiling: int, period: float = 2.0) -> Iterator[CoreShare]:
    """Within the block, ``follow_load()`` keeps torch's thread count at the cores other processes leave idle (at
    most ``ceiling``); the caller's count is restored after it."""
    share, threads = CoreShare(ceiling, period), torch.get_num_threads()
    token = _SHARE.set(share)
    try:
        yield share
    finally:
        _SHARE.reset(token)
        torch.set_num_threads(threads)


def follow_load() -> None:
    """Called once per step of a long loop: within ``sharing_cores`` adapt the thread count to other processes'
    load (a clock read between measurements); elsewhere nothing."""
    share = _SHARE.get()
    if share is not None:
        share.step()
