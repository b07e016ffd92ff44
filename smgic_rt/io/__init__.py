"""Loading, validation and atomic writing of the images smgic_rt touches.

Every image that enters the runtime passes through `load_volume` (intensity images),
`load_label_map` (integer label maps) or `load_mask`; each accepts a path (.nii, .nii.gz,
.mgz), a nibabel image or an ``(array, affine)`` pair and returns a `Volume` with the data
as the NIfTI stores it (voxel-index order, any orientation) and its voxel->RAS+ mm affine.
Bad input raises `InvalidImageError` (a ValueError) or FileNotFoundError whose message names
the argument, what was expected and what came. A file's header is checked before its voxels
are read (datatype, claimed size, truncation, qform/sform agreement), so a broken header fails
at once with what it claims instead of exhausting memory or returning garbage.

Which affine a NIfTI file gets: nibabel's (the sform when ``sform_code > 0``, else the qform).
ITK/ANTs (ITK 5.1+, ANTs 2.3.5+) take the sform too unless it is not a rotation times the
voxel sizes, or its code is not "scanner" while the qform's is set and the two disagree; then
they take the qform. Where the two rules would place the same file differently (they disagree
by more than `QFORM_SFORM_TOLERANCE_MM`), the file is refused, since our outputs must mean the
same thing to ANTs; where both take the sform but the qform disagrees, a `HeaderWarning`
says by how much (older tools read the qform).

Writers never leave half-written files: they write into a temporary file (or folder) beside
the target and rename it into place.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import io as _stdio
import logging
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from . import atomic

__all__ = [
    "InvalidImageError",
    "OutputExistsError",
    "HeaderWarning",
    "Volume",
    "load_volume",
    "load_label_map",
    "load_for_resampling",
    "load_mask",
    "check_overlap",
    "overlap_fraction",
    "world_box",
    "format_world_box",
    "check_affine",
    "reversed_axes",
    "c_ordered",
    "fortran_ordered",
    "open_image",
    "check_header",
    "read_voxels",
    "voxel_sizes",
    "save_image_atomic",
    "MIN_VOXEL_SIZE_MM",
    "MAX_VOXEL_SIZE_MM",
    "MIN_AXIS_VOXELS",
    "MAX_VOXELS",
    "MIN_REGISTRATION_EXTENT_MM",
    "MIN_OVERLAP_FRACTION",
    "QFORM_SFORM_TOLERANCE_MM",
]

logger = logging.getLogger(__name__)

# Brain MRI voxels are 0.1-10 mm in practice; outside these bounds the header is broken
# (e.g. a zero or 1000 mm pixdim), and registering it would silently produce garbage.
MIN_VOXEL_SIZE_MM = 0.05
MAX_VOXEL_SIZE_MM = 20.0
# Fewer voxels than this along an axis is a 2-D slice or a stack of slices, not a volume.
MIN_AXIS_VOXELS = 4
# 2^30 voxels (4 GiB as float32) is far beyond any brain MRI (a 0.5 mm template is 5e7); a header
# claiming more is broken, and reading it would exhaust memory before saying anything useful.
MAX_VOXELS = 2 ** 30
# An image to register must span at least this much along each axis: the affine stage's coarsest
# grid has 8 mm voxels and needs a few of them; a smaller field of view holds no brain.
MIN_REGISTRATION_EXTENT_MM = 32.0
# A label map or mask must have at least this fraction of its labelled voxels inside the field of
# view of the image it belongs to; less means it belongs to another image (or another space).
MIN_OVERLAP_FRACTION = 0.5
# float32 header fields round a 256 mm field of view to about 1e-3 mm; beyond this the qform and
# sform describe different placements.
QFORM_SFORM_TOLERANCE_MM = 0.01

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")


class InvalidImageError(ValueError):
    """An input image (or label map, or mask) cannot be used; the message says why."""


class OutputExistsError(FileExistsError):
    """The output already exists and overwriting was not requested."""


class HeaderWarning(UserWarning):
    """A header that we can read unambiguously but that other tools may read differently."""


@dataclass(frozen=True)
class Volume:
    """A 3-D array with its voxel-index -> RAS+ millimetre affine (nibabel convention)."""

    data: np.ndarray
    affine: np.ndarray
    name: str = "image"
    source: str | None = None  # the path it was read from, if any

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    def to_nifti(self, dtype=None) -> nib.Nifti1Image:
        data = self.data if dtype is None else self.data.astype(dtype)
        return make_nifti(data, self.affine)


def make_nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI-1 image whose sform and qform both carry `affine` (code 1, scanner); 64-bit
    integer data (label maps beyond int32) is written as such."""
    data = np.asarray(data)
    wide = data.dtype in (np.dtype(np.int64), np.dtype(np.uint64))
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64), dtype=data.dtype if wide else None)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm (column norms of the 3x3 part of the affine)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


_GZIP_HINT = " (a truncated or damaged .gz file?)"


def _describe_error(error: BaseException) -> str:
    """`TypeName: message`, with a reason when the message is empty (MemoryError has none)."""
    text = str(error)
    if isinstance(error, MemoryError):
        text = text or "not enough memory to hold the voxel data"
    elif isinstance(error, (EOFError, zlib.error)):
        text = f"{text or 'unexpected end of data'} (the file is truncated or damaged)"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def open_image(path_like, name: str):
    """Open an image file (header only; voxels stay on disk) and check its header.

    Returns ``(nibabel image, path string)``. Raises FileNotFoundError or InvalidImageError
    naming `name` and the file: unreadable or truncated file, complex or non-numeric datatype,
    an implausible claimed size, or a qform/sform pair that ITK and nibabel would read
    differently (see the module docstring).
    """
    path = Path(os.fspath(path_like)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file: '{path}'")
    if path.is_dir():
        raise InvalidImageError(f"{name}: expected an image file (.nii, .nii.gz, .mgz), got a directory '{path}'")
    try:
        image = _read_nifti_gz(path) if path.name.lower().endswith(".nii.gz") else None
        if image is None:
            image = nib.load(str(path))
    except Exception as error:  # nibabel raises several unrelated types for unreadable files
        hint = _GZIP_HINT if path.name.lower().endswith(".gz") else ""
        raise InvalidImageError(
            f"{name}: could not read '{path}' as an image (expected .nii, .nii.gz or .mgz){hint}: "
            f"{_describe_error(error)}"
        ) from None
    if not hasattr(image, "affine") or image.affine is None or len(image.shape) < 2:
        raise InvalidImageError(f"{name}: '{path}' is not a volumetric image (got {type(image).__name__})")
    check_header(image, name, str(path))
    return image, str(path)


def _read_nifti_gz(path: Path):
    """A .nii.gz decompressed whole with ISA-L and parsed by nibabel, or None when it holds no
    NIfTI-1 or NIfTI-2 image (nibabel's own loader then says what it is).

    nibabel streams a .nii.gz through zlib in small reads: for a 1 mm float32 image that took
    0.15 s, ISA-L 0.03 s. The voxels then come from memory, so damage anywhere in the file
    (a truncated download) is found here, before any work.
    """
    from isal import igzip

    raw = igzip.decompress(path.read_bytes())
    for image_class in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return image_class.from_bytes(raw)
        except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, ValueError):
            continue
    return None


def _where(source) -> str:
    return f" '{source}'" if source else ""


def check_header(image, name: str, source=None, *, file_forms: bool = True) -> None:
    """Refuse, before any voxel is read, what the header says cannot be a usable image.

    `file_forms` also checks that the qform and sform cannot be read differently by ITK/ANTs
    and nibabel (see the module docstring): wanted for files, not for an image handed over in
    memory, whose nibabel affine is what its caller means.
    """
    where = _where(source)
    header = getattr(image, "header", None)
    try:
        dtype = np.dtype(header.get_data_dtype()) if header is not None else np.dtype(image.get_data_dtype())
    except Exception as error:
        raise InvalidImageError(f"{name}{where}: the header's datatype cannot be read: {_describe_error(error)}") from None
    if dtype.kind == "c":
        raise InvalidImageError(
            f"{name}{where}: voxels are complex ({dtype}); expected real values (magnitude images): "
            "store the magnitude (abs) rather than letting the imaginary part be dropped"
        )
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InvalidImageError(f"{name}{where}: voxels must be real numbers, the header says datatype {dtype}")
    shape = tuple(int(n) for n in image.shape)
    if any(n < 1 for n in shape):
        raise InvalidImageError(f"{name}{where}: the header claims shape {shape}; every axis needs at least 1 voxel")
    count = int(np.prod(shape, dtype=object))
    if count > MAX_VOXELS:
        raise InvalidImageError(
            f"{name}{where}: the header claims {' x '.join(map(str, shape))} = {count:.3g} voxels "
            f"({count * dtype.itemsize / 2**30:.3g} GiB), more than the {MAX_VOXELS:.3g} this reader accepts "
            "(a broken header?)"
        )
    _check_not_truncated(image, name, source, count * dtype.itemsize)
    if isinstance(header, nib.nifti1.Nifti1Header):
        _check_spatial_units(header, name, source)
        if not file_forms:
            return
        try:
            _check_qform_sform(header, shape, name, source)
        except InvalidImageError:
            raise
        except Exception as error:  # nibabel refuses some stored quaternions
            raise InvalidImageError(f"{name}{where}: the header's qform or sform cannot be read: {_describe_error(error)}") from None


# NIfTI xyz unit codes (the low 3 bits of xyzt_units) that ITK/ANTs scale to mm while nibabel
# reads the numbers as mm: the same file would mean two sizes.
_SCALED_SPATIAL_UNITS = {1: "meter", 3: "micron"}


def _check_spatial_units(header, name: str, source) -> None:
    code = int(header["xyzt_units"]) & 0x07
    if code in _SCALED_SPATIAL_UNITS:
        raise InvalidImageError(
            f"{name}{_where(source)}: the header's spatial unit is {_SCALED_SPATIAL_UNITS[code]}; ITK/ANTs scale such "
            "voxel sizes to mm while nibabel reads them as mm, so tools would disagree on the image's size: rewrite it "
            "in mm (xyzt_units 'mm')"
        )


# Deflate (gzip, .mgz) cannot expand data by more than this: a 258-byte match costs at least
# 2 bits, so compressed bytes times this bounds what a .gz can hold.
DEFLATE_MAX_RATIO = 1032


def _check_not_truncated(image, name: str, source, data_bytes: int) -> None:
    """A file must be able to hold every byte its header promises (cheap: one stat): exactly for
    an uncompressed file, within deflate's largest ratio for a gzip one."""
    lower = str(source).lower() if source else ""
    if lower.endswith((".gz", ".mgz")):
        try:
            compressed = os.path.getsize(source)
        except OSError:
            return
        if data_bytes > compressed * DEFLATE_MAX_RATIO:
            raise InvalidImageError(
                f"{name} '{source}': the header promises {data_bytes} bytes of voxel data, more than a "
                f"{compressed}-byte gzip file can hold (at most {compressed * DEFLATE_MAX_RATIO}); a broken header "
                "or a truncated file"
            )
        return
    if not source or lower.endswith((".bz2", ".zst")):
        return  # the size of compressed data is unknown until it is read; read errors say it then
    offset = getattr(getattr(image, "dataobj", None), "offset", None)
    if offset is None:
        return
    try:
        size = os.path.getsize(image.get_filename() or source)
    except OSError:
        return
    needed = int(offset) + data_bytes
    if size < needed:
        raise InvalidImageError(
            f"{name} '{source}': the file is truncated: its header promises {data_bytes} bytes of voxel data "
            f"from byte {int(offset)} ({needed} bytes in all), the file holds {size}"
        )


def voxel_corners(shape, *, faces: bool = True) -> np.ndarray:
    """Homogeneous voxel coordinates (8, 4) of a grid's corners: the outer faces of its corner
    voxels (`faces`, the field of view), or their centres."""
    shape = (tuple(int(n) for n in shape[:3]) + (1, 1, 1))[:3]  # a 2-D image is one slice thick
    edges = [(-0.5, n - 0.5) if faces else (0, n - 1) for n in shape]
    return np.array([[i, j, k, 1.0] for i in edges[0] for j in edges[1] for k in edges[2]])


def _is_rotation_times_pixdim(sform: np.ndarray, pixdim) -> bool:
    """ITK's test for using a sform: its columns, divided by pixdim, are orthonormal."""
    spacing = np.abs(np.asarray(pixdim[1:4], dtype=np.float64))
    if np.any(spacing <= 0):
        return False
    rotation = sform[:3, :3] / spacing
    return bool(np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-4))


def _check_qform_sform(header, shape, name: str, source) -> None:
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if qform is None or sform is None or not qcode or not scode:
        return  # only one of them is set: every reader uses that one
    if not (np.all(np.isfinite(qform)) and np.all(np.isfinite(sform))):
        return  # check_affine refuses the non-finite one that is used
    corners = voxel_corners(shape)
    difference_mm = float(np.max(np.linalg.norm((corners @ (sform - qform).T)[:, :3], axis=1)))
    if difference_mm <= QFORM_SFORM_TOLERANCE_MM:
        return
    where = _where(source)
    itk_uses_sform = _is_rotation_times_pixdim(sform, header["pixdim"]) and int(scode) == 1
    if not itk_uses_sform:
        reason = ("its sform is not a rotation times the voxel sizes" if not _is_rotation_times_pixdim(sform, header["pixdim"])
                  else f"its sform_code is {int(scode)}, not 1 (scanner)")
        raise InvalidImageError(
            f"{name}{where}: the header's qform and sform disagree by up to {difference_mm:.3g} mm over the field of "
            f"view, and ITK/ANTs would use the qform ({reason}) where nibabel uses the sform; fix the header "
            "(e.g. set both to the intended affine) so that every tool places the image alike"
        )
    warnings.warn(
        f"{name}{where}: the header's qform and sform disagree by up to {difference_mm:.3g} mm over the field of view; "
        f"using the sform (sform_code {int(scode)}), as nibabel and ITK/ANTs (ITK 5.1+, ANTs 2.3.5+) do; tools that "
        "read the qform will place this image elsewhere",
        HeaderWarning,
        stacklevel=3,
    )


def image_affine(image, name: str = "image", source=None) -> np.ndarray:
    """The voxel -> RAS+ mm affine of a nibabel image as ITK/ANTs read it.

    That is nibabel's affine, except for a NIfTI header with neither a qform nor an sform
    (both codes 0): nibabel then makes up a centred, x-flipped affine, while ITK/ANTs take the
    voxel sizes alone (origin at voxel 0, LPS-aligned axes), so our outputs would not line up
    with the input in ITK/ANTs. We read it as ITK does and warn (HeaderWarning).
    """
    header = getattr(image, "header", None)
    if isinstance(header, nib.nifti1.Nifti1Header) and not int(header["qform_code"]) and not int(header["sform_code"]):
        sizes = [abs(float(v)) or 1.0 for v in header["pixdim"][1:4]]
        warnings.warn(
            f"{name}{_where(source)}: the header has neither a qform nor an sform (both codes 0); read as ITK/ANTs "
            f"read it: voxel sizes {sizes} mm, origin at voxel 0, axes along LPS (nibabel alone would centre and "
            "flip it); set a qform or sform to place the image in the world",
            HeaderWarning,
            stacklevel=3,
        )
        return np.diag([-sizes[0], -sizes[1], sizes[2], 1.0])
    return np.asarray(image.affine, dtype=np.float64)


def _as_array_and_affine(image, name: str):
    """(data, affine, source) from a path, a nibabel image or an (array, affine) pair."""
    if isinstance(image, Volume):
        return image.data, image.affine, image.source
    if isinstance(image, (str, os.PathLike)):
        loaded, source = open_image(image, name)
        return read_voxels(loaded, name, source), image_affine(loaded, name, source), source
    if isinstance(image, nib.spatialimages.SpatialImage):
        check_header(image, name, image.get_filename(), file_forms=False)
        source = image.get_filename()
        return read_voxels(image, name, source), image_affine(image, name, source), source
    if isinstance(image, (tuple, list)) and len(image) == 2:
        data, affine = image
        try:
            data = np.asarray(data)
            affine = np.asarray(affine, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InvalidImageError(f"{name}: expected an (array, 4x4 affine) pair, got values that are not arrays: {error}") from None
        if data.dtype.kind == "c":
            raise InvalidImageError(f"{name}: voxels are complex ({data.dtype}); expected real values")
        return data, affine, None
    raise InvalidImageError(
        f"{name}: expected a path (.nii, .nii.gz, .mgz), a nibabel image or an (array, affine) pair, "
        f"got {type(image).__name__}"
    )


def read_voxels(image, name: str, source=None) -> np.ndarray:
    """The voxel array of a header-checked nibabel image, scaled by scl_slope/scl_inter.

    Data without scaling stays as stored (integer labels exact, float32 not widened); scaled
    data becomes float64. The file is read once. A read that fails (truncated or damaged file,
    no memory) raises InvalidImageError naming the file.
    """
    try:
        proxy = image.dataobj
        scaled = hasattr(proxy, "slope") and (proxy.slope != 1 or proxy.inter != 0)
        data = image.get_fdata(dtype=np.float64) if scaled else np.asanyarray(proxy)
    except Exception as error:  # zlib, EOF, OSError, MemoryError, ValueError from nibabel's reshape
        hint = _GZIP_HINT if source and str(source).lower().endswith(".gz") and not isinstance(error, MemoryError) else ""
        raise InvalidImageError(
            f"{name}: could not read the voxel data{_where(source)}{hint}: {_describe_error(error)}"
        ) from None
    return np.asarray(data)


def _squeeze_to_3d(data: np.ndarray, name: str) -> np.ndarray:
    shape = data.shape
    # Trailing singleton axes (X, Y, Z, 1) are common in NIfTI files and carry no data.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        kind = "2-D" if data.ndim == 2 else f"{data.ndim}-D"
        raise InvalidImageError(f"{name} must be a 3-D volume, got a {kind} image of shape {shape}")
    if min(data.shape) < MIN_AXIS_VOXELS:
        raise InvalidImageError(
            f"{name} must be a 3-D volume with at least {MIN_AXIS_VOXELS} voxels along each axis, "
            f"got shape {shape} (a 2-D slice or a thin slab?)"
        )
    return data


def check_affine(affine: np.ndarray, name: str) -> np.ndarray:
    """Refuse an affine that is not a finite, invertible 4x4 voxel -> mm map with voxel sizes in
    [MIN_VOXEL_SIZE_MM, MAX_VOXEL_SIZE_MM]; returns it as float64."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InvalidImageError(f"{name}: affine must be 4x4, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise InvalidImageError(f"{name}: affine has non-finite entries: {affine.tolist()}")
    if not np.allclose(affine[3], [0, 0, 0, 1]):
        raise InvalidImageError(f"{name}: affine's last row must be [0, 0, 0, 1], got {affine[3].tolist()}")
    sizes = voxel_sizes(affine)
    if np.any(sizes < MIN_VOXEL_SIZE_MM) or np.any(sizes > MAX_VOXEL_SIZE_MM):
        raise InvalidImageError(
            f"{name}: voxel sizes must lie in [{MIN_VOXEL_SIZE_MM}, {MAX_VOXEL_SIZE_MM}] mm, "
            f"got {np.round(sizes, 6).tolist()} mm (broken header?)"
        )
    # A degenerate (sheared flat) 3x3 part has tiny determinant relative to the voxel sizes.
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(sizes)):
        raise InvalidImageError(f"{name}: affine is singular (voxel axes are parallel): {affine[:3, :3].tolist()}")
    return affine


def reversed_axes(array: np.ndarray, dtype=None, *, out: np.ndarray | None = None) -> np.ndarray:
    """``array.transpose(2, 1, 0)`` (3-D) as a new C-contiguous array of `dtype` (default: its own),
    or written into `out` (C-contiguous, that shape).

    A NIfTI file holds its voxels in Fortran order, our arrays are C-ordered: reading and writing
    an image turns one into the other. numpy's own transposing copy of a grid whose sizes are
    powers of two (a 256^3 conformed image) hits the same cache sets with every strided read;
    `_C.reverse_axes` moves small tiles through a buffer instead (on the calling thread's OpenMP
    threads, `smgic_rt.geometry.ops.cpu_threads`), for integers and floats of native byte order
    into their own type or float32; anything else goes one plane of the middle axis at a time
    through numpy.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"reversed_axes needs a 3-D array, got shape {array.shape}")
    first, middle, last = array.shape
    if out is None:
        out = np.empty((last, middle, first), dtype=array.dtype if dtype is None else dtype)
    elif out.shape != (last, middle, first) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous array of shape {(last, middle, first)}, got {out.shape}")
    if _compiled_reversal(array, out):
        return out
    plane = np.empty((first, last), dtype=out.dtype)
    for j in range(middle):
        np.copyto(plane, array[:, j, :], casting="unsafe")
        out[:, j, :] = plane.T
    return out


def _compiled_reversal(array: np.ndarray, out: np.ndarray) -> bool:
    """Whether `_C.reverse_axes` took the copy (the types, byte order and memory it accepts)."""
    if array.dtype.kind == "b" and out.dtype == np.float32:
        array = array.view(np.uint8)  # numpy's booleans are the bytes 0 and 1
    kinds_ok = array.dtype.kind in "iuf" and out.dtype.kind in "iuf" and array.dtype.itemsize in (1, 2, 4, 8)
    if not (kinds_ok and array.dtype.isnative and out.dtype.isnative and out.flags.writeable
            and (out.dtype == array.dtype or out.dtype == np.float32) and array.dtype != np.float16
            and array.flags.aligned and out.flags.aligned and array.size
            and all(stride % array.itemsize == 0 for stride in array.strides)
            and not np.may_share_memory(array, out)):
        return False
    from .. import _C

    _C.reverse_axes(array, out)
    return True


def c_ordered(data: np.ndarray, dtype=None) -> np.ndarray:
    """`data` as a C-contiguous array of `dtype` (default: its own); a Fortran-ordered 3-D array
    (the voxels of a NIfTI file) through `reversed_axes`, anything else as numpy does it."""
    if data.ndim == 3 and data.flags.f_contiguous and not data.flags.c_contiguous:
        return reversed_axes(data.T, dtype)
    return np.ascontiguousarray(data, dtype=dtype)


def fortran_ordered(data: np.ndarray) -> np.ndarray:
    """A C-ordered `data` of 3 or more dimensions (a volume, an ITK field's (X, Y, Z, 1, 3)) as a
    Fortran-ordered copy, volume by volume through `reversed_axes`: the order of a NIfTI file's
    voxels, which nibabel then writes without a transposing copy of its own. Anything else as it is."""
    if data.ndim < 3 or not data.flags.c_contiguous or data.flags.f_contiguous:
        return data
    out = np.empty(data.shape, dtype=data.dtype, order="F")
    for volume in np.ndindex(*data.shape[3:]):
        reversed_axes(data[(...,) + volume], out=out[(...,) + volume].T)
    return out


def _check_finite(data: np.ndarray, name: str) -> None:
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            n_nan = int(np.isnan(data).sum())
            raise InvalidImageError(
                f"{name} must contain only finite values, got {n_nan} NaN and {int(bad.sum()) - n_nan} "
                f"infinite voxels out of {data.size}"
            )


def _check_extent(shape, affine, name: str, min_extent_mm: float) -> None:
    extent = np.asarray(shape[:3], dtype=np.float64) * voxel_sizes(affine)
    if np.any(extent < min_extent_mm):
        sizes = np.round(voxel_sizes(affine), 4).tolist()
        raise InvalidImageError(
            f"{name}: field of view {' x '.join(f'{e:.4g}' for e in extent)} mm ({' x '.join(map(str, shape[:3]))} voxels "
            f"of {sizes} mm) is too small to register: each axis must span at least {min_extent_mm:g} mm "
            "(a brain spans over 100 mm; the affine stage's coarsest grid has 8 mm voxels)"
        )


def load_volume(image, *, name: str = "image", allow_constant: bool = False, min_extent_mm: float | None = None) -> Volume:
    """Load and validate an intensity image.

    Parameters
    ----------
    image : str, os.PathLike, nibabel image or (array, affine)
        A .nii/.nii.gz/.mgz path, a nibabel spatial image, or a 3-D array with its 4x4
        voxel -> RAS+ mm affine.
    name : str
        How error messages call it ("fixed image", "moving image").
    allow_constant : bool
        Accept a constant image (fine to resample, useless to register).
    min_extent_mm : float, optional
        Smallest field of view along each axis. Default: `MIN_REGISTRATION_EXTENT_MM` for an
        image to register (``allow_constant=False``), none for one only resampled.

    Returns
    -------
    Volume with float32 data of shape (X, Y, Z).

    Raises
    ------
    FileNotFoundError, InvalidImageError
        Missing file, unreadable or truncated file, a broken header (complex datatype,
        implausible size, qform/sform that tools read differently), not 3-D, non-finite
        voxels, constant intensity, a field of view too small to register, absurd voxel
        sizes or a broken affine.
    """
    data, affine, source = _as_array_and_affine(image, name)
    if data.dtype.kind not in "biuf":
        raise InvalidImageError(f"{name} must hold real numbers, got dtype {data.dtype}")
    data = _squeeze_to_3d(data, name)
    affine = check_affine(affine, name)
    _check_finite(data, name)
    if data.dtype.kind == "b":
        data = data.astype(np.float32)
    as_float32 = c_ordered(data, np.float32)
    if data.dtype.itemsize > 4 and data.dtype.kind == "f":
        # float64 -> float32 can overflow (1e300 becomes inf): what we hand on must be finite too.
        _check_finite(as_float32, f"{name} (as float32)")
    low, high = float(as_float32.min()), float(as_float32.max())
    if not high > low and not allow_constant:
        raise InvalidImageError(f"{name} is constant (every voxel is {low}); there is nothing to register")
    if min_extent_mm is None:
        min_extent_mm = 0.0 if allow_constant else MIN_REGISTRATION_EXTENT_MM
    _check_extent(data.shape, affine, name, min_extent_mm)
    return Volume(as_float32, affine, name, source)


def load_label_map(image, *, name: str = "label map", like: Volume | None = None,
                   min_overlap: float = MIN_OVERLAP_FRACTION) -> Volume:
    """Load and validate an integer label map; returns its labels exactly, in its integer type.

    Integer files keep their type (int8 ... int64, uint8 ... uint64 up to 2^63 - 1), so labels
    of any size survive: they are warped as integers (`ops.warp_labels`) and written back in that
    type. Float files are accepted only when every value is an integer (NIfTI label maps are
    often stored as float32) and become int32 (int64 beyond its range); a non-integer value
    means this is not a label map. With `like` (the image the labels belong to), a label map
    that does not overlap it is refused (see `check_overlap`) before any work.
    """
    data, affine, source = _as_array_and_affine(image, name)
    data = _squeeze_to_3d(data, name)
    affine = check_affine(affine, name)
    data = _integer_labels(data, name)
    labels = Volume(c_ordered(data), affine, name, source)
    if like is not None:
        check_overlap(labels, like, name=name, min_fraction=min_overlap)
    return labels


def _integer_labels(data: np.ndarray, name: str) -> np.ndarray:
    """`data` as integer labels: integer types as they are, floats with integer values as int32
    (int64 when they do not fit), booleans as uint8."""
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        _check_finite(data, name)
        rounded = np.rint(data)
        off = np.abs(data - rounded) > 1e-4
        if off.any():
            example = float(data[off].flat[0])
            raise InvalidImageError(
                f"{name} must hold integer labels, got {int(off.sum())} non-integer voxels (e.g. {example}); "
                "is this an intensity image?"
            )
        int64 = np.iinfo(np.int64)
        if data.size and (rounded.min() < int64.min or rounded.max() >= int64.max):
            raise InvalidImageError(f"{name}: labels must fit in int64, got range [{rounded.min()}, {rounded.max()}]")
        fits_int32 = not data.size or (rounded.min() >= np.iinfo(np.int32).min and rounded.max() <= np.iinfo(np.int32).max)
        return rounded.astype(np.int32 if fits_int32 else np.int64)
    if data.dtype.kind not in "iu":
        raise InvalidImageError(f"{name} must hold integer labels, got dtype {data.dtype}")
    if data.dtype == np.uint64 and data.size and data.max() > np.iinfo(np.int64).max:
        raise InvalidImageError(f"{name}: labels must fit in int64, got values up to {data.max()}")
    return data


def load_for_resampling(image, interpolation: str, *, name: str = "input image") -> Volume:
    """Load what `smgic-apply` or `RegistrationResult.apply` resamples with `interpolation`.

    "label", and "nearest" on integer data (an integer file, or floats whose every value is an
    integer), give a label map (`load_label_map`: integer values kept exactly, in their type);
    anything else an intensity image (`load_volume`, constant images allowed).
    """
    data, affine, source = _as_array_and_affine(image, name)
    volume = Volume(data, affine, name, source)
    integer_valued = data.dtype.kind in "iub" or (
        data.dtype.kind == "f" and bool(np.all(np.isfinite(data))) and bool(np.all(data == np.rint(data))))
    if interpolation == "label" or (interpolation == "nearest" and integer_valued):
        return load_label_map(volume, name=name)
    return load_volume(volume, name=name, allow_constant=True)


def load_mask(image, *, like: Volume, name: str = "mask") -> Volume:
    """Load a binary mask (nonzero = inside) that must lie on the same grid as `like`.

    A mask that misses `like`'s field of view is refused first (`check_overlap`), with how far
    it misses, rather than only "different grid".
    """
    data, affine, source = _as_array_and_affine(image, name)
    data = _squeeze_to_3d(data, name)
    affine = check_affine(affine, name)
    _check_finite(data, name)
    mask = data != 0
    if not mask.any():
        raise InvalidImageError(f"{name} is empty (no nonzero voxel)")
    check_overlap(Volume(mask, affine, name, source), like, name=name)
    if data.shape != like.shape:
        raise InvalidImageError(f"{name} must have the shape of the {like.name} {like.shape}, got {data.shape}")
    if not np.allclose(affine, like.affine, atol=1e-3):
        raise InvalidImageError(
            f"{name} must lie on the grid of the {like.name} (same affine), got affine "
            f"{np.round(affine, 4).tolist()} vs {np.round(like.affine, 4).tolist()}"
        )
    return Volume(c_ordered(mask, np.float32), affine, name, source)


# At most this many voxels are mapped to decide an overlap (a strided sample of larger maps):
# the fraction moves by far less than a percent, and a 1 mm atlas costs milliseconds.
_OVERLAP_SAMPLE_VOXELS = 1 << 20


def world_box(shape, affine) -> tuple[np.ndarray, np.ndarray]:
    """RAS mm bounding box (low, high) of a grid's field of view (outer voxel faces)."""
    corners = (voxel_corners(shape) @ np.asarray(affine, dtype=np.float64).T)[:, :3]
    return corners.min(axis=0), corners.max(axis=0)


def format_world_box(low, high) -> str:
    """``[x0..x1, y0..y1, z0..z1] mm`` for error messages."""
    return "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(low, high)) + "] mm"


def overlap_fraction(volume: Volume, like: Volume) -> float:
    """Fraction of `volume`'s nonzero voxels (all voxels if none is nonzero) whose centres lie
    inside `like`'s field of view (its voxels' outer faces), in world coordinates."""
    data = np.asarray(volume.data)
    step = max(1, int(np.ceil((data.size / _OVERLAP_SAMPLE_VOXELS) ** (1 / 3))))
    sample = data[::step, ::step, ::step]
    index = np.argwhere(sample != 0)
    if index.size == 0:
        index = np.argwhere(np.ones(sample.shape, dtype=bool))
    index = index.astype(np.float64) * step
    to_like = np.linalg.solve(np.asarray(like.affine, dtype=np.float64), np.asarray(volume.affine, dtype=np.float64))
    inside_index = index @ to_like[:3, :3].T + to_like[:3, 3]
    upper = np.asarray(like.shape, dtype=np.float64) - 0.5
    inside = np.all((inside_index >= -0.5) & (inside_index <= upper), axis=1)
    return float(inside.mean())


def check_overlap(volume: Volume, like: Volume, *, name: str | None = None,
                  min_fraction: float = MIN_OVERLAP_FRACTION) -> float:
    """Refuse a label map or mask that does not lie on the image it belongs to.

    At least `min_fraction` (default `MIN_OVERLAP_FRACTION`, one half) of `volume`'s nonzero
    voxels must have their centres inside `like`'s field of view, in world (RAS mm)
    coordinates; grids may differ. Returns the fraction found.

    Raises
    ------
    InvalidImageError
        Naming both, the fraction found and needed, both world boxes and, when the boxes do not
        touch at all, by how many mm they miss.
    """
    if not 0 < float(min_fraction) <= 1:
        raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction!r}")
    name = name or volume.name
    fraction = overlap_fraction(volume, like)
    if fraction >= min_fraction:
        return fraction
    data = np.asarray(volume.data)
    nonzero = np.argwhere(data != 0)
    if nonzero.size:
        low_index, high_index = nonzero.min(axis=0), nonzero.max(axis=0)
        sub_shape = high_index - low_index + 1
        shifted = np.asarray(volume.affine, dtype=np.float64).copy()
        shifted[:3, 3] += shifted[:3, :3] @ low_index
        box = world_box(sub_shape, shifted)
        what = "labelled region"
    else:
        box = world_box(volume.shape, volume.affine)
        what = "field of view"
    like_box = world_box(like.shape, like.affine)
    gap = np.maximum(0.0, np.maximum(like_box[0] - box[1], box[0] - like_box[1]))
    miss = f"; they miss each other by {float(np.linalg.norm(gap)):.1f} mm" if np.any(gap > 0) else ""
    raise InvalidImageError(
        f"{name}{_where(volume.source)} does not lie on the {like.name}{_where(like.source)}: "
        f"{100 * fraction:.1f}% of its {'nonzero voxels' if nonzero.size else 'voxels'} fall inside the {like.name}'s "
        f"field of view, at least {100 * min_fraction:g}% are needed; its {what} spans {format_world_box(*box)}, "
        f"the {like.name} {format_world_box(*like_box)} (RAS){miss}"
    )


# ---------------------------------------------------------------------------------------------
# Writers (atomic through smgic_rt.io.atomic)


def _image_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"output path must end in one of {_IMAGE_SUFFIXES}, got '{path}'")


def image_stem(path) -> str:
    """A file name without its image suffix (``sub01_T1.nii.gz`` -> ``sub01_T1``)."""
    name = Path(os.fspath(path)).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


_GZIP_CHUNK = 8 << 20


class _GzipMembers(_stdio.RawIOBase):
    """A write-only binary file whose bytes become gzip members of `_GZIP_CHUNK` bytes each (the
    last one shorter), compressed with ISA-L (python-isal) on `pool` while more is written, and
    written to `handle` in order; at most `ahead` pieces wait, so a file is never held whole.

    A gzip file may hold several members in a row (RFC 1952); zlib, nibabel, ITK and ANTs read
    such files as one stream. Compressing two 1 mm displacement fields was the largest single cost
    of saving a registration: ISA-L's level 1 compresses several times faster than zlib's level 1
    (nibabel's) to a similar size (docs/tuning.md).
    """

    def __init__(self, handle, pool, ahead: int):
        super().__init__()
        self._handle, self._pool, self._ahead = handle, pool, max(1, ahead)
        self._piece, self._pending, self._size, self._members = bytearray(), collections.deque(), 0, 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        count = len(view)
        while view:
            taken = view[:_GZIP_CHUNK - len(self._piece)]
            self._piece += taken
            view = view[len(taken):]
            if len(self._piece) == _GZIP_CHUNK:
                self._submit()
        self._size += count
        return count

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0 and offset == self._size:
            return self._size
        raise OSError(errno.ESPIPE, "a gzip stream is written in order")

    def finish(self) -> None:
        """Compress what is left (an empty file is one empty member) and write every member."""
        if self._piece or not self._members:
            self._submit()
        while self._pending:
            self._handle.write(self._pending.popleft().result())

    def _submit(self) -> None:
        from isal import igzip

        piece, self._piece = self._piece, bytearray()
        # ISA-L releases the GIL while compressing, so the pool's threads run in parallel.
        self._pending.append(self._pool.submit(igzip.compress, piece, compresslevel=1, mtime=0))
        self._members += 1
        while len(self._pending) > self._ahead:
            self._handle.write(self._pending.popleft().result())


def _write_nifti_gz(image: nib.Nifti1Image, path: Path, threads: int | None = None) -> None:
    """Write `image` as a .nii.gz compressed on `threads` threads (None: all cores), as
    `_GzipMembers`, leaving the image holding no reference to the file: nibabel's writer points
    the image's ``file_map`` at its output.

    C-ordered voxels are handed to nibabel in file order (`fortran_ordered`), in an image with
    this one's header as it would write it: nibabel's own transposing write is several times slower.
    """
    if isinstance(image.dataobj, np.ndarray):
        ordered = fortran_ordered(image.dataobj)
        if ordered is not image.dataobj:
            image.update_header()  # what nibabel's writer does first; the copy takes the header as it is
            image = type(image)(ordered, None, image.header)
    workers = max(1, threads or len(os.sched_getaffinity(0)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, open(path, "wb") as handle:
        members, file_map = _GzipMembers(handle, pool, ahead=workers), image.file_map
        image.to_stream(members)
        image.file_map = file_map
        members.finish()


def save_image_atomic(image, path, *, threads: int | None = None) -> Path:
    """Write a nibabel image to `path` atomically; `threads` compress a ``.nii.gz`` (None: all
    cores)."""
    path = Path(os.fspath(path))
    suffix = _image_suffix(path)
    try:
        with atomic.atomic_path(path, suffix=suffix) as temp:
            if suffix == ".nii.gz" and isinstance(image, nib.Nifti1Image):
                _write_nifti_gz(image, temp, threads)
            else:
                nib.save(image, str(temp))
    except OSError as error:
        # A full disk (ENOSPC), a quota (EDQUOT) or a file-size limit (EFBIG) surfaces deep in a
        # writer with no file name; the same errno, naming the output, tells the user which.
        code = error.errno if error.errno is not None else errno.EIO
        raise type(error)(code, f"could not write image: {error.strerror or error}", str(path)) from error
    return path
