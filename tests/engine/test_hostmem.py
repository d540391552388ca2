"""Freed host memory is kept for reuse (no page faults per large tensor), and can be turned off."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from vasseg.engine.hostmem import ENV

# Allocates and frees a 64 MiB tensor 40 times (with a small tensor allocated after it, as in a
# network's forward); prints the minor page faults of the last 20 (the heap has settled by then).
CHILD = """
import resource, sys, torch
from vasseg.engine.hostmem import retain_freed_memory
print(retain_freed_memory())
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(40):
    if i == 20:
        before = faults()
    x = torch.empty(16 * 2**20).fill_(1.0)
    small = torch.ones(256)
    del x
print(faults() - before)
"""


def _child(setting: str) -> tuple[bool, int]:
    env = dict(os.environ, **{ENV: setting}, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    took, faults = out.stdout.split()
    return took == "True", int(faults)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_reused_without_page_faults() -> None:
    took, kept = _child("")
    off, system = _child("system")
    assert took and not off
    # 20 x 64 MiB = 327 680 pages of 4 KiB: glibc's default maps (and faults in) every one anew.
    assert system > 300_000, system
    assert kept < system // 20, (kept, system)
