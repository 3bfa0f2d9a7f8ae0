"""glibc malloc tuning for processes that read large values (once per
process, opt-out with SHMLOG_MALLOC_TUNING=0)."""

from __future__ import annotations

import os

# glibc's own dynamic thresholds top out here (DEFAULT_MMAP_THRESHOLD_MAX, and
# trim = 2 x mmap): where a program that frees large blocks converges anyway
_HEAP_MMAP_THRESHOLD = 32 << 20
_HEAP_TRIM_THRESHOLD = 64 << 20
_HEAP_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")
_heap_kept = False


def keep_freed_heap() -> bool:
    """Let glibc keep freed heap for the next read instead of returning it.

    A reader copying out 64 KiB values frees and re-allocates a batch of them
    every read; glibc sees them as small (under its 128 KiB first threshold),
    trims the heap top after each free, and each read then page-faults its
    memory back in: the faults, not the copy, then dominate the reader's
    time (figures: bench/README.md, W3). This sets the thresholds glibc
    itself converges to for large blocks. Once per process, on the first
    large read; not if the MALLOC_*_ environment already tunes malloc, or
    SHMLOG_MALLOC_TUNING=0. True if it was set now."""
    global _heap_kept
    if _heap_kept:
        return False
    _heap_kept = True
    env = os.environ
    if env.get("SHMLOG_MALLOC_TUNING", "1") == "0" or any(k in env for k in _HEAP_ENV) or (
            "glibc.malloc." in env.get("GLIBC_TUNABLES", "")):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    # mmap first: setting any threshold freezes glibc's dynamic one
    return bool(mallopt(m_mmap_threshold, _HEAP_MMAP_THRESHOLD) and
                mallopt(m_trim_threshold, _HEAP_TRIM_THRESHOLD))
