"""study.run.allocator on the real glibc: the settings take, and change what malloc does."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from study.run.allocator import glibc_mallopt

# In a fresh interpreter: free a 16 MiB mapped block (glibc's dynamic threshold then rises to
# 16 MiB), then ask for 6 MiB (more than an arena has free) and read the chunk header's
# IS_MMAPPED bit (0x2) before it.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from study.run.allocator import settle_allocator
    if sys.argv[1] == "settled":
        assert settle_allocator()
    if sys.argv[1] == "driver":  # the study driver's own start: a local Ray, as `nctune study`
        import os, ray
        from study.run.tuner import init_ray
        os.environ.pop("RAY_ADDRESS", None)
        init_ray(None)
        ray.shutdown()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    big = libc.malloc(16 << 20)
    libc.free(big)
    block = libc.malloc(6 << 20)
    header = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
    print(bool(header & 2))
    libc.free(block)
""")

needs_glibc = pytest.mark.skipif(glibc_mallopt() is None, reason="glibc only")


def mapped_after_a_large_free(mode: str) -> bool:
    """Whether a 6 MiB block is mapped (not carved from an arena) after a 16 MiB one was freed."""
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          check=True, timeout=100)
    return done.stdout.strip() == "True"


@needs_glibc
def test_the_mmap_threshold_stays_fixed_once_settled() -> None:
    """glibc's default raises its threshold after the 16 MiB free; settled, it stays 128 KiB."""
    assert mapped_after_a_large_free("default") is False
    assert mapped_after_a_large_free("settled") is True


@needs_glibc
@pytest.mark.timeout(120)
def test_the_study_driver_settles_its_allocator_when_it_starts_ray() -> None:
    assert mapped_after_a_large_free("driver") is True
