"""The Dask driver of ``smgic-batch``: the same per-pair work on an existing cluster.

The bundle's files travel once per worker inside a worker plugin, which also builds that
worker's `Registrar`. Input paths and OUTROOT must be visible to the workers (a shared file
system), as for any cluster job reading and writing files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..io import atomic
from .local import available_cores
from .work import WorkerStartupError, make_registrar, register_pair, worker_name

__all__ = ["run_dask"]


class _BundlePluginBase:
    """Dask worker plugin: carries the bundle's files once to each worker (joining ones too) and
    builds that worker's Registrar there. The picklable subclass `_DaskBundlePlugin` adds
    distributed's WorkerPlugin base (see `__getattr__`)."""

    def __init__(self, name: str, files: dict, registrar_options: dict, threads):
        self.name, self.files = name, files
        self.registrar_options, self.threads = registrar_options, threads
        self.registrar, self.error = None, None

    def setup(self, worker):
        try:
            folder = Path(worker.local_directory) / self.name
            folder.mkdir(parents=True, exist_ok=True)
            for file_name, data in self.files.items():
                atomic.write_bytes(folder / file_name, data)
            threads = self.threads or max(1, available_cores() // max(1, worker.state.nthreads))
            self.registrar = make_registrar(str(folder), self.registrar_options, threads)
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


def _dask_task(plugin_name: str, pair, out_root: str, options: dict, qc: bool) -> dict:
    from distributed import get_worker

    plugin = get_worker().plugins[plugin_name]
    if plugin.registrar is None:
        raise WorkerStartupError(f"worker {worker_name()} could not build its Registrar: {plugin.error}")
    return register_pair(plugin.registrar, pair, out_root, options, qc=qc)


def run_dask(todo, out_root, options, qc, bundle, scheduler, threads, registrar_options, on_record) -> None:
    import uuid

    from distributed import Client, as_completed

    files = {name: (bundle.path / name).read_bytes() for name in bundle.file_names}
    token = hashlib.sha256(json.dumps([options, threads], sort_keys=True).encode()).hexdigest()[:12]
    name = f"smgic-batch-{bundle.id.split(':')[-1][:12]}-{token}"
    plugin = _dask_plugin_class()(name, files, registrar_options, threads)
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
