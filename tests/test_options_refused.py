"""Options that cannot be right are refused where they are made, naming the field (issue 36,
defect 7). On e7b1639 each of these was accepted: NaN step or reg ran no refinement and said
"ok", iterations longer or shorter than factors silently dropped or ignored levels, zip
truncated AffineOptions' tuples (the 4 mm affine level skipped), resolutions <= 0 failed later
as "image is constant", and max_seconds=-1 was refused only inside register().
"""

import math

import pytest

from smgic_rt.affine import AffineOptions
from smgic_rt.refine import RefineOptions

NAN = math.nan

REFINE_CASES = {
    "step NaN": (dict(step=NAN), "step"),
    "step 0": (dict(step=0.0), "step"),
    "min_step negative": (dict(min_step=-0.1), "min_step"),
    "reg NaN": (dict(reg=NAN), "reg"),
    "reg NaN on one level": (dict(reg=(0.05, NAN, 0.01)), "reg"),
    "reg infinite": (dict(reg=math.inf), "reg"),
    "fluid_sigma negative": (dict(fluid_sigma=-1.0), "fluid_sigma"),
    "elastic_sigma negative": (dict(elastic_sigma=-0.5), "elastic_sigma"),
    "steps 0": (dict(steps=0), "steps"),
    "steps float": (dict(steps=7.0), "steps"),
    "eps 0": (dict(eps=0.0), "eps"),
    "plateau NaN": (dict(plateau=NAN), "plateau"),
    "boundary negative": (dict(boundary=-1), "boundary"),
    "iterations shorter than factors": (dict(iterations=(60, 40)), "iterations"),
    "iterations longer than factors": (dict(iterations=(60, 40, 8, 8)), "iterations"),
    "iterations negative": (dict(iterations=(60, -1, 8)), "iterations"),
    "factors not powers of 2": (dict(factors=(3, 2, 1)), "factors"),
    "factors zero": (dict(factors=(4, 2, 0)), "factors"),
    "max_seconds negative": (dict(max_seconds=-1), "max_seconds"),
    "max_seconds NaN": (dict(max_seconds=NAN), "max_seconds"),
    "symmetric not a bool": (dict(symmetric="yes"), "symmetric"),
}


@pytest.mark.parametrize("case", sorted(REFINE_CASES))
def test_refine_options_refuse_at_construction(case):
    kwargs, field = REFINE_CASES[case]
    with pytest.raises(ValueError, match=rf"RefineOptions\.{field} must"):
        RefineOptions(**kwargs)


AFFINE_CASES = {
    "resolution 0": (dict(resolutions=(8.0, 0.0)), "resolutions"),
    "resolution negative": (dict(resolutions=(-8.0, 4.0)), "resolutions"),
    "resolution NaN": (dict(resolutions=(8.0, NAN)), "resolutions"),
    "no resolution": (dict(resolutions=(), rigid_iterations=(), affine_iterations=()), "resolutions"),
    "rigid iterations truncated": (dict(rigid_iterations=(60,)), "rigid_iterations"),
    "affine iterations longer": (dict(affine_iterations=(0, 30, 30)), "affine_iterations"),
    "affine iterations negative": (dict(affine_iterations=(0, -30)), "affine_iterations"),
    "radius NaN": (dict(radius_mm=NAN), "radius_mm"),
    "radius 0": (dict(radius_mm=0.0), "radius_mm"),
}


@pytest.mark.parametrize("case", sorted(AFFINE_CASES))
def test_affine_options_refuse_at_construction(case):
    kwargs, field = AFFINE_CASES[case]
    with pytest.raises(ValueError, match=rf"AffineOptions\.{field} must"):
        AffineOptions(**kwargs)


def test_good_options_still_pass():
    RefineOptions()
    RefineOptions(factors=(2,), iterations=(5,), reg=(0.0,), fluid_sigma=0.0, max_seconds=0.5)
    AffineOptions()
    AffineOptions(resolutions=(8.0,), rigid_iterations=(10,), affine_iterations=(0,))
    from smgic_rt.quality import stage_options

    for preset in ("fast", "accurate"):
        options = stage_options(preset)
        assert isinstance(options["refine_options"], RefineOptions)
