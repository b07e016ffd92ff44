"""smgic_rt.methods.refine on a real brain: a known smooth deformation is recovered, an aligned pair
stays put, the objective never ends above its start, reruns are identical, bad input is refused;
the CUDA kernels match the CPU ones where a GPU exists."""

import dataclasses

import numpy as np
import pytest

from smgic_rt import _C
from smgic_rt.geometry import ops
from smgic_rt.geometry.filters import box_mean, gaussian_taps
from conftest import nilearn_brain
from smgic_rt.methods.refine import PER_LEVEL, Level, RefineOptions, _boundary_weight, objective, refine_velocity

SHAPE = (48, 56, 48)


@pytest.fixture(scope="module")
def brain():
    return nilearn_brain(SHAPE, 3.5)


def _smooth_velocity(seed, peak):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((3, 6, 7, 6)).astype(np.float32)
    for _ in range(3):
        v = ops.upsample_field(v)
    return np.ascontiguousarray(v * np.float32(peak / np.abs(v).max()))


def _inside(brain):
    return brain > 0.1


@pytest.mark.parametrize("gradient, symmetric", [("window", True), ("exact", False)])  # the two presets' ways
def test_known_smooth_deformation_is_recovered(brain, gradient, symmetric):
    v_true = _smooth_velocity(0, 8.0)
    moving = ops.warp(brain[None], ops.integrate_velocity(v_true))[0]  # moving(x) = fixed(x + u_true(x))
    # The answer pulls moving back onto fixed: exp(-v_true).
    expected = ops.integrate_velocity(-v_true)
    before = np.sqrt(np.sum(expected ** 2, axis=0))[_inside(brain)]
    # Sub-voxel accuracy needs the model grid itself as the last level.
    options = RefineOptions(levels=tuple(Level(factor, iterations, gradient=gradient, symmetric=symmetric)
                                         for factor, iterations in ((4, 60), (2, 40), (1, 20))))
    result = refine_velocity(brain, moving, None, options=options)
    error = np.sqrt(np.sum((ops.integrate_velocity(result.velocity) - expected) ** 2, axis=0))[_inside(brain)]
    assert np.median(before) > 2.0          # several voxels to recover
    assert np.median(error) < 0.5, (np.median(before), np.median(error))
    assert float(np.mean(ops.jacobian_determinant(ops.integrate_velocity(result.velocity)) <= 0)) < 1e-3


def test_aligned_pair_stays_within_a_tenth_of_a_voxel(brain):
    result = refine_velocity(brain, brain, None)
    assert float(np.abs(ops.integrate_velocity(result.velocity)).max()) < 0.1


def test_objective_never_ends_above_its_start_and_reruns_are_identical(brain):
    bad_start = _smooth_velocity(1, 3.0)
    keep_start = RefineOptions(zero_if_better=False)  # refine the bad start itself
    first = refine_velocity(brain, brain, bad_start, options=keep_start)
    assert first.stats["start"] == "given"
    assert first.stats["objective_after"] <= first.stats["objective_before"]
    assert objective(brain, brain, first.velocity) <= objective(brain, brain, bad_start)
    for level in first.stats["levels"]:
        assert level["objective_after"] <= level["objective_before"]
    second = refine_velocity(brain, brain, bad_start, options=keep_start)
    assert np.array_equal(first.velocity, second.velocity)


def test_a_warm_start_worse_than_zero_is_dropped_and_a_good_one_kept(brain):
    bad_start = _smooth_velocity(1, 3.0)
    dropped = refine_velocity(brain, brain, bad_start)
    assert dropped.stats["start"] == "zero"
    assert dropped.stats["objective_before"] < dropped.stats["objective_given"]
    assert float(np.abs(ops.integrate_velocity(dropped.velocity)).max()) < 0.1

    v_true = _smooth_velocity(0, 8.0)
    moving = ops.warp(brain[None], ops.integrate_velocity(v_true))[0]
    near = np.ascontiguousarray(-0.9 * v_true)  # most of the answer, exp(-v_true)
    kept = refine_velocity(brain, moving, near, options=RefineOptions(levels=(Level(4, 5), Level(2, 5), Level(1, 1))))
    assert kept.stats["start"] == "given"
    assert kept.stats["objective_before"] == kept.stats["objective_given"]


def test_a_start_evaluated_by_the_first_level_is_the_one_objective_reports(brain):
    # A single level on the model grid with the judged options (the accurate preset's 1 mm grid)
    # takes the start's objective from that level instead of evaluating it twice: the numbers
    # reported and the result must be the ones a separate evaluation gives.
    v_true = _smooth_velocity(0, 4.0)
    moving = ops.warp(brain[None], ops.integrate_velocity(v_true))[0]
    start = np.ascontiguousarray(-0.5 * v_true)
    single = RefineOptions(levels=(Level(1, 3, gradient="exact", symmetric=False),), zero_if_better=False)
    result = refine_velocity(brain, moving, start, options=single)
    assert result.stats["objective_before"] == objective(brain, moving, start, single)
    assert result.stats["objective_given"] == result.stats["objective_before"]
    assert result.stats["objective_after"] == objective(brain, moving, result.velocity, single)
    # The same level after a coarser level that runs no iteration: the start is then evaluated
    # apart from the levels; the model grid's level must end at the same velocity.
    two = dataclasses.replace(single, levels=(Level(2, 0, gradient="exact", symmetric=False), *single.levels))
    assert np.array_equal(refine_velocity(brain, moving, start, options=two).velocity, result.velocity)


def _faces(field):
    return np.concatenate([field[:, i].ravel() for i in (0, -1)] + [field[:, :, i].ravel() for i in (0, -1)]
                          + [field[:, :, :, i].ravel() for i in (0, -1)])


def test_the_grid_faces_stay_put_unless_the_boundary_is_freed(brain):
    """A shift of the whole image pushes on every face; the stationary boundary keeps the faces'
    velocity at zero (so that border padding outside the grid adds nothing to the affine)."""
    shift = np.zeros((3, *SHAPE), np.float32)
    shift[0], shift[2] = 2.0, -1.5
    moving = ops.warp(brain[None], shift)[0]
    kept = refine_velocity(brain, moving, None)
    assert np.abs(_faces(kept.velocity)).max() == 0.0
    assert np.abs(kept.velocity).max() > 1.0  # the inside did move
    freed = refine_velocity(brain, moving, None, options=RefineOptions(boundary=0))
    assert np.abs(_faces(freed.velocity)).max() > 0.5


def test_each_level_runs_with_its_own_values(brain):
    moving = ops.warp(brain[None], ops.integrate_velocity(_smooth_velocity(2, 3.0)))[0]
    mixed = RefineOptions(levels=(Level(4, 10, fluid_sigma=2.0), Level(2, 5),
                                  Level(1, 3, fluid_sigma=1.0, reg=0.02, symmetric=False, gradient="exact", radius=2)))
    result = refine_velocity(brain, moving, None, options=mixed)
    ran = [{name: record[name] for name in PER_LEVEL} for record in result.stats["levels"]]
    assert ran == [{name: getattr(level, name) for name in PER_LEVEL} for level in mixed.levels]
    assert [record["factor"] for record in result.stats["levels"]] == [4, 2, 1]
    # The result is judged by the last level's objective: the refinement never ends above its
    # start by it, and `objective` reads the same one.
    last = RefineOptions(levels=(mixed.levels[-1],))
    assert objective(brain, moving, result.velocity, last) != objective(
        brain, moving, result.velocity, RefineOptions(levels=(dataclasses.replace(mixed.levels[-1], radius=1),)))
    assert objective(brain, moving, result.velocity, mixed) == objective(brain, moving, result.velocity, last)
    assert result.stats["objective_after"] == pytest.approx(objective(brain, moving, result.velocity, last), abs=1e-6)
    assert result.stats["objective_after"] < objective(brain, moving, np.zeros_like(result.velocity), last)


@pytest.mark.parametrize("name, value", [("radius", 0), ("radius", 1.5), ("gradient", "sobel"), ("symmetric", "yes"),
                                         ("fluid_sigma", -1.0), ("iterations", 2.5)])
def test_level_values_of_the_wrong_kind_are_refused(name, value):
    with pytest.raises(ValueError, match=f"level {name} must be"):
        Level(**{"factor": 1, "iterations": 3, name: value})
    with pytest.raises(ValueError, match="antialias must be a finite number in \\[0, 1\\], got 1.5"):
        RefineOptions(antialias=1.5)


def test_budget_stops_early(brain):
    moving = ops.warp(brain[None], ops.integrate_velocity(_smooth_velocity(2, 3.0)))[0]
    result = refine_velocity(brain, moving, None, options=RefineOptions(max_seconds=0.01))
    assert any(level["stop"] == "budget" for level in result.stats["levels"])


def test_lncc_of_an_image_with_itself_is_one_and_forces_vanish(brain):
    means = box_mean(np.stack([brain, brain, brain * brain, brain * brain, brain * brain]), 2)
    cc, d_fixed, d_moving = _C.lncc(brain, brain, means, 1e-3)
    assert np.allclose(cc, 1.0, atol=1e-4)
    assert np.abs(d_fixed).max() < 1e-3 and np.abs(d_moving).max() < 1e-3


def test_box_mean_and_gaussian_against_numpy():
    rng = np.random.default_rng(3)
    volume = rng.random((1, 9, 7, 8), dtype=np.float32)
    got = box_mean(volume, 1)[0]
    padded = np.pad(volume[0], 1, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3, 3))
    np.testing.assert_allclose(got, np.nanmean(windows, axis=(3, 4, 5)), atol=1e-5)
    taps = gaussian_taps(1.0)
    assert abs(sum(taps) - 1) < 1e-6 and len(taps) == 7
    edge = np.pad(volume[0], ((3, 3), (0, 0), (0, 0)), mode="edge")
    expected = sum(t * edge[k:k + 9] for k, t in enumerate(taps))
    np.testing.assert_allclose(_C.filter_axis(volume, 0, taps, False)[0], expected, atol=1e-5)


def filter_axis_reference(volumes, axis, taps, normalise_inside):
    """filter_axis_voxel in float32 numpy: from a sum of 0, each tap's product added in tap order,
    indices clamped to the volume, or (normalise_inside) only the in-bounds taps, divided by the sum
    of their taps. Separate float32 operations, so the result is exact to the bit."""
    values = np.moveaxis(volumes, axis + 1, -1)
    length, radius = values.shape[-1], len(taps) // 2
    total = np.zeros_like(values)
    weight = np.zeros(length, np.float32)
    for k, tap in enumerate(np.asarray(taps, np.float32)):
        index = np.arange(length) + k - radius
        term = tap * values[..., np.clip(index, 0, length - 1)]
        inside = (index >= 0) & (index < length) if normalise_inside else np.ones(length, bool)
        total = np.where(inside, total + term, total)
        weight = np.where(inside, weight + tap, weight)
    return np.moveaxis(total / weight if normalise_inside else total, -1, axis + 1)


@pytest.mark.parametrize("shape", [(40, 48, 40), (9, 3, 31), (4, 5, 32), (3, 4, 47), (5, 6, 1)])
@pytest.mark.parametrize("radius", [0, 1, 5, 7, 8])
def test_filter_axis_is_the_per_voxel_sum_bit_for_bit(shape, radius):
    """Every value of the run-wise CPU filter, near the volume's edge (clamped or normalised) and
    away from it, is filter_axis_voxel's sum: the same operations in the same order."""
    rng = np.random.default_rng(radius)
    volumes = rng.standard_normal((2,) + shape).astype(np.float32)
    taps = rng.random(2 * radius + 1).astype(np.float32).tolist()
    for axis in range(3):
        for normalise_inside in (False, True):
            np.testing.assert_array_equal(_C.filter_axis(volumes, axis, taps, normalise_inside),
                                          filter_axis_reference(volumes, axis, taps, normalise_inside))


def test_image_gradient_of_a_linear_ramp_is_exact():
    x, y, z = np.meshgrid(np.arange(6), np.arange(7), np.arange(5), indexing="ij")
    ramp = (2.0 * x - 0.5 * y + 3.0 * z).astype(np.float32)
    gradient = _C.image_gradient(ramp)
    for axis, slope in enumerate((2.0, -0.5, 3.0)):
        np.testing.assert_allclose(gradient[axis], slope, atol=1e-5)


@pytest.mark.parametrize("args, message", [
    ((np.zeros((8, 8)), np.zeros((8, 8)), None), "3-D images of one shape"),
    ((np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), None), "3-D images of one shape"),
    ((np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), np.zeros((3, 8, 8, 7))), "velocity must have shape"),
    ((np.full((8, 8, 8), np.nan), np.zeros((8, 8, 8)), None), "NaN"),
])
def test_bad_input_is_refused(args, message):
    with pytest.raises(ValueError, match=message):
        refine_velocity(*args)


def test_bad_budget_is_refused(brain):
    # Where the options are made (issue 36), no longer only inside refine_velocity.
    with pytest.raises(ValueError, match="max_seconds must be a positive number or None, got -1"):
        RefineOptions(max_seconds=-1)


@pytest.mark.cuda
def test_cuda_filters_lncc_and_gradient_match_cpu(brain):
    cupy = pytest.importorskip("cupy")
    if not ops.cuda_available():
        pytest.skip("no CUDA")
    volume = np.ascontiguousarray(brain[None])
    taps = gaussian_taps(1.5)
    for axis in range(3):
        expected = _C.filter_axis(volume, axis, taps, True)
        src, out = cupy.asarray(volume), cupy.empty_like(cupy.asarray(volume))
        _C.filter_axis_cuda(src.data.ptr, out.data.ptr, 1, brain.shape, axis, taps, True)
        np.testing.assert_allclose(cupy.asnumpy(out), expected, atol=1e-5)
    moving = ops.warp(brain[None], ops.integrate_velocity(_smooth_velocity(4, 2.0)))[0]
    means = box_mean(np.stack([brain, moving, brain * brain, moving * moving, brain * moving]), 2)
    expected = _C.lncc(brain, moving, means, 1e-3)
    i, j, m = cupy.asarray(brain), cupy.asarray(moving), cupy.asarray(means)
    outs = [cupy.empty_like(i) for _ in range(3)]
    _C.lncc_cuda(i.data.ptr, j.data.ptr, m.data.ptr, *[o.data.ptr for o in outs], brain.shape, 1e-3)
    for got, want in zip(outs, expected):
        np.testing.assert_allclose(cupy.asnumpy(got), want, atol=1e-5)
    gradient = cupy.empty((3, *brain.shape), dtype=cupy.float32)
    _C.image_gradient_cuda(i.data.ptr, gradient.data.ptr, brain.shape)
    np.testing.assert_allclose(cupy.asnumpy(gradient), _C.image_gradient(brain), atol=1e-6)


def _local_ncc_sum(f, m, centre, radius, eps):
    """Sum of cc(x) over the windows x that hold voxel `centre`, in float64, straight from the
    definition (the kernel's eps-floored statistics): the part of the objective one voxel moves."""
    total = 0.0
    r = radius
    for x in np.ndindex(*(2 * r + 1,) * 3):
        x = tuple(c - r + o for c, o in zip(centre, x))
        window = tuple(slice(c - r, c + r + 1) for c in x)
        a, b = f[window].astype(np.float64), m[window].astype(np.float64)
        var_a = max(np.mean(a * a) - np.mean(a) ** 2, 0.0) + eps
        var_b = max(np.mean(b * b) - np.mean(b) ** 2, 0.0) + eps
        total += (np.mean(a * b) - np.mean(a) * np.mean(b) + eps) / np.sqrt(var_a * var_b)
    return total


@pytest.mark.parametrize("radius", [1, 2])
def test_the_exact_ncc_gradient_matches_finite_differences(radius):
    from smgic_rt.methods.refine import _ncc_derivatives

    rng = np.random.default_rng(radius)
    f = np.ascontiguousarray(box_mean(rng.random((1, 14, 15, 13)).astype(np.float32), 1)[0])
    m = np.ascontiguousarray((0.6 * f + 0.4 * box_mean(rng.random((1, 14, 15, 13)).astype(np.float32), 1)[0]))
    level, eps = Level(1, 1, radius=radius, gradient="exact"), RefineOptions().eps
    means = box_mean(np.stack([f, m, f * f, m * m, f * m]), radius)
    d_fixed, d_moving = _ncc_derivatives(f, m, means, level, eps)
    h = 1e-3
    for y in [(6, 7, 6), (7, 6, 7), (5, 8, 6)]:  # at least 2 radius from every face
        for image, derivative in ((m, d_moving), (f, d_fixed)):
            up, down = image.astype(np.float64), image.astype(np.float64)
            up[y] += h
            down[y] -= h
            if image is m:
                numeric = (_local_ncc_sum(f, up, y, radius, eps) - _local_ncc_sum(f, down, y, radius, eps))
            else:
                numeric = (_local_ncc_sum(up, m, y, radius, eps) - _local_ncc_sum(down, m, y, radius, eps))
            assert derivative[y] == pytest.approx(numeric / (2 * h), rel=2e-3, abs=1e-3)
    # when only the moving image moves, its derivative alone is computed, and it is the same
    none, moving_only = _ncc_derivatives(f, m, means, dataclasses.replace(level, symmetric=False), eps)
    assert none is None
    np.testing.assert_allclose(moving_only, d_moving, rtol=1e-5, atol=1e-6)
    # and it is not the own-window approximation (which the "window" gradient takes)
    _, _, approx_moving = _C.lncc(f, m, means, eps)
    assert np.abs(approx_moving - d_moving).max() > 1e-2


def _exact_derivatives_numpy(f, m, means, radius, eps, both):
    """The exact NCC derivatives in numpy, term by term (the reference the fused kernel replaced)."""
    mean_f, mean_m, mean_ff, mean_mm, mean_fm = means
    var_f = np.maximum(mean_ff - mean_f * mean_f, np.float32(0)) + np.float32(eps)
    var_m = np.maximum(mean_mm - mean_m * mean_m, np.float32(0)) + np.float32(eps)
    cov = mean_fm - mean_f * mean_m + np.float32(eps)
    a = np.float32(1) / np.sqrt(var_f * var_m)
    b_m, b_f = a * cov / var_m, a * cov / var_f
    s = box_mean(np.stack([a, a * mean_f, a * mean_m, b_m, b_m * mean_m, b_f, b_f * mean_f]), radius)
    d_moving = f * s[0] - s[1] - m * s[3] + s[4]
    return (m * s[0] - s[2] - f * s[5] + s[6]) if both else None, d_moving


def _exact_cases(brain):
    """(fixed, moving, means, radius): random volumes and a real brain against a warped copy."""
    rng = np.random.default_rng(7)
    f, m = rng.random((2, 17, 12, 15), dtype=np.float32)
    moving = np.ascontiguousarray(ops.warp(brain[None], ops.integrate_velocity(_smooth_velocity(4, 2.0)))[0])
    for fixed, mov, radius in ((f, m, 1), (f, m, 2), (brain, moving, 1), (brain, moving, 2)):
        yield fixed, mov, box_mean(np.stack([fixed, mov, fixed * fixed, mov * mov, fixed * mov]), radius), radius


@pytest.mark.parametrize("both", [True, False])
def test_the_fused_exact_ncc_kernel_equals_the_numpy_reference(brain, both):
    for f, m, means, radius in _exact_cases(brain):
        want_fixed, want_moving = _exact_derivatives_numpy(f, m, means, radius, 1e-3, both)
        got_fixed, got_moving = ops.ncc_exact_derivatives(f, m, means, 1e-3, radius, both=both)
        np.testing.assert_allclose(got_moving, want_moving, rtol=1e-5, atol=1e-6)
        if both:
            np.testing.assert_allclose(got_fixed, want_fixed, rtol=1e-5, atol=1e-6)
        else:
            assert got_fixed is None
    with pytest.raises(ValueError, match="means must be"):
        ops.ncc_exact_derivatives(f, m, means[:4], 1e-3, radius)
    with pytest.raises(ValueError, match="radius must be an int >= 1"):
        ops.ncc_exact_derivatives(f, m, means, 1e-3, 0)


@pytest.mark.cuda
@pytest.mark.parametrize("both", [True, False])
def test_cuda_exact_ncc_kernel_matches_the_numpy_reference(brain, both):
    cupy = pytest.importorskip("cupy")
    if not ops.cuda_available():
        pytest.skip("no CUDA")
    for f, m, means, radius in _exact_cases(brain):
        want_fixed, want_moving = _exact_derivatives_numpy(f, m, means, radius, 1e-3, both)
        got_fixed, got_moving = ops.ncc_exact_derivatives(cupy.asarray(f), cupy.asarray(m), cupy.asarray(means),
                                                          1e-3, radius, both=both)
        np.testing.assert_allclose(cupy.asnumpy(got_moving), want_moving, rtol=1e-4, atol=1e-5)
        if both:
            np.testing.assert_allclose(cupy.asnumpy(got_fixed), want_fixed, rtol=1e-4, atol=1e-5)
        else:
            assert got_fixed is None


def test_an_unknown_gradient_is_refused():
    with pytest.raises(ValueError, match=r"gradient must be one of \['window', 'exact'\], got 'sobel'"):
        Level(1, 3, gradient="sobel")


def _descent_numpy(force, velocity, reg2, weight):
    """The refinement's descent direction as numpy computes it: force + reg2 * Laplacian(v)
    (edge-replicated, -6 v then the x, y, z neighbours), times the weight; and its peak length."""
    padded = np.pad(velocity, ((0, 0), (1, 1), (1, 1), (1, 1)), mode="edge")
    core = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    laplacian = -6.0 * padded[core]
    for axis in (1, 2, 3):
        for shift in (-1, 1):
            index = list(core)
            index[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            laplacian += padded[tuple(index)]
    out = force + np.float32(reg2) * laplacian
    if weight is not None:
        out *= weight
    return out, float(np.sqrt(np.square(out).sum(axis=0)).max())


def _descent_cases(brain):
    rng = np.random.default_rng(3)
    for shape in [(1, 1, 1), (2, 3, 4), (5, 1, 7), (33, 17, 9)]:
        yield rng.standard_normal((3, *shape)).astype(np.float32), (rng.standard_normal((3, *shape)) * 4).astype(
            np.float32), rng.random(shape, dtype=np.float32)
    # A real image's gradient as the force, a smooth velocity of its grid, the refinement's weight.
    yield ops.image_gradient(brain), _smooth_velocity(4, 2.0), _boundary_weight(brain.shape, 2)


def test_the_descent_kernel_equals_numpy_bit_for_bit(brain):
    cases = 0
    for force, velocity, weight in _descent_cases(brain):
        for w in (None, weight):
            for reg2 in (np.float32(0.02), np.float32(2 * 0.01)):
                want, want_peak = _descent_numpy(force, velocity, reg2, w)
                got = force.copy()
                peak = ops.descent_direction(got, velocity, reg2, w)
                np.testing.assert_array_equal(got, want)
                assert peak == want_peak
                cases += 1
    assert cases == 20


def test_the_descent_kernel_reports_nan_and_refuses_bad_shapes():
    force = np.ones((3, 4, 5, 6), np.float32)
    velocity = np.zeros_like(force)
    velocity[1, 2, 3, 4] = np.nan
    assert np.isnan(ops.descent_direction(force, velocity, 0.02))
    with pytest.raises(ValueError, match=r"force and velocity must both be \(3, X, Y, Z\)"):
        ops.descent_direction(np.ones((2, 4, 5, 6), np.float32), np.ones((2, 4, 5, 6), np.float32), 0.02)
    with pytest.raises(ValueError, match="weight must be"):
        ops.descent_direction(np.ones((3, 4, 5, 6), np.float32), np.ones((3, 4, 5, 6), np.float32), 0.02,
                              np.ones((4, 5, 5), np.float32))


@pytest.mark.cuda
def test_cuda_descent_kernel_matches_numpy(brain):
    cupy = pytest.importorskip("cupy")
    if not ops.cuda_available():
        pytest.skip("no CUDA")
    for force, velocity, weight in _descent_cases(brain):
        want, want_peak = _descent_numpy(force, velocity, np.float32(0.02), weight)
        got = cupy.asarray(force)
        peak = ops.descent_direction(got, cupy.asarray(velocity), np.float32(0.02), cupy.asarray(weight))
        np.testing.assert_array_equal(cupy.asnumpy(got), want)
        assert peak == want_peak


@pytest.mark.parametrize("shape", [(3, 2, 3, 4), (3, 5, 6, 7), (2, 33, 17, 9), (3, 40, 48, 40), (3, 80, 96, 80)])
def test_the_gradient_energy_kernel_is_numpys_mean_bit_for_bit(shape):
    """Pairwise sums of over 128 values (numpy's blocks) and of fewer, every axis of the field."""
    velocity = (np.random.default_rng(len(shape) + shape[1]).standard_normal(shape) * 3).astype(np.float32)
    want = float(sum(np.mean(np.square(np.diff(velocity, axis=a))) for a in (1, 2, 3)))
    assert ops.gradient_energy(velocity) == want


def test_the_gradient_energy_of_a_real_refinement_velocity_is_numpys(brain):
    velocity = _smooth_velocity(4, 2.0)
    want = float(sum(np.mean(np.square(np.diff(velocity, axis=a))) for a in (1, 2, 3)))
    assert ops.gradient_energy(velocity) == want
    with ops.cpu_threads(2):  # the sums do not depend on who adds them
        assert ops.gradient_energy(velocity) == want
    with pytest.raises(ValueError, match="velocity must be C-contiguous"):
        ops.gradient_energy(np.asfortranarray(velocity))


def test_coarse_keeps_the_levels_coarser_than_the_model_grid_with_their_settings():
    options = RefineOptions(levels=(Level(4, 60), Level(2, 40, gradient="exact"), Level(1, 12, radius=2)), step=0.3)
    coarse = options.coarse()
    assert coarse.levels == options.levels[:2] and coarse.step == 0.3
    with pytest.raises(ValueError, match=r"no level coarser than the model grid: factors \[1, 0.5\]"):
        RefineOptions(levels=(Level(1, 12), Level(0.5, 4))).coarse()


def test_the_lncc_mean_is_numpys_float64_mean_of_lncc_bit_for_bit(brain):
    """Grids of fewer and of more values than numpy's 8192-value conversion buffers."""
    rng = np.random.default_rng(5)
    moving = ops.warp(brain[None], ops.integrate_velocity(_smooth_velocity(4, 2.0)))[0]
    cases = [(rng.random((5, 6, 7), dtype=np.float32), rng.random((5, 6, 7), dtype=np.float32), 1),
             (brain, moving, 1), (brain, moving, 2)]
    for f, m, radius in cases:
        means = box_mean(np.stack([f, m, f * f, m * m, f * m]), radius)
        assert ops.lncc_mean(f, m, means, 1e-3) == float(ops.lncc(f, m, means, 1e-3)[0].mean(dtype=np.float64))
    with pytest.raises(ValueError, match="means must be"):
        ops.lncc_mean(brain, moving, means[:4], 1e-3)
