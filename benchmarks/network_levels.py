"""Which of the network's levels pay for their time on this hardware: the measurement behind a
bundle's ``profiles`` entry (`smgic_rt.models.bundle.Bundle.profile_levels`).

    python benchmarks/network_levels.py --json benchmarks/results/network_levels_cpu.json
    python -m export profile smgic_rt/models/default --from benchmarks/results/network_levels_cpu.json

On each set (the real-pair set of benchmarks/real_pairs.py, one cycle of directions, raw and
misplaced headers; accuracy.py's synthetic heads and brain-only pairs at 1 mm), with 2 threads:
the affine stage alone, the network's levels 1..k alone (``NetworkOptions(levels=k)``, refinement
off), the refinement alone (network off), levels 1..k then the whole refinement (``full_k``) and
levels 1..k then the refinement's levels the network did not cover (``rest_k``,
``skip_covered=True``), for every k (or those of ``--levels``). Mean Dice and mean seconds per
pair (registration only) of each.

The rule (`choose_levels`): k levels with a refinement variant pay for themselves when, on every
set, the network alone scores at least the affine stage (it adds, not harms), and k levels plus
that refinement score at least the refinement alone less 0.002 in less time than the refinement
alone. Of the (k, variant) that pay, the one with the best mean Dice over the sets is chosen; 0
levels when none pays (``network="auto"`` then does not run the network on this hardware).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402
import real_pairs  # noqa: E402

THREADS = 2
DICE_TOLERANCE = 0.002
# The rule of `choose_levels`, in words (the report carries it into the bundle's profile).
RULE = ("k levels (with the whole refinement, or with its levels they do not cover) pay when, on every set, "
        "the network alone scores at least the affine stage and k levels plus that refinement score at least the "
        f"refinement alone less {DICE_TOLERANCE} in less time")
# Refinement variants after k network levels: method prefix -> NetworkOptions.skip_covered.
VARIANTS = {"full": False, "rest": True}
log = logging.getLogger("benchmarks.network_levels")


def make_sets(synthetic_pairs: int, seed: int) -> dict:
    heads = common.make_pairs(synthetic_pairs, resolution=1.0, seed=seed)
    return {"real": real_pairs.make_real_pairs(directions="cycle", seed=seed),
            "heads": heads, "brain_only": [common.brain_only(pair) for pair in heads]}


def methods(levels) -> dict:
    """method name -> Registrar keyword arguments, for each k in `levels`."""
    from smgic_rt.pipeline import NetworkOptions

    from smgic_rt.presets import PRESETS

    # refine_coarse: the refinement's levels coarser than the model grid alone, what the network's
    # levels 1-3 are trained to do (its teacher): the gap a network_3 row leaves to close.
    made = {"affine": dict(network="off", refine="off"), "refine_only": dict(network="off", refine="on"),
            "refine_coarse": dict(network="off", refine="on",
                                  refine_options=PRESETS["fast"]["refine_options"].coarse())}
    for k in levels:
        made[f"network_{k}"] = dict(network="on", refine="off", network_options=NetworkOptions(levels=k))
        for prefix, skip in VARIANTS.items():
            made[f"{prefix}_{k}"] = dict(network="on", refine="on",
                                         network_options=NetworkOptions(levels=k, skip_covered=skip))
    return made


def measure(sets: dict, bundle=None, levels=None) -> dict:
    from smgic_rt import Registrar

    num_levels = Registrar(bundle, network="off").bundle.num_levels
    levels = list(range(1, num_levels + 1)) if levels is None else sorted(levels)
    if not levels or min(levels) < 1 or max(levels) > num_levels:
        raise ValueError(f"levels must be in 1..{num_levels}, got {levels}")
    registrars = {name: Registrar(bundle, backend="onnxruntime", threads=THREADS, **kwargs)
                  for name, kwargs in methods(levels).items()}
    report = {"num_levels": num_levels, "levels_measured": levels,
              "bundle_id": str(next(iter(registrars.values())).bundle.id), "sets": {}}
    for set_name, pairs in sets.items():
        rows = {name: [] for name in registrars}
        for pair in pairs:
            for name, registrar in registrars.items():
                scores = accuracy._score_smgic(registrar, pair)
                rows[name].append({"dice": scores["dice"], "seconds": scores["seconds"]})
                log.info("%s %s %s: Dice %.4f in %.2f s", set_name, pair.name, name, scores["dice"], scores["seconds"])
        report["sets"][set_name] = {
            "pairs": len(pairs),
            "methods": {name: {"dice_mean": float(np.mean([r["dice"] for r in values])),
                               "seconds_mean": float(np.mean([r["seconds"] for r in values])),
                               "dice": [r["dice"] for r in values], "seconds": [r["seconds"] for r in values]}
                        for name, values in rows.items()}}
    (report["chosen_levels"], report["chosen_skip_covered"]), report["reasons"] = choose_levels(report)
    report["rule"] = RULE
    return report


def choose_levels(report: dict):
    """((levels, skip_covered), {method: why it does or does not pay}) by the rule of the
    module's docstring."""
    reasons, paying = {}, {}
    for k in report.get("levels_measured", range(1, report["num_levels"] + 1)):
        for prefix, skip in VARIANTS.items():
            method, failures = f"{prefix}_{k}", []
            for set_name, result in report["sets"].items():
                m = result["methods"]
                if m[f"network_{k}"]["dice_mean"] < m["affine"]["dice_mean"]:
                    failures.append(f"{set_name}: network alone {m[f'network_{k}']['dice_mean']:.4f} < affine "
                                    f"{m['affine']['dice_mean']:.4f}")
                if m[method]["dice_mean"] < m["refine_only"]["dice_mean"] - DICE_TOLERANCE:
                    failures.append(f"{set_name}: {method} {m[method]['dice_mean']:.4f} < refinement alone "
                                    f"{m['refine_only']['dice_mean']:.4f} - {DICE_TOLERANCE}")
                if m[method]["seconds_mean"] >= m["refine_only"]["seconds_mean"]:
                    failures.append(f"{set_name}: {method} {m[method]['seconds_mean']:.2f} s >= refinement alone "
                                    f"{m['refine_only']['seconds_mean']:.2f} s")
            reasons[method] = failures or ["pays on every set"]
            if not failures:
                paying[(k, skip)] = float(np.mean([r["methods"][method]["dice_mean"] for r in report["sets"].values()]))
    return (max(paying, key=paying.get) if paying else (0, False)), reasons


def table(report: dict) -> str:
    names = list(next(iter(report["sets"].values()))["methods"])
    rows = [[name] + [f"{r['methods'][name]['dice_mean']:.4f} / {r['methods'][name]['seconds_mean']:.2f} s"
                      for r in report["sets"].values()] for name in names]
    return common.markdown_table(["method"] + [f"{s} ({r['pairs']} pairs): Dice / s" for s, r in report["sets"].items()],
                                 rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-pairs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", help="model bundle (default: the installed default bundle)")
    parser.add_argument("--levels", type=int, nargs="+", help="the k to measure (default: every level)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = measure(make_sets(args.synthetic_pairs, args.seed), bundle=args.bundle, levels=args.levels)
    report.update(threads=THREADS, cpu_count=os.cpu_count(), load_average_end=[round(v, 2) for v in os.getloadavg()])
    print(table(report))
    print(f"\nchosen levels: {report['chosen_levels']} (refinement skips the levels they cover: "
          f"{report['chosen_skip_covered']})")
    for k, why in report["reasons"].items():
        print(f"  {k} levels: {'; '.join(why)}")
    if args.json:
        common.write_json_atomic(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
