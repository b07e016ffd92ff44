"""Settings for a process that runs registrations and nothing else (our CLIs, batch workers).

`registration_process` (`keep_freed_memory` and `passive_openmp_waits`) is called first thing by
our console scripts and by every smgic-batch worker, never on ``import smgic_rt``: it changes how
the whole process allocates memory and waits, which is ours to decide only in our own processes.

Why passive waits: an OpenMP thread that reaches the end of a parallel loop first spins (libgomp:
300,000 turns) before it sleeps. The registration runs thousands of short loops; on a machine
whose other cores are busy (a pipeline running jobs side by side) its threads are descheduled in
turn, and each spin takes CPU from the thread it waits for. Sleeping at once costs a wake-up per
loop instead (docs/speed.md has the timings).

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

__all__ = ["keep_freed_memory", "passive_openmp_waits", "registration_process"]

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


def passive_openmp_waits() -> dict:
    """``OMP_WAIT_POLICY=PASSIVE`` for this process: OpenMP threads sleep as soon as they wait.
    Only where the user has not chosen a policy or a spin count and before the OpenMP runtime
    reads them (when `smgic_rt._C` loads). Returns what was applied, for the log."""
    chosen = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    if chosen or "smgic_rt._C" in sys.modules:
        return {}
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return {"openmp_wait_policy": "PASSIVE"}


def registration_process() -> dict:
    """Every setting of this module, as our console scripts and batch workers apply them first."""
    return {**keep_freed_memory(), **passive_openmp_waits()}
