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
