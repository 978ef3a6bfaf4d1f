"""``reuse_freed_memory``: freed tensor memory stays in the heap, so allocating it again costs no page faults."""

import subprocess
import sys

import pytest

ROUNDS = """
import resource, torch
from invprior.allocator import reuse_freed_memory
tuned = reuse_freed_memory()
faults = []
for _ in range(8):   # eight written 16 MiB tensors, then freed together
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(4 * 2 ** 20) for _ in range(8)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(int(tuned), *faults)
"""
PAGES_PER_ROUND = 8 * 16 * 2 ** 20 // 4096


def _tuned_faults() -> tuple[bool, list[int]]:
    """In a fresh process with ``reuse_freed_memory``: whether glibc accepted it, and the page faults per round."""
    out = subprocess.run([sys.executable, "-c", ROUNDS], capture_output=True, text=True, check=True).stdout
    tuned, *faults = map(int, out.split())
    return bool(tuned), faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reused_memory_is_not_faulted_in_again():
    """Every round writes 32768 fresh pages' worth. With glibc's defaults the heap hands them back and faults
    them in again, for a few rounds or for every round depending on where the blocks land (rounds 4-8
    measured: 0, 4096 or 163680 faults); once the heap keeps freed memory, only the first three rounds fault
    (the third at most one block)."""
    tuned_ok, tuned = _tuned_faults()
    if not tuned_ok:
        pytest.skip("no glibc mallopt on this system")
    assert tuned[0] > 0.5 * PAGES_PER_ROUND           # the first round does fault its pages in (the count works)
    assert sum(tuned[3:]) < 1024                      # with the defaults: 0 to 163680 in the runs measured


def test_reuse_freed_memory_is_a_no_op_without_linux(monkeypatch):
    from invprior import allocator

    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.reuse_freed_memory() is False


def test_the_invprior_command_reuses_freed_memory(monkeypatch):
    from invprior import cli, console

    calls = []
    monkeypatch.setattr(console, "reuse_freed_memory", lambda: calls.append("allocator") or True)
    monkeypatch.setattr(cli, "main", lambda argv=None: calls.append("main") or 0)
    assert console.console() == 0 and calls == ["allocator", "main"]
