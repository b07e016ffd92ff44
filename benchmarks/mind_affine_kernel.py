"""The MIND affine stage's cost (issue 33): CPU seconds (time.process_time, one thread) of

- ``kernel``: one evaluation of the MIND similarity and its gradient at each affine level of the
  contrast set's T2 -> T1 misplaced pair (2 mm) at the stage's identity start, by the
  per-channel `ops.affine_ncc_sums` loop (what `affine.mind_and_gradient` did before
  `ops.affine_ssd_sums`) and by `affine.mind_and_gradient` (one multi-channel call); best of
  `--repeats` runs of `--evaluations` evaluations each;
- ``stage``: the whole registration of that pair with ``Registrar(metric="mind", threads=1)``:
  the affine stage's CPU and wall seconds, its L-BFGS evaluations and matrix, the
  registration's seconds, and its Dice;
- ``pairs``: the affine stage alone on every known pair of the contrast set (seed 0), with the
  per-channel similarity and with `affine.mind_and_gradient`: CPU seconds, evaluations, final
  similarity and how far the two matrices are apart (equal sums up to rounding; L-BFGS amplifies
  last-bit changes, so the paths differ).

    OMP_NUM_THREADS=1 python benchmarks/mind_affine_kernel.py --part stage --json out.jsonl

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


def _recorded(function):
    """`function` wrapped to keep its CPU seconds and its result (the affine stage's own)."""
    calls = []

    def recorded(*args, **kwargs):
        start = time.process_time()
        result = function(*args, **kwargs)
        calls.append((time.process_time() - start, result))
        return result

    return recorded, calls


def stage(pair) -> dict:
    registrar = Registrar(metric="mind", threads=1)
    original = affine.register_affine
    affine.register_affine, calls = _recorded(original)  # pipeline.stages imports it at call time
    try:
        scored = accuracy._score_smgic(registrar, pair)
    finally:
        affine.register_affine = original
    (cpu_seconds, result), = calls
    return {"dice": scored["dice"], "affine_cpu_seconds": cpu_seconds,
            "affine_wall_seconds": scored["stage_seconds"]["affine"],
            "affine_evaluations": [s["evaluations"] for s in result.stats["stages"]],
            "affine_matrix": np.round(result.matrix, 6).tolist(),
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


def per_channel_similarity(fixed, moving, world):
    """`affine.mind_and_gradient` as it was: one `affine_ncc_sums` call per channel, minus the
    sum over the channels of ``(Sff - 2 Sfm + Smm) / S``, gradient ``-2 (dSmm - dSfm) / S``."""
    voxel = affine._voxel_map(fixed, moving, world)
    mask = affine._mask_for(fixed, moving, voxel)
    value, d_rows = 0.0, np.zeros(12)
    for fixed_channel, moving_channel in zip(fixed.features, moving.features):
        sums = ops.affine_ncc_sums(fixed_channel, mask, moving_channel, affine._kernel_matrix(voxel))
        if sums[0] < 10:
            return -float(fixed.features.shape[0]), np.zeros((4, 4))
        value -= (sums[3] - 2.0 * sums[5] + sums[4]) / sums[0]
        d_rows -= 2.0 * (sums[30:42] - sums[18:30]) / sums[0]
    return float(value), affine._world_gradient(d_rows, fixed, moving)


def kernel(pair, evaluations: int, repeats: int) -> dict:
    rows = {}
    for spacing, (fixed, moving) in _levels(pair).items():
        world = np.eye(4)  # the misplaced header's own map: the stage's identity start
        seconds = {}
        for name, function in (("per_channel", per_channel_similarity), ("one_call", affine.mind_and_gradient)):
            best = np.inf
            for _ in range(repeats):
                start = time.process_time()
                for _ in range(evaluations):
                    function(fixed, moving, world)
                best = min(best, (time.process_time() - start) / evaluations)
            seconds[name] = best
        rows[f"{spacing:g}mm"] = {"fixed_shape": list(fixed.image.shape), "channels": int(fixed.features.shape[0]),
                                 "seconds_per_evaluation": seconds,
                                 "speedup": seconds["per_channel"] / seconds["one_call"]}
    return rows


def _register_affine_with(similarity, pair):
    fixed, fixed_affine = affine._check(np.asarray(pair.fixed.dataobj, np.float32), pair.fixed.affine, "fixed")
    moving, moving_affine = affine._check(np.asarray(pair.moving.dataobj, np.float32), pair.moving.affine, "moving")
    kept = affine.SIMILARITIES["mind"]
    affine.SIMILARITIES["mind"] = similarity
    try:
        start = time.process_time()
        result = affine.register_affine(fixed, fixed_affine, moving, moving_affine,
                                        options=affine.AffineOptions(metric="mind"))
        return time.process_time() - start, result
    finally:
        affine.SIMILARITIES["mind"] = kept


def pairs() -> dict:
    rows = {}
    for pair in contrasts.make_contrast_pairs(seed=0, cross_subject=()):
        row = {}
        for name, similarity in (("per_channel", per_channel_similarity), ("one_call", affine.mind_and_gradient)):
            seconds, result = _register_affine_with(similarity, pair)
            row[name] = {"cpu_seconds": seconds, "evaluations": [s["evaluations"] for s in result.stats["stages"]],
                         "similarity": result.stats["mind_after"], "matrix": result.matrix.tolist()}
        difference = np.abs(np.asarray(row["per_channel"]["matrix"]) - np.asarray(row["one_call"]["matrix"]))
        row["max_linear_difference"] = float(difference[:3, :3].max())
        row["max_translation_difference_mm"] = float(difference[:3, 3].max())
        rows[pair.name] = row
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("kernel", "stage", "pairs"), required=True)
    parser.add_argument("--evaluations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-pairs", action="store_true", help="--part stage on every known contrast pair")
    parser.add_argument("--label", default="", help="recorded in the output (e.g. before / after)")
    parser.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = parser.parse_args(argv)
    if args.part == "pairs":
        result, name = pairs(), "contrast set, known pairs"
    elif args.part == "stage" and args.all_pairs:
        result = {pair.name: stage(pair) for pair in contrasts.make_contrast_pairs(seed=0, cross_subject=())}
        name = "contrast set, known pairs"
    else:
        pair = t2_misplaced_pair()
        result, name = stage(pair) if args.part == "stage" else kernel(pair, args.evaluations, args.repeats), pair.name
    record = {"part": args.part, "label": args.label, "pair": name,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "result": result}
    print(json.dumps(record, indent=1))
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
