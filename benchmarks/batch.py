"""Cohort throughput of ``smgic-batch``: pairs per minute with 1 and 2 local workers, and the peak
memory (RSS) of each worker process.

    python benchmarks/batch.py --pairs 8 --workers 1,2 --json batch.json

The cohort is `common.make_pairs`: seeded large-deformation copies of Colin27 (with its AAL labels,
warped along) registered back onto Colin27, at ``--resolution`` mm. Each worker count runs the same
CSV into a fresh output root through `smgic_rt.batch.register_many` with ``cores / workers``
threads per worker; the wall time includes starting the pool (each worker loads the bundle once),
as a user's run does. Peak RSS is what each worker process reports itself (getrusage), so it
covers the bundle, the backend's sessions and the largest pair it registered.

Without ``--bundle`` the installed default bundle is used; when there is none, a random-weight
bundle is exported at ``--grid``/``--spacing``/``--channels`` (speed and memory depend on the
model's size, not on its weights; the report names the bundle that ran).
"""

from __future__ import annotations

# Nothing heavy at the top: the pool's workers start with "spawn" and import this file as their
# main module before they set their thread counts.
import argparse
import sys
from pathlib import Path


def _write_cohort(folder: Path, count: int, resolution: float) -> Path:
    import csv

    import nibabel as nib

    import common

    pairs = common.make_pairs(count, resolution=resolution, seed=0)
    nib.save(pairs[0].fixed, folder / "fixed.nii.gz")
    rows = []
    for number, pair in enumerate(pairs):
        nib.save(pair.moving, folder / f"moving{number:03d}.nii.gz")
        nib.save(pair.moving_labels, folder / f"moving{number:03d}_labels.nii.gz")
        rows.append({"id": f"pair{number:03d}", "fixed": "fixed.nii.gz", "moving": f"moving{number:03d}.nii.gz",
                     "moving_labels": f"moving{number:03d}_labels.nii.gz"})
    with open(folder / "pairs.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["id", "fixed", "moving", "moving_labels"])
        writer.writeheader()
        writer.writerows(rows)
    return folder / "pairs.csv"


def _bundle(args, scratch: Path) -> str:
    if args.bundle:
        return args.bundle
    from smgic_rt.registrar import DEFAULT_BUNDLE_PATH

    if (DEFAULT_BUNDLE_PATH / "config.json").is_file():
        return str(DEFAULT_BUNDLE_PATH)
    import export

    grid = tuple(int(n) for n in args.grid.split(","))
    return str(export.write_random_bundle(scratch / "bundle", seed=0, grid_shape=grid, spacing=args.spacing, channels=args.channels))


def measure(csv_path: Path, out_root: Path, bundle: str, workers: int, threads: int, args) -> dict:
    import time

    import numpy as np

    from smgic_rt.batch import register_many

    start = time.perf_counter()
    summary = register_many(csv_path, out_root, bundle=bundle, backend=args.backend, workers=workers,
                            threads_per_worker=threads, affine=args.affine, refine=args.refine, progress=False)
    wall = time.perf_counter() - start
    records = [r for r in summary["pairs"] if r["status"] == "registered"]
    failed = [f"{r['id']}: {r['error']}" for r in summary["pairs"] if r["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} pair(s) failed, the figures would be wrong: {failed}")
    peaks = {}
    for record in records:  # a worker's peak only grows, so its last report is its peak
        peaks[record["worker"]] = max(peaks.get(record["worker"], 0.0), record["worker_peak_rss_mb"])
    return {
        "workers": workers, "threads_per_worker": threads, "pairs": len(records), "wall_seconds": wall,
        "pairs_per_minute": 60.0 * len(records) / wall,
        "pair_seconds_median": float(np.median([r["seconds"] for r in records])),
        "worker_peak_rss_mb": sorted(peaks.values()), "worker_processes": len(peaks),
        "pool_restarts": summary["pool_restarts"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8, help="pairs in the cohort")
    parser.add_argument("--resolution", type=float, default=2.0, help="mm per voxel of the cohort's images")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--bundle", help="model bundle (default: installed default, else a random-weight export)")
    parser.add_argument("--grid", default="80,96,80", help="model grid of the random-weight bundle")
    parser.add_argument("--spacing", type=float, default=2.0, help="mm per model voxel of the random-weight bundle")
    parser.add_argument("--channels", type=int, default=16, help="feature width of the random-weight bundle")
    parser.add_argument("--affine", default="auto")
    parser.add_argument("--refine", default="auto")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    import os
    import platform
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # also puts the checkout on sys.path

    from smgic_rt.batch import _available_cores
    from smgic_rt.models.bundle import load_bundle

    cores = _available_cores()
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="smgic_batch_bench_") as scratch:
        scratch = Path(scratch)
        (scratch / "cohort").mkdir()
        csv_path = _write_cohort(scratch / "cohort", args.pairs, args.resolution)
        bundle = _bundle(args, scratch)
        config = load_bundle(bundle).config
        report = {
            "machine": {"cores": cores, "cpu": platform.processor() or platform.machine(), "load_average_before": os.getloadavg()},
            "bundle": {"path": bundle, "grid_shape": config.get("grid_shape"), "spacing": config.get("spacing"),
                       "provenance": config.get("provenance") or config.get("training")},
            "cohort": {"pairs": args.pairs, "resolution_mm": args.resolution},
            "options": {"backend": args.backend, "affine": args.affine, "refine": args.refine},
            "runs": [measure(csv_path, scratch / f"out_{n}", bundle, n, max(1, cores // n), args) for n in counts],
        }
        report["machine"]["load_average_after"] = os.getloadavg()
    rows = [[r["workers"], r["threads_per_worker"], f"{r['pairs_per_minute']:.1f}", f"{r['wall_seconds']:.1f}",
             f"{r['pair_seconds_median']:.2f}", ", ".join(f"{m:.0f}" for m in r["worker_peak_rss_mb"])] for r in report["runs"]]
    print(common.markdown_table(["workers", "threads/worker", "pairs/min", "wall s", "median s/pair", "peak RSS per worker (MB)"], rows))
    print(f"cores {cores}; load average before {report['machine']['load_average_before']}, after {report['machine']['load_average_after']}")
    if args.json:
        common.write_json_atomic(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
