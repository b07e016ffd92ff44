"""Refinement variants over the accuracy sets, in one process: where the presets come from.

    python benchmarks/refine_sweep.py --variants defaults,fast --sets real6,heads1,brain2,conformed256
    python benchmarks/refine_sweep.py --list

Each variant (benchmarks/variants.json, data) is `RefineOptions` for
``Registrar(network="off", refine_options=...)`` (the
affine stage and everything else as shipped, onnxruntime, 2 threads), scored as
benchmarks/accuracy.py scores its smgic rows (mean Dice of the warped labels, the largest
folding fraction, registration seconds). Sets: ``real6`` the 6 directed real pairs with raw
headers (benchmarks/real_pairs.py), ``cycle`` accuracy.py's real-pair set (3 raw + 3
misplaced pairs, ``--set real --directions cycle``), ``heads1`` accuracy.py's 5 synthetic 1 mm heads,
``brain2`` its 5 brain-only 2 mm pairs, ``conformed256`` the 256^3 pair of benchmarks/peers.py
(with ``--inverse`` also the written inverse field's distance from the native one inside its
moving brain: a rougher velocity is held less well by the compact lattice).
Pairs are built once per run. Dice does not depend on the machine's load (the budgets are
iteration counts); seconds do.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402
import peers  # noqa: E402
import real_pairs  # noqa: E402
from smgic_rt.presets import PRESETS  # noqa: E402
from smgic_rt.methods.refine import Level, RefineOptions  # noqa: E402

VARIANTS_FILE = Path(__file__).resolve().with_name("variants.json")


def variant_options(spec: dict) -> RefineOptions:
    """The `RefineOptions` of one variant of variants.json (see its "_about")."""
    base = PRESETS[spec["preset"]]["refine_options"] if "preset" in spec else RefineOptions()
    levels = list(base.levels)
    for index, change in spec.get("levels", {}).items():
        levels[int(index)] = dataclasses.replace(levels[int(index)], **change)
    levels += [Level(**level) for level in spec.get("add_levels", [])]
    return dataclasses.replace(base, levels=tuple(levels), **spec.get("options", {}))


def load_variants(path=VARIANTS_FILE) -> dict:
    """name -> RefineOptions, every variant of the data file."""
    specs = json.loads(Path(path).read_text())
    return {name: variant_options(spec) for name, spec in specs.items() if not name.startswith("_")}


SETS = ("real6", "cycle", "heads1", "brain2", "conformed256")


def make_set(name: str) -> list:
    if name == "real6":
        return real_pairs.make_real_pairs(directions="all", headers=("raw",))
    if name == "cycle":  # benchmarks/accuracy.py's real-pair set (--directions cycle)
        return real_pairs.make_real_pairs(directions="cycle")
    if name == "heads1":
        return common.make_pairs(5, resolution=1.0, seed=0)
    if name == "brain2":
        return [common.brain_only(pair) for pair in common.make_pairs(5, resolution=2.0, seed=0)]
    if name == "conformed256":
        folder = Path(tempfile.mkdtemp(prefix="smgic_sweep_"))
        files = peers.write_pair("conformed256", folder)
        structures = [s for s in real_pairs.read_structures() if s.name in files["structures"]]
        image = {role: nib.load(files[role]) for role in ("fixed", "fixed_labels", "moving", "moving_labels")}
        # loaded into memory: the folder may go
        image = {role: nib.Nifti1Image(np.asarray(im.dataobj), im.affine) for role, im in image.items()}
        return [real_pairs.RealPair("cat12_conformed256_to_mni152", "mni152", "cat12", "raw", image["fixed"],
                                    image["fixed_labels"], image["moving"], image["moving_labels"], structures, True,
                                    None)]
    raise ValueError(f"set must be one of {list(SETS)}, got {name!r}")


def compact_inverse_error(options: RefineOptions, pair) -> dict:
    """How far the written (compact, 2 mm lattice) inverse field is from the native one inside the
    moving brain (its nonzero voxels), mm: what tests/test_fields.py bounds (p95 < 0.1 mm on its
    2 mm pair). A rougher velocity is less well held by the lattice, which lies in the moving
    image's world and so is not the one the velocity is trilinear on."""
    from smgic_rt import Registrar
    from smgic_rt.geometry import transforms
    from smgic_rt.pipeline import FieldsOptions

    made = {grid: Registrar(backend="onnxruntime", threads=accuracy.THREADS, network="off", refine_options=options,
                            fields_options=FieldsOptions(grid=grid)).register(pair.fixed, pair.moving)
            for grid in ("compact", "native")}
    moving = pair.moving
    resampled = transforms.displacement_on_grid(*made["compact"].inverse_field, moving.shape, moving.affine)
    error = np.sqrt(((resampled - made["native"].inverse_field[0]) ** 2).sum(axis=0))[np.asarray(moving.dataobj) > 0]
    return {"inverse_p95_mm": float(np.percentile(error, 95)), "inverse_max_mm": float(error.max())}


def run(variants, sets, inverse: bool = False) -> dict:
    from smgic_rt import Registrar

    VARIANTS = load_variants()
    pairs = {name: make_set(name) for name in sets}
    report = {}
    for variant in variants:
        registrar = Registrar(backend="onnxruntime", threads=accuracy.THREADS, network="off",
                              refine_options=VARIANTS[variant])
        report[variant] = {}
        for name in sets:
            scores = [accuracy._score_smgic(registrar, pair) for pair in pairs[name]]
            report[variant][name] = {"dice_mean": float(np.mean([s["dice"] for s in scores])),
                                     "dice": [s["dice"] for s in scores],
                                     "folding_fraction_max": float(max(s["folding_fraction"] for s in scores)),
                                     "seconds_mean": float(np.mean([s["seconds"] for s in scores]))}
            if inverse and name == "conformed256":
                report[variant][name].update(compact_inverse_error(VARIANTS[variant], pairs[name][0]))
            print(variant, name, json.dumps({k: v for k, v in report[variant][name].items() if k != "dice"}),
                  flush=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="defaults,fast", help="comma-separated names (--list shows them)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}")
    parser.add_argument("--inverse", action="store_true",
                        help="on conformed256, also the compact inverse field's distance from the native one")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args(argv)
    VARIANTS = load_variants()
    if args.list:
        for name, options in VARIANTS.items():
            print(f"{name}: {options}")
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if set(variants) - set(VARIANTS) or set(sets) - set(SETS):
        parser.error(f"unknown variants {sorted(set(variants) - set(VARIANTS))} or sets {sorted(set(sets) - set(SETS))}")
    report = run(variants, sets, inverse=args.inverse)
    if args.json:
        common.write_json_atomic(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
