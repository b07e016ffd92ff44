"""``smgic-batch``: the command line of a cohort run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .run import SUMMARY_CSV, register_many

__all__ = ["main"]

logger = logging.getLogger("smgic_rt")


def main(argv=None) -> int:
    """Console script ``smgic-batch``: exit 0 when every pair is complete, 1 otherwise."""
    from ..cli import _configure_logging, add_model_arguments

    parser = argparse.ArgumentParser(prog="smgic-batch", description="Register every pair of a CSV (fixed,moving[,moving_labels,id]).")
    parser.add_argument("pairs", help="CSV with columns fixed,moving and optionally moving_labels,fixed_mask,moving_mask,"
                        "fixed_exclude,moving_exclude,id")
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
            scheduler=args.scheduler, threads_per_worker=args.threads_per_worker, quality=args.quality, affine=args.affine,
            network=args.network, refine=args.refine, metric=args.metric, qc=args.qc, progress=not args.no_progress,
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
    flags = summary["flags"]
    logger.warning("%d registered, %d skipped (complete), %d failed; QC flags: %d ok, %d warn, %d fail; summary in %s, "
                   "report in %s", counts["registered"], counts["skipped"], counts["failed"], flags["ok"], flags["warn"],
                   flags["fail"], Path(summary["out_root"]) / SUMMARY_CSV, Path(summary["out_root"]) / "report.html")
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
