"""Cohort registration: ``smgic-batch`` over many pairs, on this machine or on a Dask cluster.

    smgic-batch PAIRS.csv -o OUTROOT [--workers N] [--threads-per-worker N]
                [--scheduler tcp://HOST:PORT] [--backend NAME] [--bundle PATH]
                [--affine MODE] [--network MODE] [--refine MODE] [--metric ncc|mind] [--qc] [--no-progress]

    >>> from smgic_rt.batch import register_many
    >>> summary = register_many("pairs.csv", "out/", workers=2)          # doctest: +SKIP

PAIRS.csv has the columns ``fixed,moving`` and optionally ``moving_labels``, ``fixed_mask``,
``moving_mask``, ``fixed_exclude``, ``moving_exclude`` and ``id``; relative paths are read relative to the CSV's folder. Each pair's
outputs go to ``OUTROOT/<id>/`` and are exactly what ``smgic-register`` writes for that pair: the
per-pair work is the CLI's (`smgic_rt.pipeline.job`: validate, register, save).

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
  a rerun skips exactly the pairs whose manifest matches what is on disk and redoes the others,
  replacing a pair's folder only if smgic wrote it and it holds nothing else (`smgic_rt.io.outputs`);
- ``OUTROOT/summary.csv`` and ``summary.json`` list every pair's status, error, stats and seconds.

Modules: `pairs` (the table), `manifests` (completeness), `work` (one pair), `local` (process
pool), `dask_cluster` (Dask), `run` (`register_many` and the summary), `cli` (``smgic-batch``).
"""

# Lazy: a spawned pool worker imports this package before it may load numpy (see `local`).
_EXPORTS = {"Pair": "pairs", "PairsFileError": "pairs", "read_pairs": "pairs", "WorkerStartupError": "work",
            "register_many": "run", "pair_is_complete": "manifests", "main": "cli"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
