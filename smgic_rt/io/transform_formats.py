"""Affines and displacement fields in other tools' files: ITK/ANTs, FSL, FreeSurfer.

Every affine here is one thing: a 4x4 RAS-mm matrix mapping fixed (reference) world points to
moving world points, ``moving = M @ fixed`` (our affine.mat, report.json's ``affine_matrix``,
nitransforms' convention). The files other tools write hold the same map in their own
coordinates; the codecs are nitransforms' (MATLAB v4 through scipy.io for ITK .mat):

=========  ===========================================  =========================================
format     file                                         read by
=========  ===========================================  =========================================
``itk``    ``.mat`` (binary) or ``.txt`` (Insight text)  antsApplyTransforms, ANTs, ITK, 3D Slicer
``fsl``    FLIRT ``.mat`` (4x4 text, FSL's scaled-voxel  flirt -applyxfm -init, applywarp --premat,
           coordinates of the two images)               convert_xfm
``lta``    FreeSurfer ``.lta`` (RAS2RAS, src = moving)   mri_vol2vol --lta, lta_convert, freeview
``ras``    4x4 text, our RAS fixed -> moving matrix     numpy.loadtxt
=========  ===========================================  =========================================

FSL and FreeSurfer matrices depend on the two images' grids, so reading or writing them needs
`fixed` and `moving` (paths, nibabel images or `io.Volume`s). A displacement field for FSL
(`fsl_warp_image`) is a relative ``applywarp --rel`` warp: FSL's scaled-voxel millimetres on the
fixed grid, written by us from the per-image FSL frame (`fsl_frame`), which the tests tie to
nitransforms' FLIRT conversion; nitransforms' own FSL field export only flips x, which holds
only for two images whose FSL frames coincide.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import io
from . import atomic
from . import InvalidImageError

__all__ = ["AFFINE_FORMATS", "InvalidTransformFileError", "affine_format", "read_affine", "write_affine",
           "fsl_frame", "fsl_warp_image", "displacement_from_fsl_warp", "initial_matrix", "export_registration"]

AFFINE_FORMATS = ("itk", "fsl", "lta", "ras")
_FSL_WARP_INTENT = 2006  # NIFTI_INTENT "fnirt disp field": what fnirt writes and applywarp reads


class InvalidTransformFileError(InvalidImageError):
    """An affine transform file that cannot be read as the format asked for (or detected); the
    message names the file, the format and what was wrong."""


def _text_head(path: Path) -> str | None:
    """The first kilobyte as text, or None for a binary file."""
    head = path.read_bytes()[:1024]
    try:
        return head.decode("ascii")
    except UnicodeDecodeError:
        return None


def affine_format(path, fmt: str | None = None) -> str:
    """The format of an affine file: `fmt` when given, else from its content (binary: ITK
    .mat; ``#Insight Transform``: ITK text; ``type = ...``: LTA; a 4x4 text matrix: FSL for a
    ``.mat`` name, as FLIRT writes, our RAS matrix otherwise)."""
    if fmt is not None:
        if fmt not in AFFINE_FORMATS:
            raise ValueError(f"affine format must be one of {list(AFFINE_FORMATS)}, got {fmt!r}")
        return fmt
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"affine transform: no such file: '{path}'")
    head = _text_head(path)
    if head is None:
        return "itk"
    lines = [line.split("#")[0].strip() for line in head.splitlines()]
    if head.lstrip().startswith("#Insight Transform") or any(line.startswith("Transform:") for line in lines):
        return "itk"
    if any(line.startswith("type") and "=" in line for line in lines):
        return "lta"
    return "fsl" if path.suffix.lower() == ".mat" else "ras"


class _Grid:
    """What nitransforms reads of an image (shape, affine), without voxels."""

    def __init__(self, shape, affine):
        self.shape = tuple(int(n) for n in shape[:3])
        self.affine = np.asarray(affine, dtype=np.float64)

    @property
    def file_map(self):  # nitransforms' LTA writer looks for a file name here
        raise AttributeError("no file")


def _grid(image, name: str):
    """The `_Grid` (shape, affine) of a path (its header alone), nibabel image or io.Volume."""
    if image is None:
        return None
    if isinstance(image, io.Volume):
        image = _Grid(image.shape, image.affine)
    elif isinstance(image, (str, os.PathLike)):  # the header alone (io.open_image would read the voxels)
        path = Path(os.fspath(image)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such file: '{path}'")
        try:
            loaded = nib.load(str(path))
        except Exception as error:  # noqa: BLE001  (nibabel raises several unrelated types)
            raise InvalidImageError(f"{name}: could not read '{path}' as an image: {type(error).__name__}: {error}") from None
        io.check_header(loaded, name, str(path))
        image = loaded
    elif not isinstance(image, nib.spatialimages.SpatialImage):
        raise TypeError(f"{name} must be a path, a nibabel image or an io.Volume, got {type(image).__name__}")
    return _Grid(image.shape, image.affine)


def _need(images: dict, fmt: str, path) -> None:
    missing = [name for name, image in images.items() if image is None]
    if missing:
        raise ValueError(f"a {fmt.upper()} affine ('{path}') is written in the coordinates of the two images it "
                         f"relates: pass {' and '.join(missing)}")


def _check_matrix(matrix, where: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise InvalidTransformFileError(f"{where}: expected a finite 4x4 affine with last row 0 0 0 1, got {matrix.tolist()}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise InvalidTransformFileError(f"{where}: the affine is singular (det {np.linalg.det(matrix[:3, :3]):.3g})")
    return matrix


def _lta_matrix_float64(text: str, parsed) -> None:
    """nitransforms parses an LTA's matrix as float32 (1e-5 mm at 100 mm); the four lines after
    ``1 4 4`` hold it to 16 digits, so re-read them in float64."""
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    start = lines.index("1 4 4") + 1
    parsed.structarr["m_L"] = np.array([[float(v) for v in line.split()] for line in lines[start:start + 4]])


def read_affine(path, *, fmt: str | None = None, fixed=None, moving=None) -> np.ndarray:
    """The 4x4 RAS fixed -> moving matrix in an affine file (see the module's table).

    FSL FLIRT matrices need `fixed` (FLIRT's ``-ref``) and `moving` (its ``-in``); LTA files
    carry their grids. Raises FileNotFoundError, InvalidTransformFileError naming the file.
    """
    from nitransforms.io import fsl, itk, lta

    path = Path(os.fspath(path)).expanduser()
    fmt = affine_format(path, fmt)
    where = f"affine transform '{path}' ({fmt})"
    if not path.is_file():
        raise FileNotFoundError(f"affine transform: no such file: '{path}'")
    try:
        if fmt == "itk":
            matrix = itk.ITKLinearTransform.from_filename(str(path)).to_ras()
        elif fmt == "fsl":
            _need({"fixed": fixed, "moving": moving}, fmt, path)
            matrix = fsl.FSLLinearTransform.from_filename(str(path)).to_ras(
                reference=_grid(fixed, "fixed image"), moving=_grid(moving, "moving image"))
        elif fmt == "lta":
            text = path.read_text()
            parsed = lta.FSLinearTransformArray.from_string(text)
            if len(parsed.xforms) != 1:
                raise InvalidTransformFileError(f"{where}: holds {len(parsed.xforms)} transforms, expected 1")
            _lta_matrix_float64(text, parsed.xforms[0])
            matrix = parsed.xforms[0].to_ras()
        else:
            matrix = np.loadtxt(str(path), dtype=np.float64, comments="#")
    except (InvalidTransformFileError, FileNotFoundError, TypeError):
        raise
    except Exception as error:  # noqa: BLE001  (nitransforms/scipy/numpy raise many kinds)
        raise InvalidTransformFileError(f"{where}: cannot be read: {type(error).__name__}: {error}") from None
    return _check_matrix(matrix, where)


_LPS = np.diag([-1, -1, 1, 1])


def _write_itk_mat(matrix: np.ndarray, path) -> None:
    """The binary ITK .mat of a RAS fixed -> moving `matrix`, byte for byte what nitransforms'
    ``ITKLinearTransform.from_ras(matrix).to_filename`` writes (tests/test_transform_formats.py),
    through scipy.io alone: importing nitransforms (h5py, asyncio, scipy.ndimage) is most of what
    writing every registration's affine.mat would cost."""
    from scipy.io import savemat

    parameters = _LPS.dot(matrix.dot(_LPS))  # nitransforms' expression: the same signed zeros
    savemat(str(path), {"AffineTransform_double_3_3": np.hstack((parameters[:3, :3].reshape(-1), parameters[:3, 3]))[:, None],
                        "fixed": np.zeros((3, 1), dtype="f4")}, format="4")


def write_affine(matrix, path, *, fmt: str | None = None, fixed=None, moving=None) -> Path:
    """Write the 4x4 RAS fixed -> moving `matrix` as `fmt` (default: from the name: ``.lta``
    LTA, ``.mat`` ITK, ``.txt`` our RAS text), atomically. FSL and LTA need `fixed` and
    `moving` (the LTA's src is the moving image, dst the fixed one, as mri_robust_register
    writes ``--mov`` and ``--dst``)."""
    path = Path(os.fspath(path))
    if fmt is None:
        fmt = {".lta": "lta", ".mat": "itk", ".txt": "ras"}.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the affine format from '{path.name}': pass fmt= one of {list(AFFINE_FORMATS)}")
    if fmt not in AFFINE_FORMATS:
        raise ValueError(f"affine format must be one of {list(AFFINE_FORMATS)}, got {fmt!r}")
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"matrix must be a finite 4x4 matrix, got shape {matrix.shape}")
    if fmt == "itk":
        with atomic.atomic_path(path, suffix=".mat") as temp:
            _write_itk_mat(matrix, temp)
        return path
    if fmt == "ras":
        return atomic.write_text(path, "\n".join(" ".join(f"{v:.17g}" for v in row) for row in matrix) + "\n")
    from nitransforms.io import fsl, lta

    _need({"fixed": fixed, "moving": moving}, fmt, path)
    fixed_grid, moving_grid = _grid(fixed, "fixed image"), _grid(moving, "moving image")
    if fmt == "fsl":
        text = fsl.FSLLinearTransform.from_ras(matrix, reference=fixed_grid, moving=moving_grid).to_string()
    else:
        # nitransforms names its `reference` the src volume: the moving image is LTA's src.
        text = lta.FSLinearTransform.from_ras(matrix, reference=moving_grid, moving=fixed_grid).to_string()
    return atomic.write_text(path, text)


# ---------------------------------------------------------------------------------------------
# FSL warps


def fsl_frame(shape, affine) -> np.ndarray:
    """4x4 voxel index -> FSL's scaled-voxel mm of an image: voxel sizes times the index, with x
    reversed when the affine's determinant is positive (FSL's radiological convention)."""
    affine = np.asarray(affine, dtype=np.float64)
    frame = np.diag([*io.voxel_sizes(affine), 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        frame[0, 0] = -frame[0, 0]
        frame[0, 3] = (int(shape[0]) - 1) * -frame[0, 0]
    return frame


def _fsl_maps(fixed_grid, moving_grid):
    """(fixed voxel -> fixed FSL mm, moving world -> moving FSL mm)."""
    to_fixed_fsl = fsl_frame(fixed_grid.shape, fixed_grid.affine)
    moving_world_to_fsl = fsl_frame(moving_grid.shape, moving_grid.affine) @ np.linalg.inv(moving_grid.affine)
    return to_fixed_fsl, moving_world_to_fsl


def fsl_warp_image(displacement_ras_mm, field_affine, fixed, moving) -> nib.Nifti1Image:
    """An FSL relative warp (``applywarp --ref fixed --in moving --warp W --rel``) from our RAS
    fixed -> moving displacement (3, X, Y, Z) on `field_affine`'s grid.

    FSL reads warps on the reference grid: the field is re-read at the fixed image's voxels
    (trilinear, identity outside it), and each voxel holds the moving image's FSL coordinate of
    ``p + d(p)`` minus the fixed image's FSL coordinate of ``p``; 4-D (X, Y, Z, 3) float32,
    intent 2006 (FNIRT displacement field), the fixed image's affine.
    """
    from ..geometry import transforms

    fixed_grid, moving_grid = _grid(fixed, "fixed image"), _grid(moving, "moving image")
    displacement = transforms.displacement_on_grid(np.asarray(displacement_ras_mm), field_affine, fixed_grid.shape,
                                                   fixed_grid.affine)
    to_fixed_fsl, moving_world_to_fsl = _fsl_maps(fixed_grid, moving_grid)
    index = transforms.voxel_grid(fixed_grid.shape).reshape(3, -1)
    world = fixed_grid.affine[:3, :3] @ index + fixed_grid.affine[:3, 3:]
    mapped = world + displacement.reshape(3, -1).astype(np.float64)
    fsl_delta = (moving_world_to_fsl[:3, :3] @ mapped + moving_world_to_fsl[:3, 3:]
                 - (to_fixed_fsl[:3, :3] @ index + to_fixed_fsl[:3, 3:]))
    data = np.ascontiguousarray(np.moveaxis(fsl_delta.reshape(3, *fixed_grid.shape), 0, -1), dtype=np.float32)
    image = io.make_nifti(data, fixed_grid.affine)
    image.header["intent_code"] = _FSL_WARP_INTENT
    image.header.set_xyzt_units("mm")
    return image


def displacement_from_fsl_warp(warp, moving) -> tuple[np.ndarray, np.ndarray]:
    """(RAS-mm displacement (3, X, Y, Z) float32, affine) from an FSL relative warp (path or
    image, on the fixed grid) and the moving image it reads from: `fsl_warp_image` reversed."""
    image = io.open_image(warp, "FSL warp")[0] if isinstance(warp, (str, os.PathLike)) else warp
    if len(image.shape) != 4 or image.shape[3] != 3:
        raise InvalidTransformFileError(f"FSL warp: expected a 4-D image of 3 volumes (X, Y, Z, 3), got shape {image.shape}")
    fixed_grid, moving_grid = _Grid(image.shape, image.affine), _grid(moving, "moving image")
    to_fixed_fsl, moving_world_to_fsl = _fsl_maps(fixed_grid, moving_grid)
    from ..geometry import transforms

    index = transforms.voxel_grid(fixed_grid.shape).reshape(3, -1)
    values = np.moveaxis(np.asarray(image.dataobj, dtype=np.float64), -1, 0).reshape(3, -1)
    moving_fsl = to_fixed_fsl[:3, :3] @ index + to_fixed_fsl[:3, 3:] + values
    to_world = np.linalg.inv(moving_world_to_fsl)
    mapped = to_world[:3, :3] @ moving_fsl + to_world[:3, 3:]
    world = fixed_grid.affine[:3, :3] @ index + fixed_grid.affine[:3, 3:]
    return (mapped - world).reshape(3, *fixed_grid.shape).astype(np.float32), fixed_grid.affine


def initial_matrix(initial, fixed, moving) -> np.ndarray:
    """The 4x4 RAS fixed -> moving matrix of a registration's initial transform: a matrix, an
    affine file (its format detected; `affine_format`) or ``(path, format)``; FSL matrices are
    read against `fixed` and `moving` (FLIRT's ``-ref`` and ``-in``)."""
    if isinstance(initial, tuple):
        path, fmt = initial
        return read_affine(path, fmt=fmt, fixed=fixed, moving=moving)
    if isinstance(initial, (str, os.PathLike)):
        return read_affine(initial, fixed=fixed, moving=moving)
    return _check_matrix(initial, "initial transform")


def export_registration(result, folder, formats, write_image) -> dict:
    """Write a `RegistrationResult`'s transforms for other tools into `folder`; returns the
    report's ``files`` entries. "fsl": warp_fsl.nii.gz (fixed -> moving, on the fixed grid) and
    inverse_warp_fsl.nii.gz (on the moving grid), both ``applywarp --rel`` warps, and
    affine_flirt.mat; "lta": affine.lta (FreeSurfer). `write_image(name, image)` writes an image."""
    folder = Path(os.fspath(folder))
    files = {}
    if "fsl" in formats:
        write_image("warp_fsl.nii.gz", fsl_warp_image(*result.forward_field, result.fixed, result.moving))
        write_image("inverse_warp_fsl.nii.gz", fsl_warp_image(*result.inverse_field, result.moving, result.fixed))
    for fmt, key, name in (("fsl", "affine_flirt", "affine_flirt.mat"), ("lta", "affine_lta", "affine.lta")):
        if fmt in formats and result.affine_matrix is not None:
            write_affine(result.affine_matrix, folder / name, fmt=fmt, fixed=result.fixed, moving=result.moving)
            files[key] = name
    return files
