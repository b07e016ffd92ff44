"""Transforms in: smgic-apply / RegistrationResult.apply refuse what is not a displacement field
between the images at hand, naming the file, and still apply good fields exactly.

The image is nibabel's real T1 (anatomical.nii, 33x41x25 at 2 mm); fields are written as real
NIfTI files through nibabel, as ANTs and smgic-register write them (float32, X x Y x Z x 1 x 3,
intent vector, LPS mm).
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import cli, io
from smgic_rt.geometry import transforms
from smgic_rt.io import InvalidImageError, make_nifti
from smgic_rt.geometry.transforms import InvalidTransformError

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


@pytest.fixture(scope="module")
def brain():
    return io.load_volume(ANATOMICAL, name="input image")


def _translation_field(volume, lps_mm=(0.0, 0.0, 0.0)):
    """ITK field image on `volume`'s grid with a constant LPS displacement."""
    ras = np.empty((3, *volume.shape), np.float32)
    for c, value in enumerate(np.asarray(lps_mm) * [-1, -1, 1]):
        ras[c] = value
    return transforms.displacement_to_itk_image(ras, volume.affine)


def _save(image, path):
    nib.save(image, str(path))
    return path


def _apply(field, brain, reference=None):
    return transforms.apply_displacement_field(field, brain, reference=reference or (brain.shape, brain.affine))


def test_good_field_file_applies_exactly(brain, tmp_path):
    # Positive control: a 2-voxel (4 mm) shift along RAS x reads the image 2 voxels on (the
    # anatomical's x axis is RAS +x... checked through its affine, not assumed).
    step = brain.affine[:3, 0]  # one voxel along array axis 0, in RAS mm
    lps = np.array([-step[0], -step[1], step[2]]) * 2
    path = _save(_translation_field(brain, lps), tmp_path / "warp.nii.gz")
    data, affine = _apply(path, brain)
    np.testing.assert_allclose(affine, brain.affine)
    np.testing.assert_allclose(data[:-2], brain.data[2:], rtol=1e-5, atol=1e-3)


def test_vector_intent_4d_field_is_accepted_like_the_itk_layout(brain, tmp_path):
    itk = _translation_field(brain, (1.5, -2.0, 0.5))
    four_d = nib.Nifti1Image(np.asarray(itk.dataobj)[:, :, :, 0, :], brain.affine)
    four_d.header.set_intent("vector")
    a, _ = _apply(_save(itk, tmp_path / "itk.nii.gz"), brain)
    b, _ = _apply(_save(four_d, tmp_path / "vec4d.nii.gz"), brain)
    np.testing.assert_array_equal(a, b)


def test_plain_4d_image_with_three_volumes_is_refused(brain, tmp_path):
    series = np.stack([brain.data] * 3, axis=-1)
    path = _save(make_nifti(series, brain.affine), tmp_path / "series.nii.gz")
    with pytest.raises(InvalidTransformError, match=r"series\.nii\.gz'.*4-D image of 3 volumes.*intent none"):
        _apply(path, brain)


def test_itk_layout_with_a_statistics_intent_is_refused(brain, tmp_path):
    image = _translation_field(brain)
    image.header.set_intent("t test", (10,))
    path = _save(image, tmp_path / "ttest.nii.gz")
    with pytest.raises(InvalidTransformError, match=r"ttest\.nii\.gz'.*intent t test"):
        _apply(path, brain)


@pytest.mark.parametrize("voxel_mm", [1e-9, 1e4])
def test_field_with_absurd_voxel_sizes_is_refused(brain, tmp_path, voxel_mm):
    image = _translation_field(brain)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    path = _save(image, tmp_path / "tiny_voxels.nii.gz")
    with pytest.raises(InvalidTransformError, match=r"tiny_voxels\.nii\.gz'.*voxel sizes must lie in"):
        _apply(path, brain)


def test_field_grid_far_from_the_reference_is_refused_with_the_distance(brain, tmp_path):
    image = _translation_field(brain)
    shifted = brain.affine.copy()
    shifted[0, 3] += 500.0  # 500 mm along RAS x: the boxes miss by 500 - width of the grids
    image.set_sform(shifted, code=1)
    image.set_qform(shifted, code=1)
    path = _save(image, tmp_path / "far.nii.gz")
    box_low, box_high = io.world_box(brain.shape, brain.affine)
    expected_gap = 500.0 - (box_high[0] - box_low[0])
    with pytest.raises(InvalidTransformError, match=rf"does not overlap the reference image.*misses by {expected_gap:.1f} mm"):
        _apply(path, brain)


def test_absurd_magnitudes_are_refused(brain, tmp_path):
    data = np.asarray(_translation_field(brain).dataobj).copy()
    data[10, 10, 10, 0, 1] = 1e6
    image = make_nifti(data, brain.affine)
    image.header.set_intent("vector")
    path = _save(image, tmp_path / "huge.nii.gz")
    with pytest.raises(InvalidTransformError, match=r"displacements up to 1e\+06 mm \(at field voxel \(10, 10, 10\)\)"):
        _apply(path, brain)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_displacements_are_refused(brain, tmp_path, bad):
    data = np.asarray(_translation_field(brain).dataobj).copy()
    data[3, 4, 5, 0, 2] = bad
    image = make_nifti(data, brain.affine)
    image.header.set_intent("vector")
    path = _save(image, tmp_path / "nan.nii.gz")
    with pytest.raises(InvalidTransformError, match=r"nan\.nii\.gz'.*1 non-finite displacement values"):
        _apply(path, brain)


def test_field_sending_everything_outside_the_image_is_refused(brain, tmp_path):
    # An identity field on the reference, with the input image 200 voxels (400 mm) away: a
    # plausible field, but every output voxel would read zeros.
    far = io.Volume(brain.data, brain.affine @ np.array([[1, 0, 0, 200], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
                    "input image")
    path = _save(_translation_field(brain, (0.0, 0.0, 0.0)), tmp_path / "identity.nii.gz")
    with pytest.raises(InvalidTransformError, match="maps no voxel of the reference image into the input image.*miss by"):
        _apply(path, far, reference=(brain.shape, brain.affine))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_field_file_names_the_file(brain, tmp_path, suffix):
    whole = _save(_translation_field(brain, (1.0, 0.0, 0.0)), tmp_path / f"whole{suffix}")
    raw = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(InvalidTransformError, match=rf"cut{suffix.replace('.', chr(92) + '.')}'.*truncated"):
        _apply(cut, brain)


def test_header_only_garbage_names_the_file(brain, tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(InvalidImageError, match=r"garbage\.nii\.gz'"):
        _apply(path, brain)


def test_smgic_apply_exits_non_zero_and_writes_nothing(brain, tmp_path, capfd):
    series = _save(make_nifti(np.stack([brain.data] * 3, axis=-1), brain.affine), tmp_path / "series.nii.gz")
    output = tmp_path / "out.nii.gz"
    status = cli.apply_main([str(series), str(ANATOMICAL), str(ANATOMICAL), str(output)])
    assert status != 0
    assert not output.exists()
    assert "series.nii.gz': is a 4-D image of 3 volumes" in capfd.readouterr().err
    good = _save(_translation_field(brain), tmp_path / "identity.nii.gz")
    assert cli.apply_main([str(good), str(ANATOMICAL), str(ANATOMICAL), str(output)]) == 0
    np.testing.assert_allclose(nib.load(str(output)).get_fdata(), brain.data, atol=1e-3)
