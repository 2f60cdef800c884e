"""Memory: let the C library keep freed memory for the next arrays (a step frees and allocates the same sizes)."""

import ctypes
import sys

#: ``mallopt`` parameters of glibc (malloc.h): sizes from which freed memory goes back to the system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_memory_kept = False


def keep_freed_memory():
    """Let the C library keep the memory of freed arrays for the next ones (glibc only; once per process).

    A training step allocates and frees the same large temporaries every time. By default glibc returns
    a freed block of more than a few hundred KB to the system and maps fresh pages for the next one: every
    page is then faulted in and zeroed again, thousands of page faults a step, taken while holding the
    interpreter lock and, with two threads, contending for the process's memory map (docs/performance.md,
    "page faults"). Raising the two thresholds keeps that memory in the process, where the next step reuses
    it. Where the memory comes from changes no number.
    """
    global _memory_kept
    if _memory_kept or not sys.platform.startswith("linux"):
        return
    _memory_kept = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: blocks below 32 MB come from the heap
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)  # free memory at the heap's top goes back to the system above 256 MB
