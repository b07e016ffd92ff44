"""Affines and fields for other tools (smgic_rt.io.transform_formats): every format round-trips
(ours -> file -> ours) within 1e-5 mm over a brain-sized box, on grids in awkward orientations;
the files agree with what nitransforms and antspyx make and read."""

import nibabel as nib
import numpy as np
import pytest

from smgic_rt.geometry import transforms
from smgic_rt.io import transform_formats
from smgic_rt.methods.affine import rotation_matrix
from smgic_rt.io import make_nifti
from smgic_rt.io.transform_formats import InvalidTransformFileError

ants = pytest.importorskip("ants")
nitransforms = pytest.importorskip("nitransforms")

# A fixed grid in RAS and a moving grid in LIA with oblique axes and another voxel size: FSL's
# frame flips x for one and not the other, and FLIRT works in both images' voxel coordinates.
FIXED_AFFINE = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
FIXED_SHAPE = (91, 109, 91)
_OBLIQUE = rotation_matrix(np.radians([6.0, -4.0, 9.0]))
MOVING_AFFINE = np.eye(4)
MOVING_AFFINE[:3, :3] = _OBLIQUE @ np.array([[-1.5, 0, 0], [0, 0, 1.5], [0, -1.5, 0]])
MOVING_AFFINE[:3, 3] = [95.0, -110.0, 80.0]
MOVING_SHAPE = (120, 110, 150)


def _matrix(seed=0):
    rng = np.random.default_rng(seed)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix(np.radians([10.0, -7.0, 13.0])) @ np.diag([1.08, 0.93, 1.04]) \
        + 0.02 * rng.normal(size=(3, 3))
    matrix[:3, 3] = [12.3, -45.6, 7.89]
    return matrix


def _box_points(count=2000, seed=1):
    return np.random.default_rng(seed).uniform(-100, 100, (count, 3))


def _largest_difference_mm(a, b) -> float:
    points = _box_points()
    return float(np.linalg.norm(points @ (a[:3, :3] - b[:3, :3]).T + (a[:3, 3] - b[:3, 3]), axis=1).max())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grids")
    paths = {"fixed": folder / "fixed.nii.gz", "moving": folder / "moving.nii.gz"}
    nib.save(make_nifti(np.zeros(FIXED_SHAPE, np.uint8), FIXED_AFFINE), str(paths["fixed"]))
    nib.save(make_nifti(np.zeros(MOVING_SHAPE, np.uint8), MOVING_AFFINE), str(paths["moving"]))
    return paths


@pytest.mark.parametrize("fmt, name", [("itk", "a.mat"), ("fsl", "a_flirt.mat"), ("lta", "a.lta"), ("ras", "a.txt")])
def test_every_affine_format_round_trips(images, tmp_path, fmt, name):
    matrix = _matrix()
    path = transform_formats.write_affine(matrix, tmp_path / name, fmt=fmt, fixed=images["fixed"],
                                          moving=images["moving"])
    assert transform_formats.affine_format(path) == fmt  # detected from the content alone
    back = transform_formats.read_affine(path, fixed=images["fixed"], moving=images["moving"])
    assert _largest_difference_mm(back, matrix) < 1e-5


def test_flirt_and_lta_files_agree_with_nitransforms(images, tmp_path):
    """nitransforms' own writers (from its Affine) and our readers: the same map."""
    matrix = _matrix(3)
    affine = nitransforms.linear.Affine(matrix, reference=str(images["fixed"]))
    affine.to_filename(str(tmp_path / "flirt.mat"), fmt="fsl", moving=str(images["moving"]))
    affine.to_filename(str(tmp_path / "fs.lta"), fmt="fs", moving=str(images["moving"]))
    for name in ("flirt.mat", "fs.lta"):
        back = transform_formats.read_affine(tmp_path / name, fixed=images["fixed"], moving=images["moving"])
        assert _largest_difference_mm(back, matrix) < 1e-5, name


def test_lta_names_the_moving_image_its_source(images, tmp_path):
    """FreeSurfer's LTA maps src (mri_robust_register's --mov) to dst (--dst) RAS: the matrix is
    moving -> fixed, and the volume infos must say so, or FreeSurfer tools invert it."""
    matrix = _matrix(4)
    path = transform_formats.write_affine(matrix, tmp_path / "a.lta", fixed=images["fixed"], moving=images["moving"])
    text = path.read_text()
    src = text[text.index("src volume info"):text.index("dst volume info")]
    dst = text[text.index("dst volume info"):]
    assert "volume = 120 110 150" in src and "volume = 91 109 91" in dst
    lines = text.splitlines()
    start = lines.index("1 4 4") + 1
    stored = np.array([[float(v) for v in line.split()] for line in lines[start:start + 4]])
    np.testing.assert_allclose(stored, np.linalg.inv(matrix), atol=1e-12)


def test_itk_text_and_binary_from_ants_read_alike(tmp_path):
    linear = np.eye(3) + 0.05 * np.random.default_rng(5).normal(size=(3, 3))
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=linear,
                                           translation=[3.0, -2.0, 5.0], center=[10.0, -20.0, 30.0])
    ants.write_transform(transform, str(tmp_path / "t.mat"))
    ants.write_transform(transform, str(tmp_path / "t.txt"))
    binary = transform_formats.read_affine(tmp_path / "t.mat")
    text = transform_formats.read_affine(tmp_path / "t.txt")
    assert transform_formats.affine_format(tmp_path / "t.txt") == "itk"
    assert _largest_difference_mm(binary, text) < 1e-4  # antspyx writes float parameters
    point = np.array([15.0, -8.0, 22.0])  # LPS
    expected = np.array(transform.apply_to_point(point.tolist()))
    flip = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose((binary[:3, :3] @ (point * flip) + binary[:3, 3]) * flip, expected, atol=1e-4)



@pytest.mark.parametrize("seed", [0, 1])
def test_itk_mat_is_the_file_nitransforms_writes(tmp_path, seed):
    """Our ITK .mat (written without importing nitransforms) holds nitransforms' bytes, signed
    zeros included: a rotation by a right angle and the identity have exact zeros."""
    from nitransforms.io import itk

    quarter = np.eye(4)
    quarter[:3, :3] = rotation_matrix(np.radians([0.0, 0.0, 90.0]))
    for k, matrix in enumerate((_matrix(seed), np.eye(4), quarter)):
        transform_formats.write_affine(matrix, tmp_path / f"ours{k}.mat")
        itk.ITKLinearTransform.from_ras(matrix).to_filename(str(tmp_path / f"nitransforms{k}.mat"))
        assert (tmp_path / f"ours{k}.mat").read_bytes() == (tmp_path / f"nitransforms{k}.mat").read_bytes()

def test_fsl_warp_of_an_affine_is_nitransforms_flirt_matrix(images):
    """An affine written as an FSL relative warp equals, voxel for voxel, the displacement that
    nitransforms' FLIRT matrix gives in FSL's coordinates (two independent routes to FSL's frame)."""
    from nitransforms.io.fsl import FSLLinearTransform

    matrix = _matrix(6)
    world = transforms.world_points(FIXED_SHAPE, FIXED_AFFINE).reshape(3, -1)
    displacement = (matrix[:3, :3] @ world + matrix[:3, 3:] - world).reshape(3, *FIXED_SHAPE).astype(np.float32)
    warp = transform_formats.fsl_warp_image(displacement, FIXED_AFFINE, images["fixed"], images["moving"])
    assert warp.shape == FIXED_SHAPE + (3,) and int(warp.header["intent_code"]) == 2006
    flirt = FSLLinearTransform.from_ras(matrix, reference=nib.load(str(images["fixed"])),
                                        moving=nib.load(str(images["moving"]))).structarr["parameters"]
    frame = transform_formats.fsl_frame(FIXED_SHAPE, FIXED_AFFINE)
    index = transforms.voxel_grid(FIXED_SHAPE).reshape(3, -1)
    fixed_fsl = frame[:3, :3] @ index + frame[:3, 3:]
    to_moving_fsl = np.linalg.inv(flirt)  # FLIRT maps input (moving) FSL mm to reference FSL mm
    expected = to_moving_fsl[:3, :3] @ fixed_fsl + to_moving_fsl[:3, 3:] - fixed_fsl
    got = np.moveaxis(np.asarray(warp.dataobj), -1, 0).reshape(3, -1)
    assert np.abs(got - expected).max() < 1e-4  # float32 storage of values up to ~200 mm


def test_fsl_warp_round_trips(images):
    rng = np.random.default_rng(7)
    world = transforms.world_points(FIXED_SHAPE, FIXED_AFFINE)
    displacement = (4.0 * np.sin(world / 17.0 + rng.uniform(0, 6, (3, 1, 1, 1)))).astype(np.float32)
    warp = transform_formats.fsl_warp_image(displacement, FIXED_AFFINE, images["fixed"], images["moving"])
    back, affine = transform_formats.displacement_from_fsl_warp(warp, images["moving"])
    np.testing.assert_allclose(affine, FIXED_AFFINE)
    assert np.abs(back - displacement).max() < 1e-5


def test_fsl_and_lta_need_their_images(tmp_path):
    with pytest.raises(ValueError, match="pass fixed and moving"):
        transform_formats.write_affine(np.eye(4), tmp_path / "a.mat", fmt="fsl")


@pytest.mark.parametrize("content", [b"not a transform at all\n", b"\x00\x01garbage", b"1 0 0\n0 1 0\n"])
def test_unreadable_affines_name_the_file(tmp_path, content):
    path = tmp_path / "broken.txt"
    path.write_bytes(content)
    with pytest.raises(InvalidTransformFileError, match="broken.txt"):
        transform_formats.read_affine(path)
