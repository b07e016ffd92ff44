"""Quality presets: ``Registrar(quality="fast" | "accurate")``, ``smgic-register --quality``.

A preset is nothing but options for the stages; options passed explicitly
(``affine_options=``, ``refine_options=``) win over the preset's.

- ``"fast"`` (the default): every stage's defaults.
- ``"accurate"``: the refinement twice as long on the model grid, then 10 iterations on a grid
  twice finer (1 mm for the default bundle), where Greedy and ANTs end; the exact NCC gradient
  and the moving image alone moving onto the fixed one (``gradient="exact"``,
  ``symmetric=False``; `smgic_rt.refine.RefineOptions` says what each does). What each sets is
  `PRESETS` below. Measured on the real-pair set (6 directed pairs, raw headers; 2 threads):
  mean Dice 0.7086 (fast) -> 0.7104 with the longer, finer refinement alone -> 0.7160 with both
  (Greedy 0.7168), 35-50 s a pair on this machine today instead of 4-5; the affine stage also at
  2 mm changed nothing (0.7110 without it, earlier), 25 iterations on the fine grid nothing
  either (0.7105), so neither is in the preset.
"""

from __future__ import annotations

from .affine import AffineOptions
from .refine import RefineOptions

__all__ = ["QUALITIES", "PRESETS", "stage_options"]

QUALITIES = ("fast", "accurate")

PRESETS = {
    "fast": {"affine_options": AffineOptions(), "refine_options": RefineOptions()},
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
