"""The study driver's C allocator: bounded per-thread arenas and no self-raising mmap threshold.

A study's driver lives as long as the study (hours, a thousand trials) and has ~36 threads:
Ray's core worker, gRPC and Tune's, beside the main one. glibc's malloc gives threads that
contend for it arenas of their own (up to 8 per core), and raises its mmap threshold to the
size of each large block freed, up to 32 MiB; Ray Tune's experiment snapshot is one such block,
a JSON text of every trial, rebuilt on each snapshot and so growing with the study. Both leave
freed memory resident: in the tiny study of benchmarks/driver_scaling.py (90 trials, RSS after
each trial, one run each) the driver grew 14.3 MB per 100 trials with glibc's defaults and 9.5
with the two settings below, passed as the MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ variables;
by /proc/self/smaps, the 13 thread arenas had each grown ~0.5 MB over 60 trials.

The settings (glibc's `mallopt`, the same as those variables, applied to the driver process
only: Ray's workers keep glibc's defaults):
  M_ARENA_MAX = 2           threads share two arenas (the driver's threads rarely contend);
  M_MMAP_THRESHOLD = 128 KiB  glibc's default, fixed: blocks at least this large are mapped and
                            unmapped on free, however large a block was freed before.
Elsewhere (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h> parameter numbers
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 128 * 1024


def glibc_mallopt() -> Any:
    """glibc's `mallopt` function, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it; musl's mallopt is a stub
        return libc.mallopt
    except (OSError, AttributeError):
        return None


def settle_allocator() -> bool:
    """Apply M_ARENA_MAX = 2 and a fixed 128 KiB M_MMAP_THRESHOLD to this process (glibc).

    Call it before Ray starts its threads (arenas already made stay). True if both applied.
    """
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    applied = [mallopt(M_ARENA_MAX, ARENA_MAX), mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)]
    return all(code == 1 for code in applied)
