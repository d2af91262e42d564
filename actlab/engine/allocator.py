"""Keep freed memory in the process on Linux (glibc), so a training step does not page-fault.

A stacked step allocates and frees tens of MB of activations every step (K members' logits
alone are K x batch x context x 256 floats). glibc's malloc returns the top of its heap to
the kernel once more than M_TRIM_THRESHOLD bytes are free there (by default twice the
largest chunk freed so far, at most 64 MiB), so the next step takes every page back with a
minor page fault, the kernel zeroing each 4 KiB: measured on the GPT benchmark at the
README's size, 8,500 faults and 11 ms of system time per step of 120 ms (K = 8, one
thread). `retain_freed_memory` sets, with ``mallopt``, the size below which a block comes
from the heap (M_MMAP_THRESHOLD) to 32 MiB (the most every glibc takes on 64-bit; what
the dynamic threshold reaches at best) and the trim threshold to 128 MiB, more than a
step frees at the README's size: freed memory stays mapped for the next step. Larger
blocks (evaluation chunks) still go back to the kernel when freed. The README's example
study peaked at 892 MiB resident with these settings and 891 MiB without them (a 256 MiB
mmap threshold and a 1 GiB trim threshold: 1,121 MiB, the evaluation's chunks then
staying in the heap beside the training step's blocks).

Process-wide and idempotent; a no-op where the C library has no ``mallopt`` (macOS,
musl). Like jemalloc or tcmalloc set through LD_PRELOAD, it changes no result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20

_done = False


def retain_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (module docstring). True if it did."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
