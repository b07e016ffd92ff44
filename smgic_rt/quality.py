"""Quality presets: ``Registrar(quality="fast" | "accurate")``, ``smgic-register --quality``.

A preset is nothing but options for the stages; options passed explicitly
(``affine_options=``, ``refine_options=``) win over the preset's.

- ``"fast"`` (the default): the affine stage's defaults; the refinement's coarse levels (8 and
  4 mm) as `RefineOptions` defaults them (symmetric, own-window NCC force), then the model grid
  itself with 12 iterations of the moving image alone moving onto the fixed one, by the exact
  NCC gradient, the |grad v|^2 weight 0.01 there (``symmetric=False, gradient="exact",
  reg=0.01`` on that level only). Measured (network off, 2 threads, mean Dice;
  benchmarks/refine_sweep.py, variants "defaults", "last_level_exact_12" and
  "last_level_exact_12_reg001") against the refinement's defaults everywhere (8 iterations on
  the model grid, reg 0.05): real-pair set (6 directed raw pairs) 0.7086 -> 0.7147 (exact, moving
  alone, 12 iterations) -> 0.7163 (reg 0.01; Greedy 0.7168), accuracy.py's real set 0.7140 ->
  0.7152 (Greedy 0.7158), 1 mm synthetic heads 0.9289 -> 0.9278 -> 0.9297, 2 mm synthetic
  brains 0.9202 -> 0.9222 -> 0.9186, the 256^3 pair of benchmarks/peers.py 0.7582 -> 0.7582 ->
  0.7604, in the same time. The rougher inverse of reg 0.01 is held within 0.1 mm by the
  compact 2 mm lattice it is written on because that lattice takes the quasi-interpolant's
  values (`smgic_rt.transforms.linear_quasi_interpolant`; 95th percentile inside the brain
  0.080 mm on tests/test_fields.py's pair, 0.090 on the 256^3 pair; as plain samples 0.127,
  which kept reg 0.05 until then). Settings that reach Greedy on the real pairs cost the
  synthetic sets more than 0.005 or the compact inverse more than 0.1 mm (smaller update
  smoothing on the model grid, refine_sweep_2026-12-05d.md). The sweeps' numbers are in
  benchmarks/results/refine_sweep_2026-12-05*.md.
- ``"accurate"``: the refinement twice as long on the model grid, then 10 iterations on a grid
  twice finer (1 mm for the default bundle), where Greedy and ANTs end; the exact NCC gradient
  and the moving image alone moving onto the fixed one on every level (``gradient="exact"``,
  ``symmetric=False``), the |grad v|^2 weight 0.02 on the model grid and the finer one
  (``reg=(0.05, 0.05, 0.02)``; `smgic_rt.refine.RefineOptions` says what each does). What each
  sets is `PRESETS` below. Measured on accuracy.py's real-pair set (--directions cycle: 3 raw +
  3 misplaced pairs; 2 threads): mean Dice 0.7140 (fast at reg 0.05) -> 0.7162 with
  reg 0.05 everywhere (Greedy 0.7160) -> 0.7166 with 0.02 (0.7167 with 0.01, but that folded a
  voxel on the 1 mm synthetic heads, where 0.02 gives 0.9350 and no fold), about 6x the fast
  preset's time; the affine stage also at 2 mm changed nothing (earlier), 25 iterations on the
  fine grid nothing either (0.7105 against 0.7104 with reg 0.05), so neither is in the preset.
  Its compact fields are on a 1 mm lattice: on tests/test_fields.py's pair its compact inverse
  is within 0.032 mm of the native one at the 95th percentile inside the brain (0.058 as plain
  samples).
"""

from __future__ import annotations

from .affine import AffineOptions
from .refine import RefineOptions

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
