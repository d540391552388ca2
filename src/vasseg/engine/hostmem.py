"""Keep freed host memory inside the process, so large CPU tensors stop costing page faults.

PyTorch's CPU allocator passes every tensor to ``malloc``. glibc serves blocks above its mmap
threshold (at most 32 MiB) with fresh ``mmap`` pages and unmaps them again on ``free``, so every
large activation is page-faulted in anew, forward after forward: a VNet forward on one
112x112x80 window allocates and frees about 1 GiB and took ~270 000 minor page faults, and an
evaluation of 20 LA volumes spent 40 % of its CPU time in the kernel (2-core AVX-512 EPYC,
torch 2.13). With ``mmap`` off for malloc and a high trim threshold, freed blocks stay in the
heap and are reused: that forward went from 0.64 s to 0.39 s, a batch of 4 windows from 3.3 s to
1.3 s, and a 48x48x32 VAS training step from 525 to 441 ms (``benchmarks/RESULTS.md``).

The price: the process keeps its peak memory (resident size does not shrink after a peak). The
numbers computed are the same bit for bit. ``VASSEG_MALLOC=system`` keeps glibc's defaults.
Other C libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

ENV = "VASSEG_MALLOC"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of free heap top


def retain_freed_memory() -> bool:
    """Switch glibc's malloc to keep freed memory for reuse; True when it took effect.

    Call it early in a process that runs large CPU tensors (the CLI does, for every command).
    A no-op returning False when ``VASSEG_MALLOC=system``, off Linux, or without glibc.
    """
    if os.environ.get(ENV, "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc (gnu_get_libc_version is glibc's own)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    version.restype = ctypes.c_char_p
    log.debug("glibc %s malloc: keep freed memory %s", version().decode(), "on" if ok else "refused")
    return ok
