"""smgic_rt.io: every kind of bad input gets a typed error naming what was expected and what came."""

import concurrent.futures
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt.io import atomic
from smgic_rt import io
from smgic_rt.io import InvalidImageError

NIBABEL_ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _volume(shape=(8, 9, 10), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_loads_path_image_and_pair_identically(tmp_path):
    real = nib.load(str(NIBABEL_ANATOMICAL))
    from_path = io.load_volume(NIBABEL_ANATOMICAL, name="fixed image")
    from_image = io.load_volume(real)
    from_pair = io.load_volume((real.get_fdata(), real.affine))
    assert from_path.shape == real.shape[:3] and from_path.data.dtype == np.float32
    np.testing.assert_array_equal(from_path.data, from_image.data)
    np.testing.assert_array_equal(from_path.data, from_pair.data)
    np.testing.assert_allclose(from_path.affine, real.affine)
    # MGZ too
    mgz = tmp_path / "a.mgz"
    nib.save(nib.MGHImage(real.get_fdata().astype(np.float32), real.affine), str(mgz))
    np.testing.assert_allclose(io.load_volume(mgz).data, from_path.data, rtol=1e-6)
    np.testing.assert_allclose(io.load_volume(mgz).affine, real.affine, atol=1e-5)


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="moving image: no such file"):
        io.load_volume("/nonexistent/brain.nii.gz", name="moving image")


def test_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not a NIfTI file")
    with pytest.raises(InvalidImageError, match="could not read"):
        io.load_volume(path, name="fixed image")


@pytest.mark.parametrize("shape, kind", [((20, 30), "2-D"), ((10, 11, 12, 2), "4-D")])
def test_wrong_dimensionality(shape, kind):
    with pytest.raises(InvalidImageError, match=f"must be a 3-D volume, got a {kind} image of shape"):
        io.load_volume((_volume(shape), np.eye(4)), name="moving image")


def test_thin_slab_and_trailing_singleton():
    with pytest.raises(InvalidImageError, match="at least 4 voxels"):
        io.load_volume((_volume((20, 30, 1)), np.eye(4)))
    assert io.load_volume((_volume((8, 9, 10, 1)), np.diag([4.0, 4.0, 4.0, 1.0]))).shape == (8, 9, 10)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(bad):
    data = _volume()
    data[2, 3, 4] = bad
    with pytest.raises(InvalidImageError, match="finite values"):
        io.load_volume((data, np.eye(4)), name="fixed image")


def test_constant_image():
    with pytest.raises(InvalidImageError, match="is constant"):
        io.load_volume((np.full((8, 8, 8), 3.0), np.eye(4)), name="fixed image")


@pytest.mark.parametrize("size", [0.0, 1e-4, 500.0])
def test_absurd_voxel_sizes(size):
    affine = np.diag([size, 1.0, 1.0, 1.0])
    with pytest.raises(InvalidImageError, match="voxel sizes must lie in"):
        io.load_volume((_volume(), affine), name="moving image")


def test_broken_affine():
    with pytest.raises(InvalidImageError, match="non-finite"):
        io.load_volume((_volume(), np.full((4, 4), np.nan)))
    singular = np.array([[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    singular[1, :3] = [1.0, 1.0, 0]
    with pytest.raises(InvalidImageError, match="singular"):
        io.load_volume((_volume(), singular))


def test_label_maps():
    labels = np.random.default_rng(0).integers(0, 5, size=(8, 9, 10))
    loaded = io.load_label_map((labels.astype(np.float32), np.eye(4)))
    assert loaded.data.dtype == np.int32
    np.testing.assert_array_equal(loaded.data, labels)
    with pytest.raises(InvalidImageError, match="integer labels, got .* non-integer voxels"):
        io.load_label_map((labels + 0.37, np.eye(4)), name="moving labels")


def test_mask_must_share_the_grid():
    image = io.load_volume((_volume(), np.eye(4)), name="fixed image", allow_constant=True)
    with pytest.raises(InvalidImageError, match="shape of the fixed image"):
        io.load_mask((np.ones((5, 5, 5)), np.eye(4)), like=image)
    with pytest.raises(InvalidImageError, match="empty"):
        io.load_mask((np.zeros((8, 9, 10)), np.eye(4)), like=image)
    mask = io.load_mask((np.ones((8, 9, 10)) * 2, np.eye(4)), like=image)
    assert set(np.unique(mask.data)) == {1.0}


def test_wrong_type():
    with pytest.raises(InvalidImageError, match="expected a path"):
        io.load_volume(42, name="fixed image")


def test_save_image_atomic_writes_and_cleans(tmp_path):
    image = io.make_nifti(_volume(), np.eye(4))
    path = io.save_image_atomic(image, tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(nib.load(str(path)).get_fdata(), image.get_fdata())
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]
    with pytest.raises(ValueError, match="must end in"):
        io.save_image_atomic(image, tmp_path / "x.png")


def test_gzip_members_use_the_threads_asked_for_and_give_the_same_file(tmp_path, monkeypatch):
    """A volume of three 8 MiB pieces is compressed as several gzip members; `threads` sizes the
    pool (spied on, not replaced), and the bytes do not depend on it."""
    pools = []

    class SpyPool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", SpyPool)
    image = io.make_nifti(np.random.default_rng(0).random((160, 160, 200), dtype=np.float32), np.eye(4))
    one = io.save_image_atomic(image, tmp_path / "one.nii.gz", threads=1)
    many = io.save_image_atomic(image, tmp_path / "many.nii.gz", threads=3)
    assert pools == [1, 3]
    assert one.read_bytes() == many.read_bytes()
    np.testing.assert_array_equal(np.asarray(nib.load(str(one)).dataobj), np.asarray(image.dataobj))


@pytest.mark.parametrize("shape", [(16, 8, 32), (7, 5, 9)])
@pytest.mark.parametrize("dtype, to", [(np.uint8, np.float32), (np.int16, None), (np.float64, np.float32)])
def test_reversed_axes_is_numpy_transpose_in_c_order(shape, dtype, to):
    """The plane-wise transposing copy is numpy's ``transpose(2, 1, 0)`` cast as numpy casts, on
    grids of powers of two (where it pays) and of odd sizes; C <-> Fortran order both ways."""
    array = (np.random.default_rng(3).random(shape) * 200 - 50).astype(dtype)
    got = io.reversed_axes(array, to)
    assert got.flags.c_contiguous and got.dtype == np.dtype(to or dtype)
    np.testing.assert_array_equal(got, np.ascontiguousarray(array.transpose(2, 1, 0), dtype=to))
    fortran = np.asfortranarray(array)
    assert io.c_ordered(fortran, to).flags.c_contiguous
    np.testing.assert_array_equal(io.c_ordered(fortran, to), array.astype(to or dtype))
    back = io.fortran_ordered(array)
    assert back.flags.f_contiguous and not back.flags.c_contiguous
    np.testing.assert_array_equal(back, array)
    assert io.fortran_ordered(fortran) is fortran
    with pytest.raises(ValueError, match="C-contiguous array of shape"):
        io.reversed_axes(array, out=np.empty(shape, dtype))


@pytest.mark.parametrize("make", ["float32", "int16", "int64", "fortran", "field"])
def test_saved_file_is_nibabels_own_file(tmp_path, make):
    """What `save_image_atomic` writes decompresses to nibabel's own bytes for the image (it hands
    nibabel the voxels in file order, with the header as nibabel would write it): C- and
    Fortran-ordered voxels, wide labels, an ITK displacement field."""
    from smgic_rt.geometry import transforms

    rng = np.random.default_rng(4)
    affine = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -126], [0, -1.1, 0, 72], [0, 0, 0, 1]])
    if make == "field":
        image = transforms.displacement_to_itk_image(rng.normal(size=(3, 12, 9, 14)).astype(np.float32), affine)
    else:
        data = {"float32": rng.random((12, 9, 14), dtype=np.float32),
                "int16": rng.integers(-300, 300, (12, 9, 14)).astype(np.int16),
                "int64": rng.integers(0, 2 ** 40, (12, 9, 14)),
                "fortran": np.asfortranarray(rng.random((12, 9, 14), dtype=np.float32))}[make]
        image = io.make_nifti(data, affine)
    expected = image.to_bytes()
    path = io.save_image_atomic(image, tmp_path / "x.nii.gz")
    import gzip

    assert gzip.decompress(path.read_bytes()) == expected


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_saved_image_keeps_no_reference_to_its_file(tmp_path, order):
    """nibabel's writer points an image's file_map at what it wrote; a registration's saved
    images would then hold their files (the streaming writer, its pieces) as long as they live."""
    data = np.asarray(_volume((20, 30, 40)), order=order)
    image = io.make_nifti(data, np.eye(4))
    io.save_image_atomic(image, tmp_path / "x.nii.gz")
    assert all(holder.fileobj is None and holder.filename is None for holder in image.file_map.values())
    assert image.dataobj is data

def test_itk_field_image_holds_the_lps_displacement():
    """The field image holds -x, -y, +z of the RAS displacement at every voxel, C-ordered as ever
    (its file order is made only when it is written)."""
    from smgic_rt.geometry import transforms

    displacement = np.random.default_rng(5).normal(size=(3, 6, 7, 8)).astype(np.float32)
    data = np.asarray(transforms.displacement_to_itk_image(displacement, np.eye(4)).dataobj)
    assert data.shape == (6, 7, 8, 1, 3) and data.dtype == np.float32 and data.flags.c_contiguous
    in_file_order = io.fortran_ordered(data)
    assert in_file_order.flags.f_contiguous and np.array_equal(in_file_order, data)
    np.testing.assert_array_equal(np.moveaxis(data[:, :, :, 0], -1, 0), displacement * np.array([-1, -1, 1], np.float32)[:, None, None, None])


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_permissions_of_a_plain_file(tmp_path, umask):
    """Atomic writes go through mkstemp (mode 0600); the renamed outputs must end up as readable
    to the group and others as the user's umask lets a plain open() make them."""
    previous = os.umask(umask)
    try:
        image = io.save_image_atomic(io.make_nifti(_volume(), np.eye(4)), tmp_path / "x.nii.gz")
        report = atomic.write_json(tmp_path / "report.json", {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    expected = plain.stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for path in (image, report):
        assert path.stat().st_mode & 0o777 == expected, path.name
