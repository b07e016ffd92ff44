"""`ops.affine_ssd_sums`, the multi-channel SSD sums of the MIND affine stage, against two
references: the per-channel `ops.affine_ncc_sums` combination that `affine.mind_and_gradient`
used before (``E = sum_c Sff - 2 Sfm + Smm``, ``D = sum_c d(Smm) - d(Sfm)``) and a float64
resampling by scipy; its derivatives against finite differences of its value; and the affine
stage's MIND similarity against the per-channel definition, exclusion masks included."""

import numpy as np
import pytest
from scipy import ndimage

from conftest import nilearn_brain
from smgic_rt import _C
from smgic_rt.geometry import ops
from smgic_rt.methods import affine, similarity

SHAPE = (40, 48, 40)


@pytest.fixture(scope="module")
def brain():
    return nilearn_brain(SHAPE, 4.0)


@pytest.fixture(scope="module")
def descriptor_pair(brain):
    """MIND descriptors of a real brain and of the same brain smoothly deformed: (fixed, moving)."""
    rng = np.random.default_rng(11)
    coarse = rng.standard_normal((3, 5, 6, 5)).astype(np.float32)
    field = ops.upsample_field(ops.upsample_field(ops.upsample_field(coarse)), SHAPE)
    field *= np.float32(1.5 / np.abs(field).max())
    moving = np.ascontiguousarray(ops.warp(brain[None], field)[0])
    return similarity.mind_descriptors(brain), similarity.mind_descriptors(moving[2:-3, 1:, :-2])


def _random_pair():
    rng = np.random.default_rng(5)
    fixed = rng.random((5, 18, 21, 17), dtype=np.float32)
    moving = rng.random((5, 20, 19, 22), dtype=np.float32)
    return fixed, moving


def _matrix(kind, fixed_shape, moving_shape):
    """fixed voxel -> moving voxel, float32 values as the kernels use them: the identity, or a
    rotation by a few degrees with a scale and shift about the grid centres that carries the
    fixed grid's corners outside the moving grid."""
    if kind == "identity":
        return np.hstack([np.eye(3), np.zeros((3, 1))])
    linear = affine.rotation_matrix(np.radians([6.0, -4.0, 8.0])) @ np.diag([1.08, 0.95, 1.05])
    centre_f, centre_m = (np.asarray(fixed_shape) - 1) / 2.0, (np.asarray(moving_shape) - 1) / 2.0
    matrix = np.hstack([linear, (centre_m - linear @ centre_f + [0.7, -1.3, 0.4])[:, None]])
    return matrix.astype(np.float32).astype(np.float64)


def _per_channel(fixed, mask, moving, matrix):
    """(S, E, D) from one `affine_ncc_sums` call per channel."""
    s, squares, d_rows = None, 0.0, np.zeros(12)
    for fixed_channel, moving_channel in zip(fixed, moving):
        sums = ops.affine_ncc_sums(np.ascontiguousarray(fixed_channel), mask, np.ascontiguousarray(moving_channel),
                                   matrix)
        assert s is None or sums[0] == s  # one mask and one moving grid: one S for every channel
        s = sums[0]
        squares += sums[3] - 2.0 * sums[5] + sums[4]
        d_rows += sums[30:42] - sums[18:30]
    return s, squares, d_rows


def _scipy_reference(fixed, mask, moving, matrix):
    """(S, E) in float64: the kernel's float32 sample points, trilinear reads by scipy."""
    index = np.indices(fixed.shape[1:], dtype=np.float32).reshape(3, -1)
    m = matrix.astype(np.float32)
    points = ((m[:, 0:1] * index[0] + m[:, 1:2] * index[1]) + m[:, 2:3] * index[2]) + m[:, 3:4]
    inside = np.all((points >= 0) & (points <= (np.asarray(moving.shape[1:], np.float32)[:, None] - 1)), axis=0)
    weight = (np.ones(inside.shape) if mask is None else mask.reshape(-1).astype(np.float64)) * inside
    squares = 0.0
    for fixed_channel, moving_channel in zip(fixed, moving):
        read = ndimage.map_coordinates(moving_channel.astype(np.float64), points.astype(np.float64), order=1,
                                       mode="nearest")
        squares += float(np.sum(weight * (read - fixed_channel.reshape(-1).astype(np.float64)) ** 2))
    return float(weight.sum()), squares


@pytest.mark.parametrize("matrix_kind", ["identity", "rotated"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("source", ["random", "mind"])
def test_ssd_sums_equal_the_per_channel_ncc_sums_and_a_float64_reference(source, masked, matrix_kind,
                                                                          descriptor_pair):
    fixed, moving = _random_pair() if source == "random" else descriptor_pair
    mask = None
    if masked:
        mask = (np.random.default_rng(2).random(fixed.shape[1:]) > 0.3).astype(np.float32)
    matrix = _matrix(matrix_kind, fixed.shape[1:], moving.shape[1:])
    sums = ops.affine_ssd_sums(fixed, mask, moving, matrix)
    assert sums.dtype == np.float64 and sums.shape == (ops.AFFINE_SSD_SUMS,) == (14,)
    s, squares, d_rows = _per_channel(fixed, mask, moving, matrix)
    assert sums[0] == s
    # some fixed voxels read outside the moving grid (the fixed grid is larger along some axis,
    # or rotated out of it) and are left out
    assert s < (fixed[0].size if mask is None else mask.sum())
    np.testing.assert_allclose(sums[1], squares, rtol=1e-6)
    np.testing.assert_allclose(sums[2:], d_rows, rtol=1e-6, atol=1e-9 * np.abs(d_rows).max())
    reference_s, reference_squares = _scipy_reference(fixed, mask, moving, matrix)
    assert sums[0] == reference_s
    np.testing.assert_allclose(sums[1], reference_squares, rtol=1e-5)


def test_ssd_derivatives_match_finite_differences(descriptor_pair):
    """dE/dM_k = 2 D_k: central differences of E along each entry of the voxel matrix, with a
    mask that keeps every summed point well inside the moving grid (S constant)."""
    fixed, moving = descriptor_pair
    mask = np.zeros(fixed.shape[1:], np.float32)
    mask[6:-8, 6:-8, 6:-8] = 1.0
    matrix = _matrix("rotated", fixed.shape[1:], moving.shape[1:])
    sums = ops.affine_ssd_sums(fixed, mask, moving, matrix)
    steps = np.array([2e-3] * 3 + [0.05])  # voxel units: ~0.05 voxel of motion at the grid's extent
    for k in range(12):
        plus, minus = matrix.copy(), matrix.copy()
        plus[k // 4, k % 4] += steps[k % 4]
        minus[k // 4, k % 4] -= steps[k % 4]
        plus, minus = (m.astype(np.float32).astype(np.float64) for m in (plus, minus))
        high, low = ops.affine_ssd_sums(fixed, mask, moving, plus), ops.affine_ssd_sums(fixed, mask, moving, minus)
        assert high[0] == low[0] == sums[0]
        numeric = (high[1] - low[1]) / (plus[k // 4, k % 4] - minus[k // 4, k % 4])
        assert 2.0 * sums[2 + k] == pytest.approx(numeric, rel=0.03, abs=1e-3 * np.abs(2.0 * sums[2:]).max())


def test_ssd_sums_refuse_bad_inputs(descriptor_pair):
    fixed, moving = descriptor_pair
    matrix = _matrix("identity", fixed.shape[1:], moving.shape[1:])
    with pytest.raises(ValueError, match="same number of channels, got 12 and 11"):
        ops.affine_ssd_sums(fixed, None, np.ascontiguousarray(moving[:11]), matrix)
    with pytest.raises(ValueError, match="fixed must have 4 dimensions"):
        ops.affine_ssd_sums(fixed[0], None, moving, matrix)
    with pytest.raises(ValueError, match="mask must have the fixed grid's shape"):
        ops.affine_ssd_sums(fixed, np.ones((2, 2, 2), np.float32), moving, matrix)
    with pytest.raises(ValueError, match="moving must have at least 2 voxels per axis"):
        ops.affine_ssd_sums(fixed, None, np.ascontiguousarray(moving[:, :1]), matrix)
    with pytest.raises(ValueError, match="matrix must be 3x4 or 4x4"):
        ops.affine_ssd_sums(fixed, None, moving, np.eye(3))
    np.testing.assert_array_equal(ops.affine_ssd_sums(fixed, None, moving, matrix),
                                  ops.affine_ssd_sums(fixed, None, moving, matrix.ravel()))


def _levels(brain, moving_exclude=None):
    grid = np.diag([4.0, 4.0, 4.0, 1.0])
    moving_image = np.ascontiguousarray(ops.warp(brain[None], np.full((3, *SHAPE), 0.8, np.float32))[0])
    fixed = affine._make_level(np.ascontiguousarray(brain), grid, True, "mind")
    moving = affine._make_level(moving_image, grid, False, "mind", moving_exclude)
    return fixed, moving


@pytest.mark.parametrize("excluded", [False, True])
def test_mind_similarity_is_minus_the_sum_over_channels_of_their_mean_squared_difference(brain, excluded):
    """`affine.mind_and_gradient` is what its per-channel definition gives: minus the sum over the
    channels of each channel's mean squared difference (each with its own S, equal for all),
    the gradient minus 2 / S times the derivative sums, with the moving exclusion taken out of
    the mask of every channel."""
    lesion = np.zeros(SHAPE, bool)
    lesion[12:20, 26:34, 18:26] = True
    fixed, moving = _levels(brain, lesion if excluded else None)
    world = np.eye(4)
    world[:3, :3] = affine.rotation_matrix(np.radians([3.0, -2.0, 4.0]))
    world[:3, 3] = [1.5, -2.0, 1.0]
    voxel = affine._voxel_map(fixed, moving, world)
    mask = affine._mask_for(fixed, moving, voxel)
    assert (mask.sum() < fixed.mask.sum()) == excluded
    value, gradient = affine.mind_and_gradient(fixed, moving, world)
    expected_value, d_rows = 0.0, np.zeros(12)
    for fixed_channel, moving_channel in zip(fixed.features, moving.features):
        sums = ops.affine_ncc_sums(fixed_channel, mask, moving_channel, affine._kernel_matrix(voxel))
        expected_value -= (sums[3] - 2.0 * sums[5] + sums[4]) / sums[0]
        d_rows -= 2.0 * (sums[30:42] - sums[18:30]) / sums[0]
    expected_gradient = affine._world_gradient(d_rows, fixed, moving)
    assert value == pytest.approx(expected_value, rel=1e-6)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-6, atol=1e-9 * np.abs(expected_gradient).max())


def test_mind_similarity_without_overlap_is_minus_the_channel_count(brain):
    """Fewer than 10 voxels compared: the worst value (every channel's difference at most 1 per
    voxel, so minus the channel count) and no gradient, as before."""
    fixed, moving = _levels(brain)
    world = np.eye(4)
    world[:3, 3] = [1000.0, 0.0, 0.0]  # every fixed point far outside the moving grid
    value, gradient = affine.mind_and_gradient(fixed, moving, world)
    assert value == -float(fixed.features.shape[0]) == -12.0
    np.testing.assert_array_equal(gradient, np.zeros((4, 4)))


@pytest.mark.cuda
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_ssd_sums_match_cpu_both_modes(descriptor_pair, masked):
    cupy = pytest.importorskip("cupy")
    fixed, moving = descriptor_pair
    mask = (fixed[0] > 0.3).astype(np.float32) if masked else None
    matrix = _matrix("rotated", fixed.shape[1:], moving.shape[1:])
    cpu = ops.affine_ssd_sums(fixed, mask, moving, matrix)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        f, mv = cupy.asarray(fixed), cupy.asarray(moving)
        m = None if mask is None else cupy.asarray(mask)
        workspace = cupy.empty(_C.affine_ssd_workspace_size(fixed[0].size), cupy.float64)
        out = cupy.empty(ops.AFFINE_SSD_SUMS, cupy.float64)
        first = ops.affine_ssd_sums(f, m, mv, matrix, workspace=workspace, out=out)
        assert first is out
        device_sums = cupy.asnumpy(out)
        host_list = np.asarray(_C.affine_ssd_sums_cuda(f.data.ptr, 0 if m is None else m.data.ptr, fixed.shape[1:],
                                                       fixed.shape[0], mv.data.ptr, moving.shape[1:],
                                                       matrix.ravel().tolist(), stream=stream.ptr))
        again = cupy.asnumpy(ops.affine_ssd_sums(f, m, mv, matrix, workspace=workspace, out=out))
    assert device_sums[0] == cpu[0]
    np.testing.assert_allclose(device_sums, cpu, rtol=1e-5, atol=1e-7 * np.abs(cpu[2:]).max())
    np.testing.assert_allclose(host_list, device_sums, rtol=1e-12, atol=0)
    assert np.array_equal(again, device_sums)  # fixed-order block sums: same every run
