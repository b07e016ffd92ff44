"""Options that cannot be right are refused where they are made, naming the field (issue 36,
defect 7). On e7b1639 each of these was accepted: NaN step or reg ran no refinement and said
"ok", iterations longer or shorter than factors silently dropped or ignored levels, zip
truncated AffineOptions' tuples (the 4 mm affine level skipped), resolutions <= 0 failed later
as "image is constant", and max_seconds=-1 was refused only inside register().

Since the redesign (issue 31) a level is one value (`Level`, `AffineLevel`), so a count of
iterations that does not match the levels cannot be written; what is left to refuse is each
level's fields, each options object's own fields, and levels that are empty, not levels, or
not coarse to fine.
"""

import math

import pytest

from smgic_rt.methods.affine import AffineLevel, AffineOptions
from smgic_rt.methods.refine import MAX_SIGMA_VOXELS, Level, RefineOptions

NAN = math.nan
HUGE = 1e300

# Level(4, 60) with one field changed -> the field its message must name.
LEVEL_CASES = {
    "factor NaN": (dict(factor=NAN), "factor"),
    "factor 0": (dict(factor=0), "factor"),
    "factor negative": (dict(factor=-2), "factor"),
    "factor infinite": (dict(factor=math.inf), "factor"),
    "factor not a power of 2": (dict(factor=3), "factor"),
    "factor 0.75": (dict(factor=0.75), "factor"),
    "factor finer than 1/2": (dict(factor=0.25), "factor"),
    "iterations negative": (dict(iterations=-1), "iterations"),
    "iterations float": (dict(iterations=7.0), "iterations"),
    "iterations bool": (dict(iterations=True), "iterations"),
    "radius 0": (dict(radius=0), "radius"),
    "radius huge": (dict(radius=MAX_SIGMA_VOXELS + 1), "radius"),
    "fluid_sigma negative": (dict(fluid_sigma=-1.0), "fluid_sigma"),
    "fluid_sigma NaN": (dict(fluid_sigma=NAN), "fluid_sigma"),
    "fluid_sigma huge": (dict(fluid_sigma=HUGE), "fluid_sigma"),
    "reg NaN": (dict(reg=NAN), "reg"),
    "reg infinite": (dict(reg=math.inf), "reg"),
    "reg negative": (dict(reg=-0.05), "reg"),
    "reg huge": (dict(reg=HUGE), "reg"),
    "symmetric not a bool": (dict(symmetric="yes"), "symmetric"),
    "gradient unknown": (dict(gradient="sobel"), "gradient"),
}


@pytest.mark.parametrize("case", sorted(LEVEL_CASES))
def test_level_refuses_at_construction(case):
    changes, field = LEVEL_CASES[case]
    kwargs = dict(factor=4, iterations=60) | changes
    with pytest.raises(ValueError, match=rf"^level {field} must"):
        Level(**kwargs)


def test_level_messages_say_expected_and_got():
    with pytest.raises(ValueError, match=r"^level reg must be a finite number in \[0, 1000.0\], got nan$"):
        Level(1, 10, reg=NAN)
    with pytest.raises(ValueError, match=r"^level factor must be a power of 2 .* got 3$"):
        Level(3, 10)


REFINE_CASES = {
    "no levels": (dict(levels=()), "levels"),
    "levels a list": (dict(levels=[Level(2, 5), Level(1, 5)]), "levels"),
    "levels as tuples": (dict(levels=((4, 60), (2, 40), (1, 8))), "levels"),
    "a level not a Level": (dict(levels=(Level(2, 5), AffineLevel(1.0))), "levels"),
    "levels fine to coarse": (dict(levels=(Level(1, 8), Level(2, 40), Level(4, 60))), "levels"),
    "a factor twice": (dict(levels=(Level(4, 60), Level(2, 40), Level(2, 8))), "levels"),
    "step NaN": (dict(step=NAN), "step"),
    "step 0": (dict(step=0.0), "step"),
    "step huge": (dict(step=HUGE), "step"),
    "min_step negative": (dict(min_step=-0.1), "min_step"),
    "min_step above step": (dict(step=0.5, min_step=0.6), "min_step"),
    "elastic_sigma negative": (dict(elastic_sigma=-0.5), "elastic_sigma"),
    "elastic_sigma huge": (dict(elastic_sigma=HUGE), "elastic_sigma"),
    "steps 0": (dict(steps=0), "steps"),
    "steps float": (dict(steps=7.0), "steps"),
    "steps huge": (dict(steps=10**6), "steps"),
    "eps 0": (dict(eps=0.0), "eps"),
    "plateau NaN": (dict(plateau=NAN), "plateau"),
    "boundary negative": (dict(boundary=-1), "boundary"),
    "boundary huge": (dict(boundary=10**9), "boundary"),
    "antialias NaN": (dict(antialias=NAN), "antialias"),
    "max_seconds negative": (dict(max_seconds=-1), "max_seconds"),
    "max_seconds 0": (dict(max_seconds=0), "max_seconds"),
    "max_seconds NaN": (dict(max_seconds=NAN), "max_seconds"),
}


@pytest.mark.parametrize("case", sorted(REFINE_CASES))
def test_refine_options_refuse_at_construction(case):
    kwargs, field = REFINE_CASES[case]
    with pytest.raises(ValueError, match=rf"^{field} must"):
        RefineOptions(**kwargs)


AFFINE_LEVEL_CASES = {
    "resolution 0": (dict(resolution_mm=0.0), "resolution_mm"),
    "resolution negative": (dict(resolution_mm=-8.0), "resolution_mm"),
    "resolution NaN": (dict(resolution_mm=NAN), "resolution_mm"),
    "resolution infinite": (dict(resolution_mm=math.inf), "resolution_mm"),
    "rigid iterations negative": (dict(rigid_iterations=-60), "rigid_iterations"),
    "rigid iterations float": (dict(rigid_iterations=60.0), "rigid_iterations"),
    "affine iterations negative": (dict(affine_iterations=-30), "affine_iterations"),
    "affine iterations NaN": (dict(affine_iterations=NAN), "affine_iterations"),
}


@pytest.mark.parametrize("case", sorted(AFFINE_LEVEL_CASES))
def test_affine_level_refuses_at_construction(case):
    changes, field = AFFINE_LEVEL_CASES[case]
    kwargs = dict(resolution_mm=8.0, rigid_iterations=60) | changes
    with pytest.raises(ValueError, match=rf"^affine level {field} must"):
        AffineLevel(**kwargs)


AFFINE_CASES = {
    "no levels": (dict(levels=()), "affine levels"),
    "levels as tuples": (dict(levels=((8.0, 60, 0), (4.0, 0, 30))), "affine levels"),
    "a level not an AffineLevel": (dict(levels=(AffineLevel(8.0), Level(1, 5))), "affine levels"),
    "levels fine to coarse": (dict(levels=(AffineLevel(4.0, 0, 30), AffineLevel(8.0, 60))), "affine levels"),
    "a resolution twice": (dict(levels=(AffineLevel(4.0, 60), AffineLevel(4.0, 0, 30))), "affine levels"),
    "radius NaN": (dict(radius_mm=NAN), "radius_mm"),
    "radius 0": (dict(radius_mm=0.0), "radius_mm"),
    "radius negative": (dict(radius_mm=-60.0), "radius_mm"),
    "moments not a bool": (dict(moments="yes"), "moments"),
}


@pytest.mark.parametrize("case", sorted(AFFINE_CASES))
def test_affine_options_refuse_at_construction(case):
    kwargs, field = AFFINE_CASES[case]
    with pytest.raises(ValueError, match=rf"^{field} must"):
        AffineOptions(**kwargs)


def test_good_options_still_pass():
    RefineOptions()
    RefineOptions(levels=(Level(2, 5, reg=0.0, fluid_sigma=0.0), Level(1, 5), Level(0.5, 2)), max_seconds=0.5)
    AffineOptions()
    AffineOptions(levels=(AffineLevel(8.0, rigid_iterations=10),))
    from smgic_rt.presets import stage_options

    for preset in ("fast", "accurate"):
        options = stage_options(preset)
        assert isinstance(options["refine_options"], RefineOptions)
        assert isinstance(options["affine_options"], AffineOptions)
