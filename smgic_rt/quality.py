"""Quality presets: ``Registrar(quality="fast" | "accurate")``, ``smgic-register --quality``.

A preset is nothing but options for the stages; options passed explicitly
(``affine_options=``, ``refine_options=``) win over the preset's.

- ``"fast"`` (the default): the affine stage's defaults; the refinement's coarse levels (8 and
  4 mm) as `RefineOptions` defaults them (symmetric, own-window NCC force), then the model grid
  itself with 12 iterations of the moving image alone moving onto the fixed one, by the exact
  NCC gradient (``symmetric=False, gradient="exact"`` on that level only). Measured against
  the refinement's defaults everywhere (8 iterations on the model grid; network off, 2 threads,
  mean Dice; benchmarks/refine_sweep.py, variants "defaults" and "fast"): real-pair set (6
  directed raw pairs) 0.7086 -> 0.7147, 1 mm synthetic heads 0.9289 -> 0.9277, 2 mm synthetic
  brains 0.9202 -> 0.9222, the 256^3 pair of benchmarks/peers.py 0.7582 -> 0.7582, at about the
  same time (12 cheaper iterations for 8). 16 iterations: 0.7149 / 0.9294 / 0.9235 / 0.7577 for
  0.3-0.4 s more. Asymmetric and exact on every level instead: 0.7153 / 0.9194 / 0.9172 / 0.7585
  (the synthetic sets lose up to 0.01). Weaker smoothing on the last level (fluid 1.0,
  reg 0.02, 16 iterations), which Greedy's Dice on the real pairs (0.7168) would need: 0.7173
  there, but 2 mm brains 0.9117. The sweep's numbers are in
  benchmarks/results/refine_sweep_2026-12-05.md.
- ``"accurate"``: the refinement twice as long on the model grid, then 10 iterations on a grid
  twice finer (1 mm for the default bundle), where Greedy and ANTs end; the exact NCC gradient
  and the moving image alone moving onto the fixed one on every level (``gradient="exact"``,
  ``symmetric=False``; `smgic_rt.refine.RefineOptions` says what each does). What each sets is
  `PRESETS` below. Measured on the real-pair set (6 directed pairs, raw headers; 2 threads):
  mean Dice 0.7086 (the refinement's defaults) -> 0.7104 with the longer, finer refinement
  alone -> 0.7160 with both (Greedy 0.7168), 35-50 s a pair on this machine instead of 4-5; the
  affine stage also at 2 mm changed nothing (0.7110 without it, earlier), 25 iterations on the
  fine grid nothing either (0.7105), so neither is in the preset.
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
                                                 symmetric=False)},
}


def stage_options(quality: str, **explicit) -> dict:
    """The stages' options for `quality`, with `explicit` ones (not None) in their place."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {list(QUALITIES)}, got {quality!r}")
    chosen = dict(PRESETS[quality])
    chosen.update({name: value for name, value in explicit.items() if value is not None})
    return chosen
