"""Cohort registration: ``smgic-batch`` over many pairs, on this machine or on a Dask cluster.

    smgic-batch PAIRS.csv -o OUTROOT [--workers N] [--threads-per-worker N]
                [--scheduler tcp://HOST:PORT] [--backend NAME] [--bundle PATH]
                [--affine MODE] [--refine MODE] [--qc] [--no-progress]

    >>> from smgic_rt.batch import register_many
    >>> summary = register_many("pairs.csv", "out/", workers=2)          # doctest: +SKIP

PAIRS.csv has the columns ``fixed,moving`` and optionally ``moving_labels``, ``fixed_mask``,
``moving_mask`` and ``id``; relative paths are read relative to the CSV's folder. Each pair's
outputs go to ``OUTROOT/<id>/`` and are exactly what ``smgic-register`` writes for that pair: the
per-pair work below is the CLI's (validate, `Registrar.register`, `RegistrationResult.save`).

Where the work runs:

- locally (default): a pool of worker processes, each loading the bundle and building its
  `Registrar` once and reusing it for many pairs; ``workers x threads_per_worker`` is sized to
  the cores this process may use.
- ``scheduler="tcp://host:port"`` (or a `distributed.Client`): the same per-pair function on an
  existing Dask cluster. The bundle's files travel once per worker inside a worker plugin, which
  also builds that worker's `Registrar`. Input paths and OUTROOT must be visible to the workers
  (a shared file system), as for any cluster job reading and writing files.

Long runs meet faults, so:

- a pair that fails (unreadable file, out of memory, ...) is recorded with its error and the
  others go on;
- a worker process that dies (killed, crashed) costs no good pair: the local pool is rebuilt and
  the pairs that were in flight are re-run one at a time, so that a pair that kills its worker
  twice is the one marked failed; on Dask the scheduler re-runs a dead worker's tasks;
- each finished pair gets a manifest ``OUTROOT/.smgic-batch/<id>.json`` (size and sha256 of every
  output file, the inputs' size and mtime, the options), written after the atomic output folder;
  a rerun skips exactly the pairs whose manifest matches what is on disk and redoes the others;
- ``OUTROOT/summary.csv`` and ``summary.json`` list every pair's status, error, stats and seconds.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from . import atomic

# Heavy modules (numpy, nibabel, onnxruntime, _C) are imported inside functions: a pool worker
# must set its thread counts in the environment before they load (see `_init_pool_worker`).

__all__ = ["Pair", "PairsFileError", "WorkerStartupError", "read_pairs", "register_many", "pair_is_complete", "main"]

logger = logging.getLogger("smgic_rt")

PAIR_COLUMNS = ("fixed", "moving", "moving_labels", "fixed_mask", "moving_mask", "id")
MANIFEST_DIR = ".smgic-batch"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
# A pair in flight when a worker died this many times is marked failed (it is the likely cause:
# after the first death it runs alone).
MAX_WORKER_DEATHS = 2
# Stats copied from report.json into the summary (the full report stays in the pair's folder).
SUMMARY_STATS = ("backend", "seconds_total", "folding_fraction", "inverse_consistency_voxels_mean", "jacobian_min")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class PairsFileError(ValueError):
    """The pairs table (CSV or list) is malformed; the message names the row and the problem."""


class WorkerStartupError(RuntimeError):
    """A worker could not build its Registrar (bad bundle, unavailable backend, ...)."""


@dataclass(frozen=True)
class Pair:
    """One registration: `moving` onto `fixed`, outputs in ``OUTROOT/<id>/``. Paths are absolute."""

    id: str
    fixed: str
    moving: str
    moving_labels: str | None = None
    fixed_mask: str | None = None
    moving_mask: str | None = None


# ---------------------------------------------------------------------------------------------
# The pairs table


def _image_stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".mgz", ".mgh"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "pair"


def read_pairs(pairs) -> list[Pair]:
    """Pairs from a CSV path, or from an iterable of `Pair`, dicts (CSV column names as keys) or
    ``(fixed, moving)`` tuples.

    Ids default to the moving image's file name; when those collide, to ``<row>-<name>`` for
    every pair, so ids stay stable from run to run. Given ids must be unique file names.
    """
    if isinstance(pairs, (str, os.PathLike)):
        rows, base, where = _read_csv(Path(os.fspath(pairs)).expanduser())
    else:
        rows, base, where = [], Path.cwd(), "pairs"
        for number, item in enumerate(pairs, start=1):
            if isinstance(item, Pair):
                item = asdict(item)
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                item = {"fixed": item[0], "moving": item[1]}
            elif not isinstance(item, dict):
                raise PairsFileError(f"pairs item {number}: expected a Pair, a dict or a (fixed, moving) tuple, got {type(item).__name__}")
            unknown = sorted(set(item) - set(PAIR_COLUMNS))
            if unknown:
                raise PairsFileError(f"pairs item {number}: unknown keys {unknown}; expected some of {list(PAIR_COLUMNS)}")
            rows.append((number, {k: (None if v is None else os.fspath(v)) for k, v in item.items()}))
    if not rows:
        raise PairsFileError(f"{where}: expected at least one pair, got none")

    def absolute(value):
        value = (value or "").strip()
        return str((base / Path(value).expanduser()).absolute()) if value else None

    resolved = []
    for number, row in rows:
        for column in ("fixed", "moving"):
            if not (row.get(column) or "").strip():
                raise PairsFileError(f"{where} row {number}: expected a '{column}' path, got an empty value")
        resolved.append((number, {column: absolute(row.get(column)) for column in PAIR_COLUMNS if column != "id"}, (row.get("id") or "").strip()))

    given_ids = [given for _, _, given in resolved if given]
    defaults = [_safe_id(_image_stem(values["moving"])) for _, values, given in resolved if not given]
    collide = len(set(defaults)) < len(defaults) or bool(set(defaults) & set(given_ids))
    result, seen = [], {}
    for number, values, given in resolved:
        default = _safe_id(_image_stem(values["moving"]))
        pair_id = given or (f"{number:05d}-{default}" if collide else default)
        if not _ID_PATTERN.match(pair_id) or pair_id in (".", ".."):
            raise PairsFileError(f"{where} row {number}: id must be a plain file name (letters, digits, '._-', not starting with '.'), got {pair_id!r}")
        if pair_id == MANIFEST_DIR or pair_id in (SUMMARY_CSV, SUMMARY_JSON):
            raise PairsFileError(f"{where} row {number}: id {pair_id!r} is reserved for smgic-batch's own files")
        if pair_id in seen:
            raise PairsFileError(f"{where} rows {seen[pair_id]} and {number}: ids must be unique, got {pair_id!r} twice")
        seen[pair_id] = number
        result.append(Pair(id=pair_id, **values))
    return result


def _read_csv(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"pairs file: no such file: '{path}'")
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [c for c in ("fixed", "moving") if c not in header]
        unknown = [c for c in header if c not in PAIR_COLUMNS]
        if missing or unknown:
            raise PairsFileError(
                f"{path}: expected columns fixed,moving[,moving_labels,fixed_mask,moving_mask,id], got header {header}"
                + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else "")
            )
        reader.fieldnames = header
        # Row numbers as a spreadsheet shows them: the header is row 1.
        rows = [(number, row) for number, row in enumerate(reader, start=2) if any((v or "").strip() for v in row.values())]
    return rows, path.parent.absolute(), str(path)


# ---------------------------------------------------------------------------------------------
# Completeness: manifests written after each pair's atomic output folder


def _inputs_identity(pair: Pair) -> dict:
    """Size and mtime of each input: a changed input makes the old outputs stale."""
    identity = {}
    for column in PAIR_COLUMNS[:-1]:
        path = getattr(pair, column)
        if path is None:
            continue
        try:
            stat = os.stat(path)
        except OSError:  # the loader reports a missing file in smgic-register's words
            identity[column] = {"path": path, "size": None, "mtime_ns": None}
            continue
        identity[column] = {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identity


def _manifest_path(out_root: Path, pair_id: str) -> Path:
    return out_root / MANIFEST_DIR / f"{pair_id}.json"


def pair_is_complete(out_root, pair: Pair, options: dict) -> dict | None:
    """The manifest of `pair` when its outputs in `out_root` are complete and current, else None.

    Complete means: the manifest exists, was made with the same `options` from inputs of the same
    size and mtime, and every file it lists is in ``OUTROOT/<id>/`` with its recorded size and
    sha256 (and the folder holds nothing else).
    """
    out_root = Path(os.fspath(out_root))
    try:
        manifest = json.loads(_manifest_path(out_root, pair.id).read_text(encoding="utf-8"))
        if manifest.get("options") != options or manifest.get("inputs") != _inputs_identity(pair):
            return None
        folder = out_root / pair.id
        files = manifest["files"]
        if sorted(p.name for p in folder.iterdir()) != sorted(files):
            return None
        for name, expected in files.items():
            path = folder / name
            if path.stat().st_size != expected["size"] or atomic.sha256_file(path) != expected["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable manifest/outputs: not complete
    return manifest


def _remove_leftovers(out_root: Path, pairs) -> None:
    """Remove what killed workers left half-written: staging folders beside ``OUTROOT/<id>``
    (``.<id>.tmp-*``, see `io.atomic_output_dir`) and temporary manifests. Called only while no
    pair is in flight, so every such file is an orphan."""
    import shutil

    prefixes = tuple(f".{pair.id}." for pair in pairs)
    for folder in (out_root, out_root / MANIFEST_DIR):
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name.startswith(prefixes):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _write_manifest(out_root: Path, pair: Pair, options: dict, inputs: dict, record: dict) -> None:

    folder = out_root / pair.id
    files = {p.name: {"size": p.stat().st_size, "sha256": atomic.sha256_file(p)} for p in sorted(folder.iterdir())}
    (out_root / MANIFEST_DIR).mkdir(exist_ok=True)
    atomic.write_json(_manifest_path(out_root, pair.id),
                      {"id": pair.id, "options": options, "inputs": inputs, "files": files, "record": record})


# ---------------------------------------------------------------------------------------------
# The per-pair work, identical wherever it runs


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _peak_rss_mb() -> float:
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
    """Register one pair with an existing `Registrar` into ``out_root/<id>/`` as ``smgic-register``
    does, then write its manifest. Never raises for a bad pair: the record says what failed."""
    from . import io

    out_root = Path(os.fspath(out_root))
    start = time.perf_counter()
    record = {"id": pair.id, "status": "failed", "error": None, "worker": _worker_name()}
    try:
        inputs = _inputs_identity(pair)  # before reading, so a file changed meanwhile shows as stale
        # The same steps, in the same order, as smgic_rt.cli._run_register.
        fixed = io.load_volume(pair.fixed, name="fixed image")
        moving = io.load_volume(pair.moving, name="moving image")
        labels = io.load_label_map(pair.moving_labels, name="moving labels") if pair.moving_labels else None
        result = registrar.register(fixed, moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask)
        # overwrite: an incomplete folder from an earlier run is replaced atomically.
        result.save(out_root / pair.id, overwrite=True, moving_labels=labels, qc=qc)
        record.update(status="registered", stats={k: result.stats.get(k) for k in SUMMARY_STATS},
                      seconds=time.perf_counter() - start, worker_peak_rss_mb=_peak_rss_mb())
        # Last: the manifest is what makes the pair count as complete on a rerun.
        _write_manifest(out_root, pair, options, inputs, record)
    except Exception as error:  # a failed pair is data for the summary, not the end of the run
        logger.debug("pair %s failed", pair.id, exc_info=True)
        record.update(status="failed", error=f"{type(error).__name__}: {error}", stats=None,
                      seconds=time.perf_counter() - start, worker_peak_rss_mb=_peak_rss_mb())
    return record


def _make_registrar(bundle, backend: str, affine, refine, threads: int | None):
    from .registrar import Registrar

    # Without a thread count onnxruntime starts a thread per core in every worker, and N workers
    # on N cores then fight over them.
    return Registrar(bundle, backend=backend, affine=affine, refine=refine, threads=threads)


# Local pool worker state: one Registrar per process, built by the initializer.
_WORKER = {}


def _init_pool_worker(bundle: str, backend: str, affine, refine, threads: int) -> None:
    # Before numpy / _C / onnxruntime load, so their thread pools take these sizes.
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    try:
        _WORKER["registrar"] = _make_registrar(bundle, backend, affine, refine, threads)
    except Exception as error:  # reported to the parent by the first task, which stops the run
        _WORKER["error"] = f"{type(error).__name__}: {error}"


def _pool_task(pair: Pair, out_root: str, options: dict, qc: bool) -> dict:
    if "error" in _WORKER:
        raise WorkerStartupError(f"worker {_worker_name()} could not build its Registrar: {_WORKER['error']}")
    return register_pair(_WORKER["registrar"], pair, out_root, options, qc=qc)


# ---------------------------------------------------------------------------------------------
# Drivers


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _positive_int(value, name: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


def _run_local(todo, out_root, options, qc, bundle_path, workers, threads, stage_args, on_record) -> int:
    """Run `todo` on a process pool; returns how many times the pool had to be rebuilt."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn: children start without the parent's threads or loaded libraries, so the thread
    # counts set by the initializer take effect, and forking a process holding onnxruntime
    # threads is avoided.
    context = multiprocessing.get_context("spawn")
    queue, suspects = deque(todo), deque()
    deaths = {pair.id: 0 for pair in todo}
    restarts = -1
    while queue or suspects:
        restarts += 1
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_pool_worker,
                                 initargs=(bundle_path, options["backend"], *stage_args, threads)) as pool:
            in_flight, broken = {}, False
            while not broken and (queue or suspects or in_flight):
                if suspects:  # after a worker death the pairs that were in flight run alone
                    if not in_flight:
                        pair = suspects.popleft()
                        in_flight[pool.submit(_pool_task, pair, str(out_root), options, qc)] = pair
                else:
                    while queue and len(in_flight) < workers:
                        pair = queue.popleft()
                        in_flight[pool.submit(_pool_task, pair, str(out_root), options, qc)] = pair
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    pair = in_flight.pop(future)
                    try:
                        record = future.result()
                    except BrokenProcessPool:
                        broken = True
                        in_flight[future] = pair  # settled below with the others
                        continue
                    on_record(pair, record)
            if broken:
                wait(in_flight)
                for future, pair in in_flight.items():
                    if future.exception() is None:
                        on_record(pair, future.result())
                        continue
                    deaths[pair.id] += 1
                    if deaths[pair.id] >= MAX_WORKER_DEATHS:
                        on_record(pair, {"id": pair.id, "status": "failed", "worker": None, "seconds": None,
                                         "error": f"a worker process died while registering this pair, {deaths[pair.id]} times "
                                                  "(killed by the system, e.g. out of memory, or crashed)"})
                    else:
                        suspects.append(pair)
                logger.warning("a worker process died; restarting the pool, %d pair(s) to re-run one at a time", len(suspects))
    return restarts


class _BundlePluginBase:
    """Dask worker plugin: carries the bundle's files once to each worker (joining ones too) and
    builds that worker's Registrar there. The picklable subclass `_DaskBundlePlugin` adds
    distributed's WorkerPlugin base (see `__getattr__`)."""

    def __init__(self, name: str, files: dict, backend: str, affine, refine, threads):
        self.name, self.files = name, files
        self.backend, self.affine, self.refine, self.threads = backend, affine, refine, threads
        self.registrar, self.error = None, None

    def setup(self, worker):
        try:
            folder = Path(worker.local_directory) / self.name
            folder.mkdir(parents=True, exist_ok=True)
            for file_name, data in self.files.items():
                (folder / file_name).write_bytes(data)
            threads = self.threads or max(1, _available_cores() // max(1, worker.state.nthreads))
            self.registrar = _make_registrar(str(folder), self.backend, self.affine, self.refine, threads)
        except Exception as error:  # reported by the first task on this worker
            self.error = f"{type(error).__name__}: {error}"

    def teardown(self, worker):
        self.registrar = None


def _dask_plugin_class():
    # distributed requires plugins to inherit its WorkerPlugin, but importing distributed loads
    # numpy, which a local pool worker must not do before setting its thread counts; so the
    # subclass is made on first use. Named and kept as a module global, it pickles by reference
    # like any module-level class (unpickling on a worker goes through `__getattr__`).
    name = "_DaskBundlePlugin"
    if name not in globals():
        from distributed import WorkerPlugin

        globals()[name] = type(name, (_BundlePluginBase, WorkerPlugin), {"__module__": __name__, "__qualname__": name})
    return globals()[name]


def __getattr__(name):
    if name == "_DaskBundlePlugin":
        return _dask_plugin_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dask_task(plugin_name: str, pair: Pair, out_root: str, options: dict, qc: bool) -> dict:
    from distributed import get_worker

    plugin = get_worker().plugins[plugin_name]
    if plugin.registrar is None:
        raise WorkerStartupError(f"worker {_worker_name()} could not build its Registrar: {plugin.error}")
    return register_pair(plugin.registrar, pair, out_root, options, qc=qc)


def _run_dask(todo, out_root, options, qc, bundle, scheduler, threads, stage_args, on_record) -> None:
    import uuid

    from distributed import Client, as_completed

    files = {name: (bundle.path / name).read_bytes() for name in ["config.json", *sorted(set(bundle.config["files"]) - {"config.json"})]}
    token = hashlib.sha256(json.dumps([options, threads], sort_keys=True).encode()).hexdigest()[:12]
    name = f"smgic-batch-{bundle.id.split(':')[-1][:12]}-{token}"
    plugin = _dask_plugin_class()(name, files, options["backend"], *stage_args, threads)
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler, timeout="30s")
    try:
        client.register_plugin(plugin, name=name)
        run = uuid.uuid4().hex[:8]
        futures = {client.submit(_dask_task, name, pair, str(out_root), options, qc, key=f"smgic-{pair.id}-{run}", pure=False): pair
                   for pair in todo}
        # as_completed waits on the futures' events on the loop it is given, else on the default
        # client's; with another Client in the process (a notebook's, a test's) those loops differ
        # and future.result() then fails with "bound to a different event loop".
        for future in as_completed(futures, loop=client.loop):
            pair = futures.pop(future)
            outcome = future.result() if future.status == "finished" else future.exception()
            # Forget the result at once: the scheduler recomputes results that a dead worker
            # held while a client still wants them, which would write the pair again.
            future.release()
            if isinstance(outcome, dict):
                on_record(pair, outcome)
                continue
            error = outcome
            if isinstance(error, WorkerStartupError):
                raise error
            # e.g. KilledWorker: the pair's task took down workers more often than the
            # scheduler allows (distributed.scheduler.allowed-failures).
            on_record(pair, {"id": pair.id, "status": "failed", "worker": None, "seconds": None,
                             "error": f"{type(error).__name__}: {error}"})
    finally:
        if client is not scheduler:
            client.close()


# ---------------------------------------------------------------------------------------------
# The public entry point


def register_many(pairs, out_root, *, bundle=None, backend: str = "auto", workers: int | None = None,
                  scheduler=None, threads_per_worker: int | None = None, affine="auto", refine="auto",
                  qc: bool = False, progress: bool = True, callback=None) -> dict:
    """Register every pair into ``out_root/<id>/``; returns the summary also written to
    ``out_root/summary.json`` (and ``summary.csv``).

    Parameters
    ----------
    pairs : CSV path or iterable
        See `read_pairs`.
    out_root : path
        Created if missing. Pairs whose outputs there are complete (`pair_is_complete`) are skipped.
    bundle, backend, affine, refine, qc
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
    from .registrar import BACKENDS, Registrar, _check_stage_mode, _stage_available

    started = time.perf_counter()
    pair_list = read_pairs(pairs)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    # The Registrar's own checks, here so that bad options fail before any worker starts.
    for value, module, budget in ((affine, "affine", False), (refine, "refine", True)):
        mode, _ = _check_stage_mode(value, module, allow_budget=budget)
        if mode == "on" and not _stage_available(module):
            raise ValueError(f"{module}={value!r} needs smgic_rt.{module}, which is not installed in this version")
    workers = _positive_int(workers, "workers")
    threads = _positive_int(threads_per_worker, "threads_per_worker")
    if scheduler is not None and workers is not None:
        raise ValueError(f"workers={workers} is for the local pool; with a scheduler the cluster's workers run the pairs")
    loaded = Registrar._load_bundle(bundle)  # verifies the checksums once, here
    out_root = Path(os.fspath(out_root)).expanduser().absolute()
    out_root.mkdir(parents=True, exist_ok=True)

    _remove_leftovers(out_root, pair_list)
    options = {"bundle_id": str(loaded.id), "backend": backend, "affine": affine, "refine": refine, "qc": bool(qc)}
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

    stage_args = (affine, refine)
    restarts = 0
    try:
        if not todo:
            pass
        elif scheduler is None:
            workers = workers or max(1, min(_available_cores(), len(todo)))
            threads = threads or max(1, _available_cores() // workers)
            restarts = _run_local(todo, out_root, options, qc, str(loaded.source), workers, threads, stage_args, on_record)
        else:
            _run_dask(todo, out_root, options, qc, loaded, scheduler, threads, stage_args, on_record)
    finally:
        bar.close()
        _remove_leftovers(out_root, pair_list)
        wall = time.perf_counter() - started
        summary = {
            "out_root": str(out_root),
            "scheduler": _scheduler_address(scheduler),
            "workers": workers, "threads_per_worker": threads, "pool_restarts": restarts, "options": options,
            "counts": dict(counts), "total": len(pair_list), "seconds": wall,
            "pairs_per_minute": 60.0 * counts["registered"] / wall if wall > 0 else None,
            "pairs": [records.get(p.id, {"id": p.id, "fixed": p.fixed, "moving": p.moving, "status": "not run",
                                         "error": "the run stopped before this pair"}) for p in pair_list],
        }
        atomic.write_json(out_root / SUMMARY_JSON, summary)
        _write_summary_csv(summary["pairs"], out_root / SUMMARY_CSV)
    logger.info("%d registered, %d skipped (complete), %d failed in %.1f s",
                counts["registered"], counts["skipped"], counts["failed"], summary["seconds"])
    return summary


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


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv=None) -> int:
    """Console script ``smgic-batch``: exit 0 when every pair is complete, 1 otherwise."""
    from .cli import _configure_logging, add_model_arguments

    parser = argparse.ArgumentParser(prog="smgic-batch", description="Register every pair of a CSV (fixed,moving[,moving_labels,id]).")
    parser.add_argument("pairs", help="CSV with columns fixed,moving and optionally moving_labels,fixed_mask,moving_mask,id")
    parser.add_argument("-o", "--output", dest="out_root", required=True, help="output root: one folder per pair id")
    parser.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    parser.add_argument("--threads-per-worker", type=int, help="threads per worker (default: cores / workers)")
    parser.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (default: run locally)")
    add_model_arguments(parser)
    parser.add_argument("--qc", action="store_true", help="also write qc.png per pair")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    _configure_logging("smgic-batch", -1 if args.quiet else args.verbose)
    try:
        summary = register_many(
            args.pairs, args.out_root, bundle=args.bundle, backend=args.backend, workers=args.workers,
            scheduler=args.scheduler, threads_per_worker=args.threads_per_worker, affine=args.affine,
            refine=args.refine, qc=args.qc, progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        logger.error("interrupted; finished pairs are kept and a rerun skips them")
        return 130
    except Exception as error:
        if args.verbose:
            logger.exception("failed")
        else:
            logger.error("%s: %s", type(error).__name__, error)
        return 1
    counts = summary["counts"]
    logger.warning("%d registered, %d skipped (complete), %d failed; summary in %s",
                   counts["registered"], counts["skipped"], counts["failed"], Path(summary["out_root"]) / SUMMARY_CSV)
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
