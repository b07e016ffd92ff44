"""Registrar construction errors and the QC picture (no model needed)."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import Registrar, registrar
from smgic_rt.qc import picture as qc
from smgic_rt.io import make_nifti

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"backend must be one of \['auto', 'onnxruntime', 'tensorrt', 'torch'\], got 'cuda'"):
        Registrar(backend="cuda")


def test_unknown_device_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"device must be one of \['cpu', 'cuda'\], got 'gpu'"):
        Registrar(device="gpu")


def test_a_cuda_device_without_a_gpu_says_what_is_missing():
    from smgic_rt.geometry import ops

    if ops.cuda_available():
        pytest.skip("a GPU answers here")
    expected = "needs a CUDA GPU" if ops.build_info()["cuda"] else "needs smgic_rt._C built with CUDA"
    with pytest.raises(RuntimeError, match=expected):
        Registrar(device="cuda")


@pytest.mark.parametrize("kwargs, message", [
    ({"affine": "sometimes"}, "affine must be one of"),
    ({"refine": "maybe"}, "refine must be one of"),
    ({"network": "sometimes"}, "network must be one of"),
    ({"refine": 3}, "the refinement's budget is RefineOptions"),
])
def test_bad_stage_modes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Registrar(**kwargs)


@pytest.mark.skipif((registrar.DEFAULT_BUNDLE_PATH / "config.json").is_file(), reason="a default bundle is installed")
def test_stage_options_of_the_wrong_type():
    with pytest.raises(TypeError, match="affine_options must be a smgic_rt.methods.affine.AffineOptions, got str"):
        Registrar(affine_options="fast")
    with pytest.raises(TypeError, match="refine_options must be a smgic_rt.methods.refine.RefineOptions, got dict"):
        Registrar(refine_options={"iterations": (1, 1, 1)})


@pytest.mark.skipif((registrar.DEFAULT_BUNDLE_PATH / "config.json").is_file(), reason="a default bundle is installed")
def test_no_default_bundle_says_so():
    with pytest.raises(registrar.NoDefaultBundleError, match="no default model bundle is installed"):
        Registrar()


def test_bundle_of_wrong_type():
    with pytest.raises(TypeError, match="bundle must be a path, a Bundle or None, got int"):
        Registrar(42)


def test_checkerboard_alternates_blocks():
    first, second = np.zeros((8, 8, 8)), np.ones((8, 8, 8))
    board = qc.checkerboard(first, second, squares=2)
    assert board[0, 0, 0] == 0 and board[4, 0, 0] == 1 and board[4, 4, 0] == 0 and board[4, 4, 4] == 1
    assert board.mean() == 0.5


def test_qc_png_shows_every_panel(tmp_path):
    image = nib.load(str(ANATOMICAL))
    data = image.get_fdata().astype(np.float32)
    fixed = make_nifti(data, image.affine)
    # Moving in another orientation (LPS): the picture must still show it upright.
    flipped_affine = image.affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, -1, 0, data.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    moving = make_nifti(data[::-1, ::-1, :].copy(), flipped_affine)
    jacobian = make_nifti(np.linspace(0.5, 2.0, data.size).reshape(data.shape).astype(np.float32), image.affine)
    path = qc.save_qc_png(tmp_path / "qc.png", fixed, moving, fixed, jacobian, title="test")
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]
    import matplotlib.image

    picture = matplotlib.image.imread(str(path))
    assert picture.shape[0] > 600 and picture.shape[1] > 400
    # Five rows of panels: each horizontal fifth of the figure has non-background pixels.
    rows = np.array_split(picture[..., :3].mean(axis=2), 5, axis=0)
    assert all(np.std(row) > 0.05 for row in rows)
