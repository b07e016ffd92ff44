"""smgic_rt.process (keep_freed_memory, passive_openmp_waits): in a fresh interpreter, as our CLIs
call them first thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux's")

PROBE = r"""
import json, os, sys
from smgic_rt.process import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else {}
import numpy as np

def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

before = resident_mib()
block = np.ones(64 * 2**20 // 4, np.float32)  # 64 MiB, touched
del block
print(json.dumps({"applied": applied, "kept_mib": resident_mib() - before,
                  "hugepage_env": os.environ.get("NUMPY_MADVISE_HUGEPAGE")}))
"""


def _probe(mode, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in
                   ("GLIBC_TUNABLES", "NUMPY_MADVISE_HUGEPAGE")}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=environment)
    return json.loads(out.stdout)


def test_freed_arrays_stay_mapped_and_numpy_uses_normal_pages():
    kept, default = _probe("keep"), _probe("default")
    assert kept["applied"] == {"numpy_hugepages": False, "malloc_mmap_max": True, "malloc_trim_threshold": True}
    assert kept["hugepage_env"] == "0"
    assert kept["kept_mib"] > 60  # the freed 64 MiB stay in the process, ready for the next array
    assert default["kept_mib"] < 8  # glibc's default: an array that large goes back to the kernel


def test_a_users_own_allocator_settings_are_left_alone():
    chosen = _probe("keep", MALLOC_ARENA_MAX="2", NUMPY_MADVISE_HUGEPAGE="1")
    assert chosen["applied"] == {} and chosen["hugepage_env"] == "1"
    assert chosen["kept_mib"] < 8


WAITS = r"""
import sys
from smgic_rt.process import registration_process
print(registration_process().get("openmp_wait_policy"))
import smgic_rt._C  # libgomp reads its settings here and, with OMP_DISPLAY_ENV, prints them
"""


def _spin_count(**env):
    """GOMP_SPINCOUNT as the OpenMP runtime of `smgic_rt._C` reports it, and what was applied."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environment.update(OMP_DISPLAY_ENV="verbose", **env)
    out = subprocess.run([sys.executable, "-c", WAITS], capture_output=True, text=True, check=True, env=environment)
    spin = [line.split("=")[1].strip(" '") for line in out.stderr.splitlines() if line.strip().startswith("GOMP_SPINCOUNT")]
    return out.stdout.strip(), (spin[0] if spin else None)


def test_openmp_threads_sleep_at_once_unless_the_user_chose_a_policy():
    applied, spin = _spin_count()
    if spin is None:
        pytest.skip("the OpenMP runtime of smgic_rt._C does not report GOMP_SPINCOUNT (not libgomp)")
    assert (applied, spin) == ("PASSIVE", "0")
    applied, spin = _spin_count(OMP_WAIT_POLICY="ACTIVE")
    assert applied == "None" and int(spin) > 0
    applied, spin = _spin_count(GOMP_SPINCOUNT="1000")
    assert (applied, spin) == ("None", "1000")
