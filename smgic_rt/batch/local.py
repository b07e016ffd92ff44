"""The local driver of ``smgic-batch``: a pool of worker processes, each with its own Registrar.

Nothing heavy is imported at the top of this module: a spawned worker unpickles
`init_pool_worker` from here and must set its thread counts in the environment before numpy,
_C and onnxruntime load.
"""

from __future__ import annotations

import logging
import os
from collections import deque

__all__ = ["run_local", "available_cores", "exit_with_parent", "MAX_WORKER_DEATHS"]

logger = logging.getLogger("smgic_rt")

# A pair in flight when a worker died this many times is marked failed (it is the likely cause:
# after the first death it runs alone).
MAX_WORKER_DEATHS = 2
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# Local pool worker state: one Registrar per process, built by the initializer.
_WORKER = {}


def exit_with_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """End this process (at once, mid-pair if need be) when `parent_pid` is gone: a worker whose
    parent was killed (SIGKILL, no chance to stop its pool) must not live on as an orphan. A
    daemon thread polls the parent id; a partial pair is left as a staging folder that the next
    run removes (its marker names this dead process)."""
    import threading
    import time

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="smgic-parent-watch", daemon=True).start()


def init_pool_worker(bundle: str, registrar_options: dict, threads: int, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    # Before numpy / _C / onnxruntime load, so their thread pools take these sizes.
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    from ..process import registration_process

    registration_process()  # a worker process registers and nothing else
    from .work import make_registrar

    try:
        _WORKER["registrar"] = make_registrar(bundle, registrar_options, threads)
    except Exception as error:  # reported to the parent by the first task, which stops the run
        _WORKER["error"] = f"{type(error).__name__}: {error}"


def pool_task(pair, out_root: str, options: dict, qc: bool) -> dict:
    from .work import WorkerStartupError, register_pair, worker_name

    if "error" in _WORKER:
        raise WorkerStartupError(f"worker {worker_name()} could not build its Registrar: {_WORKER['error']}")
    return register_pair(_WORKER["registrar"], pair, out_root, options, qc=qc)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_local(todo, out_root, options, qc, bundle_path, workers, threads, registrar_options, on_record) -> int:
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
        with ProcessPoolExecutor(workers, mp_context=context, initializer=init_pool_worker,
                                 initargs=(bundle_path, registrar_options, threads, os.getpid())) as pool:
            in_flight, broken = {}, False
            while not broken and (queue or suspects or in_flight):
                if suspects:  # after a worker death the pairs that were in flight run alone
                    if not in_flight:
                        pair = suspects.popleft()
                        in_flight[pool.submit(pool_task, pair, str(out_root), options, qc)] = pair
                else:
                    while queue and len(in_flight) < workers:
                        pair = queue.popleft()
                        in_flight[pool.submit(pool_task, pair, str(out_root), options, qc)] = pair
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
