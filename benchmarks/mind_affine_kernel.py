"""The MIND affine stage's cost (issue 33): CPU seconds (time.process_time, one thread) of

- ``kernel``: one evaluation of the descriptors' SSD sums at each affine level of the contrast
  set's T2 -> T1 misplaced pair (2 mm), by the per-channel `ops.affine_ncc_sums` loop (what
  `affine.mind_and_gradient` did before `ops.affine_ssd_sums`) and by the one multi-channel call;
  best of `--repeats` runs of `--evaluations` evaluations each;
- ``stage``: the whole registration of that pair with ``Registrar(metric="mind", threads=1)``:
  the affine stage's CPU and wall seconds, the registration's, and its Dice.

    OMP_NUM_THREADS=1 python benchmarks/mind_affine_kernel.py --part stage --json out.json

``--part stage`` runs against any checkout (it uses only the Registrar), so the same command on
the code before and after a change gives the before/after rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import contrasts  # noqa: E402
from smgic_rt import Registrar  # noqa: E402
from smgic_rt.geometry import ops  # noqa: E402
from smgic_rt.methods import affine  # noqa: E402


def t2_misplaced_pair():
    return contrasts.make_contrast_pairs(seed=0, contrasts=("T2",), headers=("misplaced",), cross_subject=())[0]


def _cpu_timed(function):
    """`function` wrapped to add its CPU seconds to the returned list (the affine stage's own)."""
    spent = []

    def timed(*args, **kwargs):
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent.append(time.process_time() - start)

    return timed, spent


def stage(pair) -> dict:
    registrar = Registrar(metric="mind", threads=1)
    original = affine.register_affine
    affine.register_affine, spent = _cpu_timed(original)  # pipeline.stages imports it at call time
    try:
        scored = accuracy._score_smgic(registrar, pair)
    finally:
        affine.register_affine = original
    return {"dice": scored["dice"], "affine_cpu_seconds": sum(spent),
            "affine_wall_seconds": scored["stage_seconds"]["affine"],
            "registration_cpu_seconds": scored["cpu_seconds"], "registration_wall_seconds": scored["seconds"]}


def _levels(pair):
    options = affine.AffineOptions(metric="mind")
    fixed, fixed_affine = (np.asarray(pair.fixed.dataobj, np.float32), pair.fixed.affine)
    moving, moving_affine = (np.asarray(pair.moving.dataobj, np.float32), pair.moving.affine)
    fixed, fixed_affine = affine._check(fixed, fixed_affine, "fixed")
    moving, moving_affine = affine._check(moving, moving_affine, "moving")
    fixed_levels = affine._pyramid(fixed, fixed_affine, options.resolutions, True, "mind")
    moving_levels = affine._pyramid(moving, moving_affine, options.resolutions, False, "mind")
    return {spacing: (fixed_levels[spacing], moving_levels[spacing]) for spacing in options.resolutions}


def per_channel_sums(fixed, moving, voxel):
    """The SSD value and 12 derivative sums from one `affine_ncc_sums` call per channel."""
    matrix = affine._kernel_matrix(voxel)
    value, d_rows = 0.0, np.zeros(12)
    for fixed_channel, moving_channel in zip(fixed.features, moving.features):
        sums = ops.affine_ncc_sums(fixed_channel, fixed.mask, moving_channel, matrix)
        value += sums[3] - 2.0 * sums[5] + sums[4]
        d_rows += sums[30:42] - sums[18:30]
    return value, d_rows


def one_call_sums(fixed, moving, voxel):
    return ops.affine_ssd_sums(fixed.features, fixed.mask, moving.features, affine._kernel_matrix(voxel))


def kernel(pair, evaluations: int, repeats: int) -> dict:
    rows = {}
    for spacing, (fixed, moving) in _levels(pair).items():
        # the misplaced header's own map: the stage's identity start
        voxel = affine._voxel_map(fixed, moving, np.eye(4))
        seconds = {}
        for name, function in (("per_channel", per_channel_sums), ("one_call", one_call_sums)):
            best = np.inf
            for _ in range(repeats):
                start = time.process_time()
                for _ in range(evaluations):
                    function(fixed, moving, voxel)
                best = min(best, (time.process_time() - start) / evaluations)
            seconds[name] = best
        rows[f"{spacing:g}mm"] = {"fixed_shape": list(fixed.image.shape), "channels": int(fixed.features.shape[0]),
                                 "seconds_per_evaluation": seconds,
                                 "speedup": seconds["per_channel"] / seconds["one_call"]}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("kernel", "stage"), required=True)
    parser.add_argument("--evaluations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="", help="recorded in the output (e.g. before / after)")
    parser.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = parser.parse_args(argv)
    pair = t2_misplaced_pair()
    result = stage(pair) if args.part == "stage" else kernel(pair, args.evaluations, args.repeats)
    record = {"part": args.part, "label": args.label, "pair": pair.name,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "result": result}
    print(json.dumps(record, indent=1))
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
