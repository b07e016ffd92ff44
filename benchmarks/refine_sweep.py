"""Refinement variants over the accuracy sets, in one process: where the presets come from.

    python benchmarks/refine_sweep.py --variants defaults,fast --sets real6,heads1,brain2,conformed256
    python benchmarks/refine_sweep.py --list

Each variant is `RefineOptions` for ``Registrar(network="off", refine_options=...)`` (the
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
from smgic_rt.methods.refine import RefineOptions  # noqa: E402

_EXACT = dict(symmetric=False, gradient="exact")  # the moving image alone moves, exact NCC gradient
_LAST_LEVEL_EXACT = dict(symmetric=(True, True, False), gradient=("window", "window", "exact"))
# The fast preset until 2026-12-05's fourth sweep (reg 0.05 on its last level, since 0.01): the
# third and fourth sweeps' "fast_*" variants are it with one change
_FAST_REG005 = RefineOptions(**_LAST_LEVEL_EXACT, iterations=(60, 40, 12), antialias=1.0)
# The fast preset from then until the fifth sweep (reg 0.01 on its last level)
_FAST_D = dataclasses.replace(_FAST_REG005, reg=(0.05, 0.05, 0.01))
# The accurate preset from the second sweep until the fifth
_ACCURATE_D = RefineOptions(iterations=(60, 40, 16), fine_iterations=10, gradient="exact", symmetric=False,
                            reg=(0.05, 0.05, 0.02), antialias=1.0)


def _split_model_level(first: int, second: int, fluid: float, reg: float = 0.05) -> dict:
    """The (reg 0.05) fast preset's model-grid level as two: `first` iterations as the preset smooths them
    (fluid 1.5), then `second` with `fluid` and `reg`; both exact, the moving image alone moving."""
    return dict(factors=(4, 2, 1, 1), iterations=(60, 40, first, second), fluid_sigma=(1.5, 1.5, 1.5, fluid),
                reg=(0.05, 0.05, 0.05, reg), symmetric=(True, True, False, False),
                gradient=("window", "window", "exact", "exact"))


# The first four sweeps' variants, as they ran: on images antialiased at strength 1
# (RefineOptions.antialias, 0.5 since the fifth sweep)
_BEFORE_FIFTH_SWEEP = {
    "defaults": RefineOptions(),  # RefineOptions' own defaults (the fast preset before 2026-12-05)
    "exact_everywhere": RefineOptions(**_EXACT),
    "exact_everywhere_fluid1": RefineOptions(**_EXACT, fluid_sigma=1.0),
    "exact_everywhere_fluid1_reg002": RefineOptions(**_EXACT, fluid_sigma=1.0, reg=0.02),
    "exact_everywhere_fluid075": RefineOptions(**_EXACT, fluid_sigma=0.75),
    "last_level_exact_8": RefineOptions(**_LAST_LEVEL_EXACT),
    "last_level_exact_12": RefineOptions(**_LAST_LEVEL_EXACT, iterations=(60, 40, 12)),
    "last_level_exact_16_fluid1_reg002": RefineOptions(**_LAST_LEVEL_EXACT, iterations=(60, 40, 16),
                                                       fluid_sigma=(1.5, 1.5, 1.0), reg=(0.05, 0.05, 0.02)),
    # 2026-12-05, second sweep (refine_sweep_2026-12-05b.md): the last level's smoothing and
    # |grad v|^2 weight, from last_level_exact_12 (the fast preset)
    **{f"last_level_exact_12_{name}": RefineOptions(**_LAST_LEVEL_EXACT, iterations=(60, 40, 12), **change)
       for name, change in {
           "reg0": dict(reg=(0.05, 0.05, 0.0)),
           "reg0005": dict(reg=(0.05, 0.05, 0.005)),
           "reg001": dict(reg=(0.05, 0.05, 0.01)),  # tried as the fast preset, not kept (smgic_rt.presets)
           "reg002": dict(reg=(0.05, 0.05, 0.02)),
           "reg003": dict(reg=(0.05, 0.05, 0.03)),
           "fluid1": dict(fluid_sigma=(1.5, 1.5, 1.0)),
           "fluid1_reg008": dict(fluid_sigma=(1.5, 1.5, 1.0), reg=(0.05, 0.05, 0.08)),
           "fluid1_reg012": dict(fluid_sigma=(1.5, 1.5, 1.0), reg=(0.05, 0.05, 0.12)),
           "fluid1_reg02": dict(fluid_sigma=(1.5, 1.5, 1.0), reg=(0.05, 0.05, 0.2)),
           "fluid12": dict(fluid_sigma=(1.5, 1.5, 1.2)),
           "fluid12_reg001": dict(fluid_sigma=(1.5, 1.5, 1.2), reg=(0.05, 0.05, 0.01)),
           "fluid12_reg003": dict(fluid_sigma=(1.5, 1.5, 1.2), reg=(0.05, 0.05, 0.03)),
           "fluid12_reg0": dict(fluid_sigma=(1.5, 1.5, 1.2), reg=(0.05, 0.05, 0.0)),
           "fluid13_reg001": dict(fluid_sigma=(1.5, 1.5, 1.3), reg=(0.05, 0.05, 0.01)),
           "fluid14_reg0": dict(fluid_sigma=(1.5, 1.5, 1.4), reg=(0.05, 0.05, 0.0)),
           "fluid16_reg0": dict(fluid_sigma=(1.5, 1.5, 1.6), reg=(0.05, 0.05, 0.0)),
           "fluid18_reg0": dict(fluid_sigma=(1.5, 1.5, 1.8), reg=(0.05, 0.05, 0.0)),
           "radius2": dict(radius=2),
           "fine2": dict(fine_iterations=2),
           "fine3": dict(fine_iterations=3),
       }.items()},
    "last_level_exact_16_reg001": RefineOptions(**_LAST_LEVEL_EXACT, iterations=(60, 40, 16), reg=(0.05, 0.05, 0.01)),
    "accurate_reg001": dataclasses.replace(_ACCURATE_D, reg=(0.05, 0.05, 0.01)),
    "accurate_reg005": dataclasses.replace(_ACCURATE_D, reg=0.05),  # the preset before
    # 2026-12-05, third sweep (refine_sweep_2026-12-05c.md): which level costs the fast preset
    # Dice on the real pairs, and the step size; each from the fast preset (then at reg 0.05)
    # with one change
    **{f"fast_{name}": dataclasses.replace(_FAST_REG005, **change) for name, change in {
        "8mm_only": dict(iterations=(60, 0, 0)),
        "no_4mm": dict(iterations=(60, 0, 12)),
        "4mm_3_iterations": dict(iterations=(60, 3, 12)),
        "no_8mm": dict(factors=(2, 1), iterations=(60, 12), symmetric=(True, False), gradient=("window", "exact")),
        "4mm_exact": dict(symmetric=(True, False, False), gradient=("window", "exact", "exact")),
        "4mm_fluid3": dict(fluid_sigma=(1.5, 3.0, 1.5)),
        "step075": dict(step=0.75),
        "step1": dict(step=1.0),
        "step15": dict(step=1.5),
        "step2": dict(step=2.0),
        "elastic05": dict(elastic_sigma=0.5),
        "eps001": dict(eps=0.01),
        "eps003": dict(eps=0.03),
        "fine4": dict(fine_iterations=4),
        "fine4_reg0": dict(fine_iterations=4, reg=(0.05, 0.05, 0.0)),
    }.items()},
    # 2026-12-05, fourth sweep (refine_sweep_2026-12-05d.md): the smoothing of the updates on the
    # model grid (fluid_sigma), on its whole level or on a second level on that grid after the
    # preset's 12 iterations ("split": factors 4, 2, 1, 1); each from the fast preset as it was
    # (reg 0.05)
    **{f"fast_{name}": dataclasses.replace(_FAST_REG005, **change) for name, change in {
        "fluid_last1": dict(fluid_sigma=(1.5, 1.5, 1.0)),
        "fluid_last075": dict(fluid_sigma=(1.5, 1.5, 0.75)),
        "fluid_last05": dict(fluid_sigma=(1.5, 1.5, 0.5)),
        "last_30_iterations": dict(iterations=(60, 40, 30)),
        "split_12_4_fluid05": _split_model_level(12, 4, 0.5),
        "split_12_8_fluid05": _split_model_level(12, 8, 0.5),
        "split_12_8_fluid05_reg002": _split_model_level(12, 8, 0.5, reg=0.02),
        "split_12_8_fluid075_reg01": _split_model_level(12, 8, 0.75, reg=0.1),
        "split_6_6_fluid05": _split_model_level(6, 6, 0.5),
        "split_4_8_fluid05": _split_model_level(4, 8, 0.5),
    }.items()},
}
VARIANTS = {
    "fast": PRESETS["fast"]["refine_options"],
    "accurate": PRESETS["accurate"]["refine_options"],
    **{name: dataclasses.replace(options, antialias=1.0) for name, options in _BEFORE_FIFTH_SWEEP.items()},
    # 2026-12-05, fifth sweep (refine_sweep_2026-12-05e.md): sharper images on the model grid
    # (RefineOptions.antialias, until then 1), the NCC window and force on the model grid, the
    # 4 mm level's force; from the fast preset as it was (_FAST_D) with the changes named
    "fast_d": _FAST_D,
    **{f"fast_d_{name}": dataclasses.replace(_FAST_D, **change) for name, change in {
        "antialias05": dict(antialias=0.5),
        "antialias0": dict(antialias=0.0),
        "antialias05_r2last": dict(antialias=0.5, radius=(1, 1, 2)),
        "antialias05_r2last_window": dict(antialias=0.5, radius=(1, 1, 2), gradient="window"),
        "antialias05_4mm_exact": dict(antialias=0.5, gradient=("window", "exact", "exact")),
        "antialias05_4mm_exact_moving": dict(antialias=0.5, gradient=("window", "exact", "exact"),
                                             symmetric=(True, False, False)),
        **{f"antialias05_4mm_exact{moving}_r2last_window{suffix}": dict(
            antialias=0.5, gradient=("window", "exact", "window"), radius=(1, 1, 2),
            symmetric=(True, not moving, False), **extra)
           for moving in ("", "_moving")
           for suffix, extra in {"": {}, "_fluid125": dict(fluid_sigma=(1.5, 1.5, 1.25)),
                                 "_fluid135": dict(fluid_sigma=(1.5, 1.5, 1.35)),
                                 "_reg0": dict(reg=(0.05, 0.05, 0.0)),
                                 "_fluid135_reg0005": dict(fluid_sigma=(1.5, 1.5, 1.35), reg=(0.05, 0.05, 0.005)),
                                 }.items()},
    }.items()},
    # the fast preset with what removes its scalp folds on the demo pair (README, Quality presets)
    **{f"fast_{name}": dataclasses.replace(PRESETS["fast"]["refine_options"], **change) for name, change in {
        "reg003_last": dict(reg=(0.05, 0.05, 0.03)),
        "reg002_last": dict(reg=(0.05, 0.05, 0.02)),
    }.items()},
    # ... and the accurate preset: as it was (antialias 1), then on the new fast preset's levels
    "accurate_d": _ACCURATE_D,
    "accurate_d_antialias05": dataclasses.replace(_ACCURATE_D, antialias=0.5),
    **{f"fast_fine10_{name}": dataclasses.replace(PRESETS["fast"]["refine_options"], fine_iterations=10, **change)
       for name, change in {
           "16": dict(iterations=(60, 40, 16)),
           "16_reg002": dict(iterations=(60, 40, 16), reg=(0.05, 0.05, 0.02)),
           "16_reg002_fluid15": dict(iterations=(60, 40, 16), reg=(0.05, 0.05, 0.02), fluid_sigma=1.5),
       }.items()},
    **{f"fast_fine6_{name}": dataclasses.replace(PRESETS["fast"]["refine_options"], fine_iterations=6, **change)
       for name, change in {
           "16_reg002": dict(iterations=(60, 40, 16), reg=(0.05, 0.05, 0.02)),
       }.items()},
}
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
