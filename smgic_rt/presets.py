"""Quality presets: ``Registrar(quality="fast" | "accurate")``, ``smgic-register --quality``.

A preset is nothing but options for the stages; options passed explicitly
(``affine_options=``, ``refine_options=``) win over the preset's.

- ``"fast"`` (the default): the affine stage's defaults; the refinement on images made
  sharper than the network's (`RefineOptions.antialias` 0.5, its default): 60 iterations at 8 mm
  and 40 at 4 mm with both images moving half-way (the 4 mm level by the exact NCC gradient),
  then 12 on the model grid itself (2 mm) with the moving image alone moving onto the fixed one,
  a 5-voxel NCC window (radius 2) and each voxel's force through its own window, updates
  smoothed by 1.35 voxels and the |grad v|^2 weight 0.01 there. Measured (network off, 2
  threads, mean Dice; benchmarks/refine_sweep.py, refine_sweep_2026-12-05e.md, where each change
  is measured alone) against the preset before (antialias 1, the window force at 4 mm, the exact
  force with a 3-voxel window and smoothing 1.5 on the model grid): accuracy.py's real pairs
  0.7152 -> 0.7170 (Greedy 0.7158-0.7160), the 256^3 pair of benchmarks/peers.py 0.7604 ->
  0.7644 (Greedy 0.7642-0.7647), 1 mm synthetic heads 0.9297 -> 0.9312, 2 mm synthetic brains
  0.9186 -> 0.9164 (the speed issue's limit 0.9152), in the same time. Smoothing 1.25 or a weaker
  |grad v|^2 term gain a little more on the real pairs and take the brains below 0.9152. The
  compact inverse field stays within 0.1 mm of the native one (95th percentile inside the brain:
  0.079 mm on tests/test_fields.py's pair, 0.089 on the 256^3 pair) because its lattice takes
  the quasi-interpolant's values (`smgic_rt.geometry.transforms.linear_quasi_interpolant`). Open: on
  the demo pair (heads) its 5-voxel window folds 31 voxels of the scalp and neck (none in the
  brain; the preset before folded none); |grad v|^2 weight 0.03 or radius 1 on the model grid
  removes them; the weight 0.03 costs the 256^3 pair 0.0011 and the real pairs 0.0012
  (README, Quality presets).
- ``"accurate"``: on the same sharper images, the refinement's 8 and 4 mm levels as long as the
  fast preset's, 16 iterations on the model grid, then 10 iterations on a grid
  twice finer (1 mm for the default bundle), where Greedy and ANTs end; the exact NCC gradient
  and the moving image alone moving onto the fixed one on every level (``gradient="exact"``,
  ``symmetric=False``), the |grad v|^2 weight 0.02 on the model grid and the finer one
  (``reg=(0.05, 0.05, 0.02)``; `smgic_rt.methods.refine.RefineOptions` says what each does). What each
  sets is `PRESETS` below. Measured on accuracy.py's real-pair set (--directions cycle: 3 raw +
  3 misplaced pairs; 2 threads): mean Dice 0.7140 (fast at reg 0.05) -> 0.7162 with
  reg 0.05 everywhere (Greedy 0.7160) -> 0.7166 with 0.02 (0.7167 with 0.01, but that folded a
  voxel on the 1 mm synthetic heads, where 0.02 gives 0.9350 and no fold), about 6x the fast
  preset's time; the affine stage also at 2 mm changed nothing (earlier), 25 iterations on the
  fine grid nothing either (0.7105 against 0.7104 with reg 0.05), so neither is in the preset.
  Its compact fields are on a 1 mm lattice: on tests/test_fields.py's pair its compact inverse
  is within 0.032 mm of the native one at the 95th percentile inside the brain (0.058 as plain
  samples). Since the fast preset's changes of 2026-12-05 (fifth sweep) it is below that preset
  on the labelled pairs (real pairs 0.7164 against 0.7170, the 256^3 pair 0.7629 against
  0.7644) and above it on the synthetic sets (heads 0.9368, brains 0.9208): its 1 mm grid
  raises the 256^3 pair and the synthetic sets, not the real pairs, and the fast preset's
  window force and smoothing on that grid fold a few voxels (refine_sweep_2026-12-05e.md).
"""

from __future__ import annotations

from .methods.affine import AffineOptions
from .methods.refine import RefineOptions

__all__ = ["QUALITIES", "PRESETS", "stage_options"]

QUALITIES = ("fast", "accurate")

PRESETS = {
    "fast": {"affine_options": AffineOptions(),
             "refine_options": RefineOptions(iterations=(60, 40, 12), symmetric=(True, True, False),
                                             gradient=("window", "exact", "window"), radius=(1, 1, 2),
                                             fluid_sigma=(1.5, 1.5, 1.35), reg=(0.05, 0.05, 0.01))},
    "accurate": {"affine_options": AffineOptions(),
                 "refine_options": RefineOptions(iterations=(60, 40, 16), fine_iterations=10, gradient="exact",
                                                 symmetric=False, reg=(0.05, 0.05, 0.02))},
}


def stage_options(quality: str, **explicit) -> dict:
    """The stages' options for `quality`, with `explicit` ones (not None) in their place."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {list(QUALITIES)}, got {quality!r}")
    chosen = dict(PRESETS[quality])
    chosen.update({name: value for name, value in explicit.items() if value is not None})
    return chosen
