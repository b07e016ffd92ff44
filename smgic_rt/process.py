"""Settings for a process that runs registrations and nothing else (our CLIs, batch workers).

`keep_freed_memory` is called first thing by ``smgic-register`` and by every smgic-batch
worker, never on ``import smgic_rt``: it changes how the whole process allocates memory, which is
ours to decide only in our own processes.

Why: one 1 mm registration allocates and frees arrays of 30-90 MB dozens of times. glibc hands
each of them back to the kernel (arrays that large are always mmap'd) and numpy asks the kernel
for transparent huge pages, so every new array is paid again in page faults and in huge-page
compaction: 0.12 s for the first 67 MB on the 2-core VMs we measure on. With freed memory kept in
the process, later arrays reuse pages that are already mapped: on the 256^3 pair the whole
``smgic-register`` run took 3.3-4.0 s instead of 4.0-4.6 s (3 interleaved runs each), for
+26 MiB of peak resident memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2 ** 31 - 1  # bytes of free memory at the heap's top before glibc returns it: never


def keep_freed_memory() -> dict:
    """Keep freed memory mapped in this process and allocate numpy arrays on normal pages.

    Two settings, each applied only where it exists and where the user has not chosen already:
    glibc's ``mallopt`` (every allocation from the heap, M_MMAP_MAX = 0, and the heap never
    trimmed) and numpy's ``NUMPY_MADVISE_HUGEPAGE=0`` (read when numpy is first imported; so call
    this before). Returns what was applied, for the log.
    """
    applied = {}
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ and "numpy" not in sys.modules:
        os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
        applied["numpy_hugepages"] = False
    user_chose = any(name.startswith("MALLOC_") for name in os.environ) or "GLIBC_TUNABLES" in os.environ
    if sys.platform.startswith("linux") and not user_chose:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
            return applied
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        applied["malloc_mmap_max"] = bool(mallopt(_M_MMAP_MAX, 0))
        applied["malloc_trim_threshold"] = bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return applied
