"""The per-pair work of a cohort run, identical wherever it runs (pool process or Dask worker)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

from ..io import outputs
from .manifests import inputs_identity, write_pair_manifest
from .pairs import Pair

__all__ = ["WorkerStartupError", "SUMMARY_STATS", "register_pair", "make_registrar", "worker_name", "peak_rss_mb"]

logger = logging.getLogger("smgic_rt")

# Stats copied from report.json into the summary (the full report stays in the pair's folder).
SUMMARY_STATS = ("backend", "seconds_total", "folding_fraction", "inverse_consistency_voxels_mean", "jacobian_min",
                 "flag", "flag_reasons")


class WorkerStartupError(RuntimeError):
    """A worker could not build its Registrar (bad bundle, unavailable backend, ...)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this process image alone;
    getrusage's ru_maxrss survives exec, so a spawned worker would report its parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1.0 / (1 << 20) if sys.platform == "darwin" else 1.0 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def register_pair(registrar, pair: Pair, out_root, options: dict, *, qc: bool = False) -> dict:
    """Register one pair with an existing `Registrar` into ``out_root/<id>/`` with the per-pair
    job of ``smgic-register`` (`smgic_rt.pipeline.job`), then write its manifest. Never raises for a bad
    pair: the record says what failed."""
    from ..pipeline import job

    out_root = Path(os.fspath(out_root))
    start = time.perf_counter()
    record = {"id": pair.id, "status": "failed", "error": None, "worker": worker_name()}
    try:
        inputs = inputs_identity(pair)  # before reading, so a file changed meanwhile shows as stale
        loaded = job.load_pair(pair.fixed, pair.moving, moving_labels=pair.moving_labels,
                               fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
                               fixed_exclude=pair.fixed_exclude, moving_exclude=pair.moving_exclude)
        # overwrite: a stale folder of an earlier run is replaced, but only if smgic wrote it; one
        # of ours changed by hand is kept, renamed, and the pair redone (as the README says).
        kept = outputs.set_aside_changed_output(out_root / pair.id)
        if kept is not None:
            logger.warning("pair %s: its outputs were changed by hand; kept them in %s and registering again",
                           pair.id, kept)
            record["changed_outputs_kept_in"] = str(kept)
        outdir = job.check_output(loaded, out_root / pair.id, overwrite=True)
        result = job.run_pair(registrar, loaded, outdir, overwrite=True, qc=qc)
        record.update(status="registered", stats={k: result.stats.get(k) for k in SUMMARY_STATS},
                      seconds=time.perf_counter() - start, worker_peak_rss_mb=peak_rss_mb())
        # Last: the manifest is what makes the pair count as complete on a rerun.
        write_pair_manifest(out_root, pair, options, inputs, record)
    except Exception as error:  # a failed pair is data for the summary, not the end of the run
        logger.debug("pair %s failed", pair.id, exc_info=True)
        record.update(status="failed", error=f"{type(error).__name__}: {error}", stats=None,
                      seconds=time.perf_counter() - start, worker_peak_rss_mb=peak_rss_mb())
    return record


def make_registrar(bundle, registrar_options: dict, threads: int | None):
    """A worker's `Registrar`: `registrar_options` holds backend and the stage modes."""
    from ..registrar import Registrar

    # Without a thread count onnxruntime starts a thread per core in every worker, and N workers
    # on N cores then fight over them.
    return Registrar(bundle, **registrar_options, threads=threads)
