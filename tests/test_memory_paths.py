"""The memory-saving paths of the label warp, the resampling, the Jacobian and the QC picture
(issue 35, point 2) give what the whole-array paths they replace gave, bit for bit.

- `ops.warp(..., displacement_map=(M, L))` reads a field through `ops.affine_field`'s change of
  units inside the kernel: it must equal warping with ``ops.affine_field(field, M, L)``;
- `ops.warp_labels` warps uint8/int16/uint16/int32 maps in their own type: the result must equal
  the int64 warp of the same map;
- `transforms.field_jacobian_determinant` reads the RAS-mm field without a voxel-unit copy (the
  CPU kernel converts one slab at a time): it must equal the whole grid's
  ``jacobian_determinant(affine_field(...))``, within one slab and across several;
- `picture.checkerboard` on a part of a volume (its origin and the whole grid's shape) must equal
  that part of the whole volume's checkerboard.
"""

import numpy as np
import pytest

from smgic_rt.geometry import ops, transforms
from smgic_rt.qc import picture

RNG = np.random.default_rng(35)


def _smooth_field(shape, scale):
    """A smooth random field (3, *shape): a few low-frequency cosines per channel."""
    grid = np.indices(shape, dtype=np.float64)
    field = np.zeros((3, *shape))
    for channel in range(3):
        for _ in range(3):
            k = RNG.uniform(0.05, 0.3, size=3)
            phase = RNG.uniform(0, 2 * np.pi)
            field[channel] += scale * np.cos(np.tensordot(k, grid, axes=1) + phase)
    return field.astype(np.float32)


def _ras_to_voxels():
    """(matrix, linear) of a field in 'mm' on a 20x18x16 grid read as voxels of a 24^3 image
    through an oblique affine: what `transforms.warp_image` hands the kernel."""
    field_affine = np.array([[0.0, -1.1, 0.1, 12.0], [0.9, 0.0, 0.05, -8.0], [0.05, 0.1, 1.2, 3.0], [0, 0, 0, 1]])
    image_affine = np.array([[1.0, 0.02, 0.0, 2.0], [0.0, -1.05, 0.0, 20.0], [0.01, 0.0, 0.95, -4.0], [0, 0, 0, 1]])
    return transforms._image_voxel_map(field_affine, image_affine, relative=True)


@pytest.mark.parametrize("interpolation", ["linear", "nearest", "label"])
def test_warp_through_a_displacement_map_equals_warping_the_converted_field(interpolation):
    matrix, linear = _ras_to_voxels()
    field = _smooth_field((20, 18, 16), 3.0)
    image = RNG.normal(size=(2, 24, 24, 24)).astype(np.float32)
    converted = ops.affine_field(field, matrix, linear)
    expected = ops.warp(image, converted, interpolation=interpolation)
    got = ops.warp(image, field, interpolation=interpolation, displacement_map=(matrix, linear))
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, ops.warp(image, field, interpolation=interpolation))  # the map did something


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32"])
@pytest.mark.parametrize("interpolation", ["label", "nearest"])
def test_labels_warp_in_their_own_type_as_in_int64(dtype, interpolation):
    matrix, linear = _ras_to_voxels()
    field = _smooth_field((20, 18, 16), 3.0)
    info = np.iinfo(dtype)
    values = RNG.integers(max(info.min, -300), min(info.max, 70000), size=12, endpoint=True)
    labels = values[RNG.integers(0, 12, size=(1, 6, 6, 6))].repeat(4, 1).repeat(4, 2).repeat(4, 3).astype(dtype)
    wide = ops.warp_labels(labels.astype(np.int64), field, interpolation=interpolation,
                           displacement_map=(matrix, linear))
    own = ops.warp_labels(labels, field, interpolation=interpolation, displacement_map=(matrix, linear))
    assert own.dtype == np.dtype(dtype)
    assert np.array_equal(own.astype(np.int64), wide)
    assert len(np.unique(own)) > 3


def test_warp_labels_names_the_types_it_takes():
    field = np.zeros((3, 4, 4, 4), np.float32)
    with pytest.raises(TypeError, match="uint8 or int16 or uint16 or int32 or int64"):
        ops.warp_labels(np.zeros((1, 4, 4, 4), np.int8), field)


@pytest.mark.parametrize("shape", [(23, 11, 9), (40, 90, 80)], ids=["one_slab", "several_slabs"])
def test_jacobian_without_a_voxel_copy_equals_the_whole_grid(shape):
    field = _smooth_field(shape, 2.0)
    affine = np.array([[0.0, -1.1, 0.1, 12.0], [0.9, 0.0, 0.05, -8.0], [0.05, 0.1, 1.2, 3.0], [0, 0, 0, 1]])
    whole = ops.jacobian_determinant(ops.affine_field(field, np.zeros((3, 4)), np.linalg.inv(affine[:3, :3])))
    before = field.copy()
    got = transforms.field_jacobian_determinant(field, affine)
    assert np.array_equal(got, whole)
    assert np.array_equal(field, before)  # the caller's field is left as it was


def test_checkerboard_of_a_plane_is_that_plane_of_the_volume_checkerboard():
    first, second = RNG.normal(size=(2, 19, 23, 17)).astype(np.float32)
    whole = picture.checkerboard(first, second, squares=5)
    for origin, plane in picture.central_planes(first):
        index = tuple(slice(o, o + n) for o, n in zip(origin, plane.shape))
        part = picture.checkerboard(plane, second[index], squares=5, grid_shape=first.shape, origin=origin)
        assert np.array_equal(part, whole[index])
    assert np.array_equal(picture.display_scaled(first[:, :1], picture.display_range(first)),
                          picture.display_scaled(first)[:, :1])
