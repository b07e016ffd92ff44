"""`register_many`: a cohort run, locally or on Dask, with its summary (``summary.csv/json``)."""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from pathlib import Path

from ..io import atomic, outputs
from .local import available_cores, run_local
from .manifests import pair_is_complete
from .pairs import read_pairs
from .work import SUMMARY_STATS

__all__ = ["register_many", "SUMMARY_CSV", "SUMMARY_JSON"]

logger = logging.getLogger("smgic_rt")

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"


def register_many(pairs, out_root, *, bundle=None, backend: str = "auto", workers: int | None = None,
                  scheduler=None, threads_per_worker: int | None = None, quality: str = "fast", affine="auto",
                  network="auto", refine="auto", metric=None, qc: bool = False, progress: bool = True,
                  callback=None) -> dict:
    """Register every pair into ``out_root/<id>/``; returns the summary also written to
    ``out_root/summary.json`` (and ``summary.csv``).

    Parameters
    ----------
    pairs : CSV path or iterable
        See `read_pairs`.
    out_root : path
        Created if missing. Pairs whose outputs there are complete (`pair_is_complete`) are skipped.
    bundle, backend, quality, affine, network, refine, metric, qc
        As for `Registrar` and ``smgic-register``.
    workers : int, optional
        Local worker processes (default: one per core, at most one per pair). Not used with
        `scheduler`.
    scheduler : str or distributed.Client, optional
        Address of a Dask scheduler (``tcp://host:port``) or a connected client: run there.
    threads_per_worker : int, optional
        Threads each worker's Registrar uses. Default: the cores divided among the workers
        (locally), or a Dask worker's cores divided among its task threads.
    progress : bool
        Show a progress bar (pairs done, failed, rate) on stderr.
    callback : callable, optional
        Called in this process as ``callback(record)`` when each pair finishes.

    Returns
    -------
    dict with ``pairs`` (one record per pair, in input order: id, status "registered" /
    "skipped" / "failed", error, seconds, worker, stats), ``counts``, ``seconds``,
    ``pairs_per_minute`` and the run's settings.

    Raises
    ------
    PairsFileError, FileNotFoundError, ValueError
        Bad pairs table or options, before any work starts.
    WorkerStartupError
        Workers could not build a Registrar (e.g. the backend is not available there).
    """
    from ..options import check_int, check_registrar_options
    from ..registrar import Registrar

    started = time.perf_counter()
    pair_list = read_pairs(pairs)
    # The Registrar's own checks, here so that bad options fail before any worker starts.
    registrar_options = check_registrar_options(backend=backend, quality=quality, affine=affine, network=network,
                                                refine=refine, metric=metric)
    del registrar_options["threads"]  # each worker's own
    workers = check_int(workers, "workers", minimum=1, allow_none=True)
    threads = check_int(threads_per_worker, "threads_per_worker", minimum=1, allow_none=True)
    if scheduler is not None and workers is not None:
        raise ValueError(f"workers={workers} is for the local pool; with a scheduler the cluster's workers run the pairs")
    loaded = Registrar._load_bundle(bundle)  # verifies the checksums once, here
    out_root = Path(os.fspath(out_root)).expanduser().absolute()
    out_root.mkdir(parents=True, exist_ok=True)

    # What killed runs of ours left beside the pairs' folders (marked, never judged by name).
    outputs.remove_stale_staging(out_root, [pair.id for pair in pair_list])
    earlier = _earlier_records(out_root, {pair.id for pair in pair_list})  # before summary.json is replaced
    options = {"bundle_id": str(loaded.id), **registrar_options, "qc": bool(qc)}
    records, todo = {}, []
    for pair in pair_list:
        manifest = pair_is_complete(out_root, pair, options)
        if manifest is None:
            todo.append(pair)
        else:
            records[pair.id] = {**manifest["record"], "status": "skipped"}
    logger.info("%d pair(s): %d complete already, %d to register", len(pair_list), len(records), len(todo))

    bar = _progress_bar(len(pair_list), initial=len(records), enabled=progress)
    counts = {"registered": 0, "skipped": len(records), "failed": 0}

    def on_record(pair, record):
        record = {"fixed": pair.fixed, "moving": pair.moving, **record, "outdir": str(out_root / pair.id)}
        records[pair.id] = record
        counts[record["status"]] += 1
        if record["status"] == "failed":
            logger.warning("pair %s failed: %s", pair.id, record["error"])
        bar.update(1)
        bar.set_postfix(done=counts["registered"] + counts["skipped"], failed=counts["failed"], refresh=False)
        if callback is not None:
            callback(record)

    restarts = 0
    try:
        if not todo:
            pass
        elif scheduler is None:
            workers = workers or max(1, min(available_cores(), len(todo)))
            threads = threads or max(1, available_cores() // workers)
            restarts = run_local(todo, out_root, options, qc, str(loaded.source), workers, threads, registrar_options,
                                 on_record)
        else:
            from .dask_cluster import run_dask

            run_dask(todo, out_root, options, qc, loaded, scheduler, threads, registrar_options, on_record)
    finally:
        bar.close()
        outputs.remove_stale_staging(out_root, [pair.id for pair in pair_list])
        _settle_unheard(pair_list, records, counts, out_root, options)
        wall = time.perf_counter() - started
        summary = {
            "out_root": str(out_root),
            "scheduler": _scheduler_address(scheduler),
            "workers": workers, "threads_per_worker": threads, "pool_restarts": restarts, "options": options,
            "counts": dict(counts), "total": len(pair_list), "seconds": wall,
            "pairs_per_minute": 60.0 * counts["registered"] / wall if wall > 0 else None,
            "pairs": [records.get(p.id, {"id": p.id, "fixed": p.fixed, "moving": p.moving, "status": "not run",
                                         "error": "the run stopped before this pair"}) for p in pair_list] + earlier,
        }
        summary["flags"] = _count_flags(summary["pairs"])
        atomic.write_json(out_root / SUMMARY_JSON, summary)
        _write_summary_csv(summary["pairs"], out_root / SUMMARY_CSV)
        _write_cohort_report(out_root, summary)
    logger.info("%d registered, %d skipped (complete), %d failed in %.1f s; QC flags: %s",
                counts["registered"], counts["skipped"], counts["failed"], summary["seconds"], summary["flags"])
    return summary


def _settle_unheard(pair_list, records, counts, out_root: Path, options: dict) -> None:
    """Pairs this run finished on disk (manifest written) whose result never reached this
    process (an interrupt in between) count as registered, not as "not run"."""
    for pair in pair_list:
        if pair.id in records:
            continue
        manifest = pair_is_complete(out_root, pair, options)
        if manifest is not None:
            records[pair.id] = {"fixed": pair.fixed, "moving": pair.moving, **manifest["record"],
                                "outdir": str(out_root / pair.id)}
            counts[records[pair.id]["status"]] = counts.get(records[pair.id]["status"], 0) + 1


def _earlier_records(out_root: Path, ids: set) -> list:
    """The pairs of earlier runs into `out_root` that this run's table does not name, so that a
    rerun with a subset of the pairs keeps the summaries whole: their last records (from the
    previous summary.json, and from the pair manifests for any it lacks), each marked
    ``"earlier_run": True``; a pair whose output folder is gone is dropped."""
    import json

    from .manifests import MANIFEST_DIR

    found = {}
    try:
        previous = json.loads((out_root / SUMMARY_JSON).read_text(encoding="utf-8"))
        for record in previous.get("pairs", []):
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                found[record["id"]] = record
    except (OSError, ValueError, AttributeError):
        pass
    for path in sorted((out_root / MANIFEST_DIR).glob("*.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            record = manifest["record"]
            found.setdefault(record["id"], {**record, "outdir": str(out_root / record["id"])})
        except (OSError, ValueError, KeyError, TypeError):
            continue
    kept = []
    for pair_id, record in found.items():
        if pair_id in ids:
            continue
        if record.get("status") in ("registered", "skipped") and outputs.read_manifest(out_root / pair_id) is None:
            continue  # its outputs were removed or changed since
        kept.append({**record, "earlier_run": True})
    return kept


def _count_flags(records) -> dict:
    """How many finished pairs carry each QC flag (a pair that failed has none)."""
    counts = {"ok": 0, "warn": 0, "fail": 0}
    for record in records:
        flag = (record.get("stats") or {}).get("flag")
        if flag in counts:
            counts[flag] += 1
    return counts


def _write_cohort_report(out_root: Path, summary: dict) -> None:
    """``OUTROOT/report.html``: a page to scroll, flagged pairs first (`smgic_rt.qc.report`). A
    report that cannot be made is logged: the registrations and the summary stand without it."""
    from ..qc import report as qc_report

    try:
        qc_report.write_cohort_report(out_root, summary["pairs"], summary=summary)
    except Exception as error:  # noqa: BLE001
        logger.error("could not write %s: %s: %s", out_root / qc_report.REPORT_NAME, type(error).__name__, error)


def _scheduler_address(scheduler):
    if scheduler is None or isinstance(scheduler, str):
        return scheduler
    return str(getattr(getattr(scheduler, "scheduler", None), "address", scheduler))


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="pair", desc="smgic-batch", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _write_summary_csv(records, path: Path) -> None:
    columns = ["id", "status", "error", "seconds", "worker", "worker_peak_rss_mb", "fixed", "moving", "outdir", *SUMMARY_STATS]
    with atomic.atomic_path(path) as temp, open(temp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({**record, **(record.get("stats") or {})})
