"""Loading, validation and atomic writing of the images smgic_rt touches.

Every image that enters the runtime passes through `load_volume` (intensity images),
`load_label_map` (integer label maps) or `load_mask`; each accepts a path (.nii, .nii.gz,
.mgz), a nibabel image or an ``(array, affine)`` pair and returns a `Volume` with the data
as the NIfTI stores it (voxel-index order, any orientation) and its voxel->RAS+ mm affine.
Bad input raises `InvalidImageError` (a ValueError) or FileNotFoundError whose message names
the argument, what was expected and what came.

Writers never leave half-written files: they write into a temporary file (or folder) beside
the target and rename it into place.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from . import atomic

__all__ = [
    "InvalidImageError",
    "OutputExistsError",
    "Volume",
    "load_volume",
    "load_label_map",
    "load_mask",
    "voxel_sizes",
    "save_image_atomic",
    "check_output_dir",
    "atomic_output_dir",
    "MIN_VOXEL_SIZE_MM",
    "MAX_VOXEL_SIZE_MM",
    "MIN_AXIS_VOXELS",
]

# Brain MRI voxels are 0.1-10 mm in practice; outside these bounds the header is broken
# (e.g. a zero or 1000 mm pixdim), and registering it would silently produce garbage.
MIN_VOXEL_SIZE_MM = 0.05
MAX_VOXEL_SIZE_MM = 20.0
# Fewer voxels than this along an axis is a 2-D slice or a stack of slices, not a volume.
MIN_AXIS_VOXELS = 4

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh")


class InvalidImageError(ValueError):
    """An input image (or label map, or mask) cannot be used; the message says why."""


class OutputExistsError(FileExistsError):
    """The output already exists and overwriting was not requested."""


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
    """A NIfTI-1 image whose sform and qform both carry `affine` (code 1, scanner)."""
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm (column norms of the 3x3 part of the affine)."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _read_image_file(path_like, name: str):
    path = Path(os.fspath(path_like)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file: '{path}'")
    if path.is_dir():
        raise InvalidImageError(f"{name}: expected an image file (.nii, .nii.gz, .mgz), got a directory '{path}'")
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises several unrelated types for unreadable files
        raise InvalidImageError(
            f"{name}: could not read '{path}' as an image (expected .nii, .nii.gz or .mgz): "
            f"{type(error).__name__}: {error}"
        ) from None
    if not hasattr(image, "affine") or image.affine is None or len(image.shape) < 2:
        raise InvalidImageError(f"{name}: '{path}' is not a volumetric image (got {type(image).__name__})")
    return image, str(path)


def _as_array_and_affine(image, name: str):
    """(data, affine, source) from a path, a nibabel image or an (array, affine) pair."""
    if isinstance(image, Volume):
        return image.data, image.affine, image.source
    if isinstance(image, (str, os.PathLike)):
        loaded, source = _read_image_file(image, name)
        return _read_spatial_image(loaded, name, source)
    if isinstance(image, nib.spatialimages.SpatialImage):
        return _read_spatial_image(image, name, None)
    if isinstance(image, (tuple, list)) and len(image) == 2:
        data, affine = image
        try:
            data = np.asarray(data)
            affine = np.asarray(affine, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InvalidImageError(f"{name}: expected an (array, 4x4 affine) pair, got values that are not arrays: {error}") from None
        return data, affine, None
    raise InvalidImageError(
        f"{name}: expected a path (.nii, .nii.gz, .mgz), a nibabel image or an (array, affine) pair, "
        f"got {type(image).__name__}"
    )


def _read_spatial_image(image, name: str, source):
    try:
        # get_fdata applies scl_slope/scl_inter; float64 keeps integer labels exact.
        data = np.asanyarray(image.dataobj)
        if data.dtype.kind not in "biu":
            data = image.get_fdata(dtype=np.float64)
        elif getattr(image, "dataobj", None) is not None and hasattr(image.dataobj, "slope") and (
            image.dataobj.slope != 1 or image.dataobj.inter != 0
        ):
            data = image.get_fdata(dtype=np.float64)
    except Exception as error:
        raise InvalidImageError(f"{name}: could not read the voxel data{f' of {source!r}' if source else ''}: {error}") from None
    return np.asarray(data), np.asarray(image.affine, dtype=np.float64), source


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


def _check_affine(affine: np.ndarray, name: str) -> np.ndarray:
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


def _check_finite(data: np.ndarray, name: str) -> None:
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            n_nan = int(np.isnan(data).sum())
            raise InvalidImageError(
                f"{name} must contain only finite values, got {n_nan} NaN and {int(bad.sum()) - n_nan} "
                f"infinite voxels out of {data.size}"
            )


def load_volume(image, *, name: str = "image", allow_constant: bool = False) -> Volume:
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

    Returns
    -------
    Volume with float32 data of shape (X, Y, Z).

    Raises
    ------
    FileNotFoundError, InvalidImageError
        Missing file, unreadable file, not 3-D, non-finite voxels, constant intensity,
        absurd voxel sizes or a broken affine.
    """
    data, affine, source = _as_array_and_affine(image, name)
    if data.dtype.kind not in "biuf":
        raise InvalidImageError(f"{name} must hold real numbers, got dtype {data.dtype}")
    data = _squeeze_to_3d(data, name)
    affine = _check_affine(affine, name)
    _check_finite(data, name)
    if data.dtype.kind == "b":
        data = data.astype(np.float32)
    low, high = float(data.min()), float(data.max())
    if not high > low and not allow_constant:
        raise InvalidImageError(f"{name} is constant (every voxel is {low}); there is nothing to register")
    return Volume(np.ascontiguousarray(data, dtype=np.float32), affine, name, source)


def load_label_map(image, *, name: str = "label map") -> Volume:
    """Load and validate an integer label map; returns int32 data.

    Float files are accepted only when every value is an integer (NIfTI label maps are often
    stored as float32); a non-integer value means this is not a label map.
    """
    data, affine, source = _as_array_and_affine(image, name)
    data = _squeeze_to_3d(data, name)
    affine = _check_affine(affine, name)
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
        data = rounded
    elif data.dtype.kind not in "biu":
        raise InvalidImageError(f"{name} must hold integer labels, got dtype {data.dtype}")
    if data.size and (data.min() < np.iinfo(np.int32).min or data.max() > np.iinfo(np.int32).max):
        raise InvalidImageError(f"{name}: labels must fit in int32, got range [{data.min()}, {data.max()}]")
    return Volume(np.ascontiguousarray(data, dtype=np.int32), affine, name, source)


def load_mask(image, *, like: Volume, name: str = "mask") -> Volume:
    """Load a binary mask (nonzero = inside) that must lie on the same grid as `like`."""
    data, affine, source = _as_array_and_affine(image, name)
    data = _squeeze_to_3d(data, name)
    affine = _check_affine(affine, name)
    _check_finite(data, name)
    if data.shape != like.shape:
        raise InvalidImageError(f"{name} must have the shape of the {like.name} {like.shape}, got {data.shape}")
    if not np.allclose(affine, like.affine, atol=1e-3):
        raise InvalidImageError(
            f"{name} must lie on the grid of the {like.name} (same affine), got affine "
            f"{np.round(affine, 4).tolist()} vs {np.round(like.affine, 4).tolist()}"
        )
    mask = data != 0
    if not mask.any():
        raise InvalidImageError(f"{name} is empty (no nonzero voxel)")
    return Volume(np.ascontiguousarray(mask.astype(np.float32)), affine, name, source)


# ---------------------------------------------------------------------------------------------
# Writers (atomic through smgic_rt.atomic)


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


def _write_gzip_parallel(data: bytes, path: Path, threads: int | None = None) -> None:
    """Write `data` as gzip compressed in 8 MiB pieces on `threads` threads (None: all cores),
    with ISA-L (python-isal).

    Each piece is a complete gzip member and a gzip file may hold several in a row (RFC 1952);
    zlib, nibabel, ITK and ANTs read such files as one stream. Compressing two 1 mm displacement
    fields was the largest single cost of saving a registration: ISA-L's level 1 compresses
    about 10x faster than zlib's level 1 (nibabel's) to a similar size.
    """
    from isal import igzip

    pieces = [data[i:i + _GZIP_CHUNK] for i in range(0, len(data), _GZIP_CHUNK)] or [b""]
    workers = max(1, min(len(pieces), threads or len(os.sched_getaffinity(0))))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, open(path, "wb") as handle:
        # ISA-L releases the GIL while compressing, so the threads run in parallel.
        for member in pool.map(lambda piece: igzip.compress(piece, compresslevel=1, mtime=0), pieces):
            handle.write(member)


def save_image_atomic(image, path, *, threads: int | None = None) -> Path:
    """Write a nibabel image to `path` atomically; `threads` compress a ``.nii.gz`` (None: all
    cores)."""
    path = Path(os.fspath(path))
    suffix = _image_suffix(path)
    with atomic.atomic_path(path, suffix=suffix) as temp:
        if suffix == ".nii.gz" and isinstance(image, nib.Nifti1Image):
            _write_gzip_parallel(image.to_bytes(), temp, threads)
        else:
            nib.save(image, str(temp))
    return path


def check_output_dir(outdir, *, overwrite: bool = False) -> Path:
    """Fail early (before any work) when `outdir` cannot be produced.

    Raises OutputExistsError when it exists and `overwrite` is false, NotADirectoryError when it
    is a file, and PermissionError / FileNotFoundError when its parent cannot take a new folder.
    """
    outdir = Path(os.fspath(outdir)).expanduser().absolute()
    if outdir.exists() or outdir.is_symlink():
        if not outdir.is_dir():
            raise NotADirectoryError(f"output directory '{outdir}' exists and is not a directory")
        if not overwrite:
            raise OutputExistsError(f"output directory '{outdir}' already exists (pass overwrite=True / --overwrite to replace it)")
    parent = outdir.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot create output directory '{outdir}': parent folder '{parent}' does not exist")
    # os.access misses read-only mounts, so try the real operation we will need.
    try:
        probe = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.probe-", dir=str(parent)))
    except OSError as error:
        raise PermissionError(f"cannot create output directory '{outdir}': parent folder '{parent}' is not writable ({error.strerror})") from None
    probe.rmdir()
    return outdir


@contextlib.contextmanager
def atomic_output_dir(outdir, *, overwrite: bool = False):
    """Yield a staging folder beside `outdir`; on success it replaces `outdir` by rename.

    On any exception the staging folder is removed and `outdir` is left as it was, so a
    failed run never leaves partial outputs.
    """
    outdir = check_output_dir(outdir, overwrite=overwrite)
    try:
        with atomic.atomic_dir(outdir, replace=overwrite) as staging:
            yield staging
    except FileExistsError as error:
        if isinstance(error, OutputExistsError):
            raise
        raise OutputExistsError(f"output directory '{outdir}' appeared while we were working; not replacing it") from None
