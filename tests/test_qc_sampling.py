"""The QC measurement grid read by striding (`flags._every_nth_voxel`) gives what the resampling
kernel gives at whole voxel coordinates: the same bytes (a -0.0 voxel the same value)."""

import numpy as np
import pytest

from smgic_rt.geometry import ops
from smgic_rt.qc import flags


def _through_kernel(data, matrix, fine_shape, interpolation="linear"):
    volume = np.ascontiguousarray(np.asarray(data, dtype=np.float32)[None])
    return ops.affine_resample(volume, np.asarray(matrix, dtype=np.float64), fine_shape, interpolation=interpolation)[0]


@pytest.mark.parametrize("shape, voxel_mm", [((182, 218, 182), 1.0), ((37, 41, 29), 1.3), ((64, 64, 64), 3.0),
                                             ((33, 20, 25), (1.0, 2.0, 0.9))])
def test_strided_reads_are_the_kernels_reads(shape, voxel_mm):
    """Images (with negative values and exact zeros), label maps, every n-th voxel and the zeros
    beyond the last one; on odd shapes and per-axis steps."""
    rng = np.random.default_rng(0)
    affine = np.diag([*np.broadcast_to(voxel_mm, 3), 1.0])
    fine_shape, fine, _ = flags._measurement_grid(shape, affine, 4.0)
    image = rng.normal(size=shape).astype(np.float32)
    image[rng.random(shape) < 0.2] = 0.0
    strided = flags._every_nth_voxel(image, fine, fine_shape)
    assert strided is not None and strided.shape == tuple(fine_shape)
    expected = _through_kernel(image, fine, fine_shape)
    assert (strided + np.float32(0.0)).tobytes() == expected.tobytes()
    sampled = flags._sample(image, fine, fine_shape)
    assert sampled.tobytes() == ops.downsample_haar(expected[None])[0].tobytes()
    image[rng.random(shape) < 0.05] = -0.0  # a signed zero may read as +0.0 here: equal values
    np.testing.assert_array_equal(flags._sample(image, fine, fine_shape),
                                  ops.downsample_haar(_through_kernel(image, fine, fine_shape)[None])[0])
    labels = rng.integers(0, 4, shape).astype(np.int16)
    labelled = flags._every_nth_voxel(labels, fine, fine_shape) != 0
    expected_labels = _through_kernel((labels != 0).astype(np.float32), fine, fine_shape, "nearest") > 0.5
    np.testing.assert_array_equal(labelled, expected_labels)


def test_other_matrices_go_through_the_kernel():
    """A measurement grid finer than the image (voxels over 8 mm: half-voxel steps), a shifted or a
    rotated one are no whole-voxel reads."""
    shift = np.diag([2.0, 2.0, 2.0, 1.0])
    shift[0, 3] = 1.0
    rotated = np.eye(4)
    rotated[:2, :2] = [[0.0, 2.0], [2.0, 0.0]]
    for matrix in (np.diag([0.5, 0.5, 0.5, 1.0]), shift, rotated):
        assert flags._every_nth_voxel(np.zeros((8, 8, 8), np.float32), matrix, (8, 8, 8)) is None
    image = np.random.default_rng(1).random((9, 8, 7)).astype(np.float32)
    matrix = np.diag([0.5, 0.5, 0.5, 1.0])
    np.testing.assert_array_equal(flags._sample(image, matrix, (18, 16, 14)),
                                  ops.downsample_haar(_through_kernel(image, matrix, (18, 16, 14))[None])[0])
