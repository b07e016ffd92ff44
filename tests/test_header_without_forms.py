"""A NIfTI header with neither a qform nor an sform is read as ITK/ANTs read it, with a
HeaderWarning (issue 36, defect 5).

On e7b1639 such an image registered with flag ok, but nibabel's made-up affine (centred,
x flipped) is not what ITK reads, so `antsApplyTransforms` with our warp.nii.gz gave an all-zero
image. Checked here against antspyx's own reading of the file and its own resampling.
"""

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import cli, io

from test_registrar_support import block_downsample, make_tiny_bundle, package_file

ants = pytest.importorskip("ants")


def _without_forms(image, path):
    header = image.header.copy()
    stripped = nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), None, header)
    stripped.header.set_qform(None, code=0)
    stripped.header.set_sform(None, code=0)
    nib.save(stripped, str(path))
    assert nib.load(str(path)).header["qform_code"] == 0 and nib.load(str(path)).header["sform_code"] == 0
    return path


def _ants_affine(path):
    """voxel -> RAS mm affine of the image as antspyx (ITK) reads it."""
    image = ants.image_read(str(path))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.direction) @ np.diag(image.spacing)
    lps[:3, 3] = image.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.fixture(scope="module")
def brain_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noform")
    brain = block_downsample(nib.load(str(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))), 4)
    return _without_forms(brain, folder / "brain.nii.gz")


def test_read_as_itk_reads_it_with_a_warning(brain_path):
    with pytest.warns(io.HeaderWarning, match="neither a qform nor an sform"):
        volume = io.load_volume(brain_path)
    np.testing.assert_allclose(volume.affine, _ants_affine(brain_path), atol=1e-6)


def test_ants_applies_our_warp_to_such_images(brain_path, tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    status = cli.register_main([str(brain_path), str(brain_path), "-o", str(out), "--bundle", str(bundle),
                                "--backend", "onnxruntime", "--affine", "off", "--refine", "off", "-q"])
    assert status == cli.EXIT_OK
    image = ants.image_read(str(brain_path))
    by_ants = ants.apply_transforms(image, image, [str(out / "warp.nii.gz")], interpolator="linear").numpy()
    ours = np.asarray(nib.load(str(out / "warped.nii.gz")).dataobj)
    inside = ours > 0.1 * ours.max()
    assert inside.sum() > 1000 and np.abs(by_ants[inside]).max() > 0  # not the all-zero image
    correlation = np.corrcoef(by_ants[inside], ours[inside])[0, 1]
    assert correlation > 0.99, correlation
