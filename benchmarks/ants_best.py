"""ANTs at its best (``antsRegistrationSyN[s]``) on the real-pair set, run once per pair and kept.

    nice -n 19 python benchmarks/ants_best.py [--directions cycle] [--threads 2]

About 30 minutes per 1 mm pair on 2 cores, too long to run beside every benchmark, so this script
runs benchmarks/peer_tools.py's ``ants-best`` on each pair of benchmarks/real_pairs.py's set that
``benchmarks/results/ants_best.json`` does not hold yet, one subprocess per pair, and adds the pair's
result to that file as soon as it is scored (a stopped run loses only the pair in progress; rerun
to continue). benchmarks/accuracy.py reads the file back for its ``ants_best`` row and says so.

Per pair: mean and per-structure Dice on the shared structures (the same scoring as
accuracy.py), the fraction of folded voxels of ANTs' deformable warp, the subprocess's wall
seconds and CPU seconds (user + system, from ``os.wait4``: a run niced beside other work has an
inflated wall time, and CPU seconds / threads is a lower bound on its wall time on an idle
machine), threads, nice level, load average, date and the antspyx version. Raw-header pairs run
first, then the misplaced ones.
"""

from __future__ import annotations

import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402
import peer_tools  # noqa: E402
import real_pairs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ants_best.json"
log = logging.getLogger("benchmarks.ants_best")


def read_results(path=RESULTS) -> dict:
    """The kept results: ``{"transform", "pairs": {pair name: row}}`` (empty when there are none)."""
    path = Path(path)
    if not path.is_file():
        return {"transform": peer_tools.ANTS_TRANSFORMS["ants-best"], "pairs": {}}
    return json.loads(path.read_text())


def run_pair(pair, threads: int, workdir: Path) -> dict:
    """``ants-best`` on one real pair in its own process; the scored row."""
    import ants

    paths = accuracy._write_pair(pair, workdir)
    outdir = workdir / "out"
    command = [sys.executable, str(Path(peer_tools.__file__).resolve()), "ants-best", str(paths["fixed"]),
               str(paths["moving"]), "-o", str(outdir), "--moving-labels", str(paths["moving_labels"]),
               "--threads", str(threads)]
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    load_start = os.getloadavg()
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"ants-best exited with {os.waitstatus_to_exitcode(status)} on {pair.name}")
    warped = np.rint(np.asarray(nib.load(outdir / "warped_labels.nii.gz").dataobj)).astype(np.int32)
    warp = next(outdir.glob("syn_*Warp.nii.gz"))
    if "Inverse" in warp.name:
        warp = next(p for p in outdir.glob("syn_*Warp.nii.gz") if "Inverse" not in p.name)
    jacobian = ants.create_jacobian_determinant_image(ants.image_read(str(paths["fixed"])), str(warp)).numpy()
    return {**accuracy._score_labels(pair, warped), "folding_fraction": common.folding_fraction(jacobian),
            "wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024.0, "threads": threads, "nice": os.nice(0),
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "antspyx": metadata.version("antspyx"), "header": pair.header,
            "fixed_brain": pair.fixed_brain, "moving_brain": pair.moving_brain}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directions", choices=("all", "cycle"), default="cycle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the real-pair set's seed (accuracy.py's default: 0)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--only", help="comma-separated pair names (default: every pair not kept yet)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = read_results(args.results)
    pairs = real_pairs.make_real_pairs(directions=args.directions, seed=args.seed)
    pairs.sort(key=lambda pair: pair.header != "raw")
    wanted = set(args.only.split(",")) if args.only else None
    for pair in pairs:
        if pair.name in results["pairs"] or (wanted is not None and pair.name not in wanted):
            continue
        log.info("ants-best on %s", pair.name)
        with tempfile.TemporaryDirectory(prefix="ants_best_") as scratch:
            row = run_pair(pair, args.threads, Path(scratch))
        log.info("%s: Dice %.4f, %.0f s wall, %.0f s CPU", pair.name, row["dice"], row["wall_seconds"],
                 row["cpu_seconds"])
        results = read_results(args.results)  # another run may have added pairs meanwhile
        results["pairs"][pair.name] = row
        common.write_json_atomic(results, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
