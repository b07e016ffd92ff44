"""Quality presets: ``Registrar(quality="fast" | "accurate")``, ``smgic-register --quality``.

A preset is nothing but options for the stages. Options given explicitly change only the fields
they were given (`smgic_rt.options.merged`): ``Registrar(quality="accurate",
refine_options=RefineOptions(max_seconds=5))`` keeps every level of the accurate preset.

- ``"fast"`` (the default): the refinement at 8 and 4 mm with both images moving half-way, then
  on the model grid with the moving image alone moving onto the fixed one.
- ``"accurate"``: the same coarse levels, the exact NCC force and the moving image alone moving
  on every level, and one more level on a grid twice finer than the model grid (1 mm for the
  default bundle), where Greedy and ANTs end; several times the fast preset's time.

Why these values, and what each costs and gains: docs/tuning.md.
"""

from __future__ import annotations

from .methods.affine import AffineOptions
from .methods.refine import Level, RefineOptions
from .options import QUALITIES, check_choice, merged

__all__ = ["QUALITIES", "PRESETS", "stage_options"]

_ACCURATE = dict(gradient="exact", symmetric=False)

PRESETS = {
    "fast": {"affine_options": AffineOptions(),
             "refine_options": RefineOptions(levels=(
                 Level(4, 60),
                 Level(2, 40, gradient="exact"),
                 Level(1, 12, radius=2, fluid_sigma=1.35, reg=0.01, symmetric=False),
             ))},
    "accurate": {"affine_options": AffineOptions(),
                 "refine_options": RefineOptions(levels=(
                     Level(4, 60, **_ACCURATE),
                     Level(2, 40, **_ACCURATE),
                     Level(1, 16, reg=0.02, **_ACCURATE),
                     Level(1 / 2, 10, reg=0.02, **_ACCURATE),
                 ))},
}


def stage_options(quality: str, **explicit) -> dict:
    """The stages' options for `quality`, each merged field by field with the `explicit` options
    of its name (None: the preset's as they are)."""
    check_choice(quality, "quality", QUALITIES)
    unknown = sorted(set(explicit) - set(PRESETS[quality]))
    if unknown:
        raise TypeError(f"stage_options takes {sorted(PRESETS[quality])}, got {unknown}")
    return {name: merged(preset, explicit.get(name)) for name, preset in PRESETS[quality].items()}
