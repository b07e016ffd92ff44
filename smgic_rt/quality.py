"""Quality presets: ``Registrar(quality="fast" | "accurate")``, ``smgic-register --quality``.

A preset is nothing but options for the stages; options passed explicitly
(``affine_options=``, ``refine_options=``) win over the preset's.

- ``"fast"`` (the default): the affine stage's defaults; the refinement's coarse levels (8 and
  4 mm) as `RefineOptions` defaults them (symmetric, own-window NCC force, reg 0.05), then the
  model grid itself with 12 iterations of the moving image alone moving onto the fixed one, by
  the exact NCC gradient, with a weak |grad v|^2 term (``symmetric=False, gradient="exact",
  reg=0.01`` on that level only; its fluid smoothing of each update stays). Measured (network
  off, 2 threads, mean Dice; benchmarks/refine_sweep.py, variants "defaults",
  "last_level_exact_12" and "fast"), from the refinement's defaults everywhere (8 iterations on
  the model grid) to the last level exact for 12 iterations to this preset: real-pair set (6
  directed raw pairs) 0.7086 -> 0.7147 -> 0.7163, 1 mm synthetic heads 0.9289 -> 0.9278 ->
  0.9297, 2 mm synthetic brains 0.9202 -> 0.9222 -> 0.9186, the 256^3 pair of
  benchmarks/peers.py 0.7582 -> 0.7582 -> 0.7604, in the same time. Explored around it: reg 0
  on the last level 0.7167 / 0.9287 / 0.9152 / 0.7608 (the brains lose 0.005); 0.02: 0.7156 /
  0.9300 / 0.9206 / 0.7598; more |grad v|^2 with less fluid smoothing loses the heads (fluid
  1.0, reg 0.05 -> 0.2: heads 0.921 -> 0.903); fluid 1.2-1.3 with reg 0.01 gains 0.0005 on
  the real pairs but the brains fall to 0.913-0.915; NCC radius 2, 16 iterations, or 2-3
  iterations on the 1 mm grid (+3.5 s) add at most 0.0008. The sweep's numbers are in
  benchmarks/results/refine_sweep_2026-12-05*.md.
- ``"accurate"``: the refinement twice as long on the model grid, then 10 iterations on a grid
  twice finer (1 mm for the default bundle), where Greedy and ANTs end; the exact NCC gradient
  and the moving image alone moving onto the fixed one on every level (``gradient="exact"``,
  ``symmetric=False``), the |grad v|^2 weight 0.02 on the model grid and the finer one
  (``reg=(0.05, 0.05, 0.02)``; `smgic_rt.refine.RefineOptions` says what each does). What each
  sets is `PRESETS` below. Measured on accuracy.py's real-pair set (--directions cycle: 3 raw +
  3 misplaced pairs; 2 threads): mean Dice 0.7140 (fast before its reg 0.01) -> 0.7162 with
  reg 0.05 everywhere (Greedy 0.7160) -> 0.7166 with 0.02 (0.7167 with 0.01, but that folded a
  voxel on the 1 mm synthetic heads, where 0.02 gives 0.9350 and no fold), about 6x the fast
  preset's time; the affine stage also at 2 mm changed nothing (earlier), 25 iterations on the
  fine grid nothing either (0.7105 against 0.7104 with reg 0.05), so neither is in the preset.
  The fast preset's weaker reg 0.01 needed this: with reg 0.05 the accurate mode ended above
  the fast mode's velocity by its own objective on tests/test_quality.py's pair.
"""

from __future__ import annotations

from .affine import AffineOptions
from .refine import RefineOptions

__all__ = ["QUALITIES", "PRESETS", "stage_options"]

QUALITIES = ("fast", "accurate")

PRESETS = {
    "fast": {"affine_options": AffineOptions(),
             "refine_options": RefineOptions(iterations=(60, 40, 12), symmetric=(True, True, False),
                                             gradient=("window", "window", "exact"))},
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
