"""`_C.reverse_axes` and `io.reversed_axes`: numpy's ``transpose(2, 1, 0)``, cast as numpy casts,
for every type pair the kernel takes, any strides, and numpy's own path for what it does not take."""

import numpy as np
import pytest

from smgic_rt import _C, io
from smgic_rt.geometry import ops

TYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64]
SHAPES = [(16, 8, 32), (7, 5, 9), (64, 64, 64), (33, 17, 65), (1, 1, 1)]


def _values(shape, dtype, seed=0):
    """Values over the type's whole range: large integers that float32 must round, float64 beyond
    float32's range (inf), tiny and negative values."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values = rng.normal(size=shape) * rng.choice([1e-30, 1.0, 1e6, 1e39], size=shape)
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def _expected(array, to):
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(array.transpose(2, 1, 0), dtype=to)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", TYPES)
@pytest.mark.parametrize("to", ["same", np.float32])
def test_kernel_is_numpy_transpose_for_every_type_pair(shape, dtype, to):
    to = dtype if to == "same" else to
    array = _values(shape, dtype)
    out = np.full(shape[::-1], 7, dtype=to)
    _C.reverse_axes(array, out)
    np.testing.assert_array_equal(out, _expected(array, to), strict=True)
    assert np.array_equal(out.view(np.uint8), _expected(array, to).view(np.uint8))  # bit for bit (-0.0, inf)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("view", ["strided", "negative", "fortran", "field component", "column"])
def test_kernel_reads_any_strides(view, dtype):
    base = _values((40, 31, 66), dtype, seed=1)
    array = {"strided": base[::3, :, ::2],
             "negative": base[::-1, ::-2, ::-1],
             "fortran": np.asfortranarray(base),
             "field component": np.ascontiguousarray(base.reshape(40, 31, 22, 1, 3))[:, :, :, 0, 1],
             "column": base[:, 5:6, :]}[view]
    got = io.reversed_axes(array, np.float32)
    np.testing.assert_array_equal(got, _expected(array, np.float32), strict=True)
    direct = np.empty(array.shape[::-1], np.float32)
    _C.reverse_axes(array, direct)
    np.testing.assert_array_equal(direct, got)


def test_threads_give_the_same_bytes():
    array = _values((65, 33, 130), np.int16, seed=2)
    with ops.cpu_threads(1):
        one = io.reversed_axes(array, np.float32)
    with ops.cpu_threads(2):
        two = io.reversed_axes(array, np.float32)
    assert one.tobytes() == two.tobytes()


@pytest.mark.parametrize("make", ["big-endian", "bool", "float16", "bool same type", "int64 to int32"])
def test_what_the_kernel_refuses_goes_through_numpy(make):
    """Types the kernel does not take (or a conversion other than to float32) give numpy's answer."""
    rng = np.random.default_rng(3)
    array, to = {
        "big-endian": (rng.integers(-3000, 3000, (9, 10, 11)).astype(">i2"), np.float32),
        "bool": (rng.random((9, 10, 11)) > 0.5, np.float32),
        "float16": (rng.random((9, 10, 11)).astype(np.float16), np.float32),
        "bool same type": (rng.random((9, 10, 11)) > 0.5, None),
        "int64 to int32": (rng.integers(-3000, 3000, (9, 10, 11)), np.int32),
    }[make]
    got = io.reversed_axes(array, to)
    np.testing.assert_array_equal(got, _expected(array, to), strict=True)
    assert got.flags.c_contiguous


def test_kernel_checks_its_arguments():
    array = np.zeros((4, 5, 6), np.uint8)
    with pytest.raises(ValueError, match="reversed"):
        _C.reverse_axes(array, np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(ValueError, match="in's dtype or float32"):
        _C.reverse_axes(array, np.zeros((6, 5, 4), np.int16))
    with pytest.raises(TypeError, match="native-order"):
        _C.reverse_axes(array.astype(">i2"), np.zeros((6, 5, 4), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.reverse_axes(array, np.zeros((4, 5, 6), np.uint8).transpose(2, 1, 0))
    with pytest.raises(ValueError, match="3-D"):
        _C.reverse_axes(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))


def test_loaded_images_keep_their_values(tmp_path):
    """A file's Fortran-ordered voxels come out C-ordered and equal to nibabel's, for an intensity
    image (uint8 -> float32) and a label map (int16 kept)."""
    import nibabel as nib

    rng = np.random.default_rng(4)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    image = rng.integers(0, 256, (64, 48, 40)).astype(np.uint8)
    labels = rng.integers(0, 3000, (64, 48, 40)).astype(np.int16)
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "image.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "labels.nii.gz"))
    volume = io.load_volume(tmp_path / "image.nii.gz")
    label_map = io.load_label_map(tmp_path / "labels.nii.gz")
    assert volume.data.flags.c_contiguous and volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, image.astype(np.float32))
    assert label_map.data.flags.c_contiguous and label_map.data.dtype == np.int16
    np.testing.assert_array_equal(label_map.data, labels)
