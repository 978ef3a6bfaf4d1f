"""The command's CPU sharing: torch threads on idle cores only."""

import os
import subprocess
import sys
import time

import pytest
import torch

from invprior import threads
from invprior.cli import main

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")


def test_importing_invprior_loads_torch_only_when_an_export_is_used():
    code = "import sys, invprior; print('torch' in sys.modules); invprior.InverseProblem; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr


def test_thread_count_takes_numbers_and_caps_auto_by_the_idle_cores(monkeypatch):
    assert threads.thread_count(3, default=2) == 3 and threads.thread_count("5", default=2) == 5
    for bad in (0, -1, "0", "two", "1.5"):
        with pytest.raises(ValueError, match="positive integer"):
            threads.thread_count(bad, default=2)
    for idle, expected in ((0.1, 1), (1.2, 1), (1.6, 2), (7.9, 4), (None, 4)):
        monkeypatch.setattr(threads, "idle_cores", lambda interval=0.2, idle=idle: idle)
        assert threads.thread_count("auto", default=4) == expected


@linux_only
def test_idle_cores_sees_a_busy_process():
    cpus = len(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        idle = threads.idle_cores(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert idle is not None and 0 <= idle <= cpus - 0.5


def test_cli_threads_option_is_checked_and_the_callers_count_restored(tmp_path, capsys):
    before = torch.get_num_threads()
    assert main(["demo", "--out", str(tmp_path), "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("invprior: error: --threads") and "\n" not in err
    assert torch.get_num_threads() == before


@linux_only
def test_core_share_counts_other_processes_but_not_its_own():
    share = threads.CoreShare(ceiling=2, period=0.1)
    end = time.monotonic() + 0.6
    while time.monotonic() < end:  # this process's own work is not another process's load
        pass
    own = share.other_busy_cores()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        share.other_busy_cores()  # from here on the busy process runs throughout
        time.sleep(0.6)
        others = share.other_busy_cores()
    finally:
        busy.kill()
        busy.wait()
    assert own is not None and own < 0.5
    assert others is not None and 0.6 < others < 1.4


def test_follow_load_keeps_the_thread_count_at_the_idle_cores_within_the_block(monkeypatch):
    before = torch.get_num_threads()
    loads = iter([2.7, 1.2, 0.0, 9.0, 1.6])
    threads.follow_load()  # outside the block: nothing happens
    assert torch.get_num_threads() == before
    with threads.sharing_cores(ceiling=3, period=1e-9) as share:
        share.cpus = set(range(4))
        monkeypatch.setattr(share, "other_busy_cores", lambda: next(loads))
        seen = []
        for _ in range(5):
            threads.follow_load()
            seen.append(torch.get_num_threads())
    assert seen == [1, 3, 3, 1, 2]  # round(4 - load), between 1 and the ceiling
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="ceiling >= 1"):
        threads.CoreShare(ceiling=0)
