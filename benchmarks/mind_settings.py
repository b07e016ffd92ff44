"""MIND settings on pairs that benchmarks/contrasts.py does not score: where the constants come from.

    python benchmarks/mind_settings.py --seeds 101 102 --settings 1,2 1,1 10,1 0.3,1 \\
        --jsonl benchmarks/results/mind_settings.jsonl

Each setting ``WEIGHT,DILATION`` sets `smgic_rt.methods.refine.MIND_WEIGHT` and
`smgic_rt.methods.similarity.MIND_DILATION` for ``Registrar(metric="mind")`` (fast preset, as
contrasts.py builds it) and registers:

- the six known contrast pairs of contrasts.py (T2, PD, EPI onto avg152T1; raw and misplaced
  headers) drawn with each of ``--seeds`` (other warps, misplacements, gamma and noise than the
  benchmark's seed 0), scored by Dice as contrasts.py scores them;
- the three real T1 pairs of ``real_pairs.make_real_pairs("cycle", headers=("raw",))``, where
  MIND should stay within 0.01 Dice of NCC (``--t1``; NCC registered once beside them).

Pick the best contrast mean among the settings within 0.01 of NCC on the T1 pairs; then score
contrasts.py once.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import contrasts  # noqa: E402
import real_pairs  # noqa: E402
from smgic_rt.methods import refine, similarity  # noqa: E402


def _setting(text: str) -> tuple[float, int]:
    weight, dilation = text.split(",")
    return float(weight), int(dilation)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102])
    parser.add_argument("--settings", type=_setting, nargs="+", required=True, metavar="WEIGHT,DILATION")
    parser.add_argument("--t1", action="store_true", help="also the real T1 pairs, and NCC on them")
    parser.add_argument("--jsonl", type=Path, help="append one line per registration here")
    args = parser.parse_args(argv)
    rows = []

    def score(kind, setting, pair, metric="mind"):
        result = accuracy._score_smgic(contrasts.make_registrar(metric), pair)
        rows.append({"set": kind, "setting": setting, "pair": pair.name, "dice": round(result["dice"], 4),
                     "seconds": round(result["seconds"], 1)})
        print(json.dumps(rows[-1]), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as log:
                log.write(json.dumps(rows[-1]) + "\n")

    known = [pair for seed in args.seeds for pair in contrasts.make_contrast_pairs(seed, cross_subject=())]
    t1 = real_pairs.make_real_pairs("cycle", headers=("raw",)) if args.t1 else []
    for pair in t1:
        score("t1", "ncc", pair, metric="ncc")
    for setting in args.settings:
        refine.MIND_WEIGHT, similarity.MIND_DILATION = setting
        for kind, pairs in (("contrast", known), ("t1", t1)):
            for pair in pairs:
                score(kind, list(setting), pair)
    for kind in ("contrast", "t1"):
        for setting in ["ncc"] + [list(s) for s in args.settings]:
            dice = [r["dice"] for r in rows if r["set"] == kind and r["setting"] == setting]
            if dice:
                print(f"{kind} {setting}: mean Dice {np.mean(dice):.4f} over {len(dice)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
