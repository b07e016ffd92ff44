"""Apply a chain of transforms, in ANTs' order, to images (3-D or 4-D), label maps, point sets
and streamlines: what ``smgic-apply`` runs.

A chain is a list of transforms as ``antsApplyTransforms -t`` takes them: displacement fields
(ITK layout, as smgic-register and antsRegistration write them), affines (ITK ``.mat``/``.txt``,
FreeSurfer ``.lta``, a 4x4 RAS text matrix; `smgic_rt.io.transform_formats`), each optionally
written ``[T,1]`` to use its inverse. A reference point ``p`` maps to ``T_last(...T_1(T_0(p)))``
(the first listed acts on the point first, as antspyx ``apply_transforms`` and
``apply_transforms_to_points`` do), and an image is read at the mapped points. An affine is
inverted exactly. ``[F,1]`` for a displacement field ``F`` is the inverse of ``F`` itself,
solved at each point (or image voxel) being mapped: the ``p`` with ``p + d(p) = q``, by Newton's
method (`InverseFieldStep`), started from the sibling field smgic-register wrote beside it
(``inverse_warp.nii.gz`` for ``warp.nii.gz`` and the other way round) where there is one. That
sibling file is the inverse as any tool reads it: the numerical inverse at its nodes, trilinear
between them, so close to but not exactly the inverse there (docs/tuning.md has the distances);
``[warp.nii.gz,1]`` is exact to `INVERSE_TOLERANCE_MM` wherever the field is invertible. Points
where Newton does not get there (folds) keep their best estimate and are counted by
`InverseNotConvergedWarning`.

Points follow ITK: they move with the transform that would warp an image the other way. To
bring points from the moving image into the fixed image use ``[warp.nii.gz,1]`` (or
inverse_warp.nii.gz), the transform that resamples the fixed image onto the moving grid. CSV
files are read in the convention of ``antsApplyTransformsToPoints`` (columns x, y, z in LPS mm,
other columns kept) or as RAS mm.
"""

from __future__ import annotations

import contextlib
import csv
import io as text_io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from . import io
from .geometry import transforms
from .geometry.transforms import InvalidTransformError
from .io import atomic

__all__ = ["AffineStep", "FieldStep", "InverseFieldStep", "InverseNotConvergedWarning", "TransformChain", "load_chain",
           "parse_transform", "apply_to_image", "apply_to_points_csv", "apply_to_streamlines", "apply_to_file",
           "POINT_SPACES", "SIBLING_FIELDS", "INVERSE_TOLERANCE_MM", "INVERSE_MAX_STEPS"]

POINT_SPACES = ("lps", "ras")
# smgic-register's two fields, each the other's inverse: [F,1] starts Newton from F's sibling
SIBLING_FIELDS = {"warp.nii.gz": "inverse_warp.nii.gz", "inverse_warp.nii.gz": "warp.nii.gz"}
# Slabs of the reference grid mapped at once: a few float64 (3, ...) arrays of a slab hold less
# than one float32 volume.
_SLABS_PER_VOLUME = 48
_SPEC = re.compile(r"^\[\s*(?P<path>.+?)\s*,\s*(?P<flag>[01])\s*\]$")
# [F,1] stops Newton once |p + d(p) - q| is below this at every point: p's error is that residual
# over 1 - |grad d|, and float32 coordinates read a field to about 1e-5 mm.
INVERSE_TOLERANCE_MM = 1e-4
INVERSE_MAX_STEPS = 20
# Points solved at once by [F,1]: its Newton arrays (under 1 kB a point) stay a few MB whatever
# the slab or point set.
_INVERSE_CHUNK = 1 << 13


def _affine_map(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """A 4x4 matrix applied to points (3, ...) as homogeneous coordinates, float64."""
    shape = (3,) + (1,) * (points.ndim - 1)
    return np.einsum("ij,j...->i...", matrix[:3, :3], points) + matrix[:3, 3].reshape(shape)


@dataclass(frozen=True)
class AffineStep:
    """``q -> matrix @ q`` (4x4, RAS mm)."""

    matrix: np.ndarray
    source: str

    def map(self, points: np.ndarray) -> np.ndarray:
        return _affine_map(self.matrix, points)


@dataclass(frozen=True)
class FieldStep:
    """``q -> q + d(q)``: a RAS-mm displacement (3, X, Y, Z) on the grid `affine`, read
    trilinearly, zero (the point stays) outside its grid, as ITK's displacement-field transform."""

    displacement: np.ndarray
    affine: np.ndarray
    source: str

    def map(self, points: np.ndarray) -> np.ndarray:
        return points + self.read(_affine_map(np.linalg.inv(self.affine), points))

    def read(self, index: np.ndarray) -> np.ndarray:
        """``d`` (RAS mm, float32) at voxel coordinates (3, ...) of the field's grid: a (3, X, Y, Z)
        block is read as it is, other shapes through a near-cubic block (`_as_block`)."""
        from .geometry import ops

        block = index if index.ndim == 4 else _as_block(index.reshape(3, -1))
        # The kernel reads at x + u(x), x the block's own index: small, so float32 keeps u exact.
        relative = ops.affine_field(block.astype(np.float32), -_IDENTITY_3X4, np.eye(3))
        values = ops.warp(self.displacement, relative, interpolation="linear", padding="zeros")
        return values if index.ndim == 4 else values.reshape(3, -1)[:, :index[0].size].reshape(index.shape)

    def jacobian(self, points: np.ndarray) -> np.ndarray:
        """``d(q + d(q))/dq`` (3, 3, n) at points (3, n), exact for the trilinear read: along voxel
        axis ``a`` it is the difference of `read` on the two faces of the point's cell (the lower
        cell's on a face itself)."""
        to_voxels = np.linalg.inv(self.affine)
        index = _affine_map(to_voxels, points)
        faces = np.tile(index, (1, 6))
        count = index.shape[1]
        for axis in range(3):
            low = slice(2 * axis * count, (2 * axis + 1) * count)
            high = slice((2 * axis + 1) * count, (2 * axis + 2) * count)
            faces[axis, low] = np.floor(index[axis])
            faces[axis, high] = faces[axis, low] + 1.0
        values = self.read(faces).astype(np.float64).reshape(3, 3, 2, count)  # (component, axis, face, point)
        per_voxel = values[:, :, 1] - values[:, :, 0]  # d d_i / d index_a
        jacobian = np.broadcast_to(np.eye(3)[:, :, None], (3, 3, count)).copy()
        for axis in range(3):
            jacobian += per_voxel[:, axis, None, :] * to_voxels[axis, :3, None]
        return jacobian


_IDENTITY_3X4 = np.hstack([np.eye(3), np.zeros((3, 1))])


class InverseNotConvergedWarning(UserWarning):
    """``[F,1]`` left `count` of `total` points with ``|p + d(p) - q|`` above `tolerance` (mm),
    near a fold of ``F``: they keep their best estimate."""

    def __init__(self, source: str, count: int, total: int, tolerance: float):
        super().__init__(f"[{source},1]: {count} of {total} point(s) kept an estimate off by more than "
                         f"{tolerance:g} mm (Newton did not converge, near a fold of the field)")
        self.source, self.count, self.total, self.tolerance = source, count, total, tolerance


@dataclass(frozen=True)
class InverseFieldStep:
    """``q -> p`` with ``p + d(p) = q``: the inverse of `field`, solved at each point by Newton's
    method on `field`'s own trilinear read (`FieldStep.map` and `FieldStep.jacobian`), started
    from `start` (an approximate inverse field, e.g. smgic-register's sibling file) or else from
    ``q - d(q)``. A step that would raise a point's residual is not taken and its length halved
    for the next try; points still above `tolerance` (mm) after `max_steps` keep their best
    estimate and are counted by an `InverseNotConvergedWarning`."""

    field: FieldStep
    start: FieldStep | None = None
    tolerance: float = INVERSE_TOLERANCE_MM
    max_steps: int = INVERSE_MAX_STEPS

    @property
    def source(self) -> str:
        return f"[{self.field.source},1]"

    def map(self, points: np.ndarray) -> np.ndarray:
        flat = np.asarray(points, dtype=np.float64).reshape(3, -1)
        mapped = np.empty_like(flat)
        missed = 0
        for begin in range(0, flat.shape[1], _INVERSE_CHUNK):
            chunk = slice(begin, begin + _INVERSE_CHUNK)
            mapped[:, chunk], residual = self.solve(flat[:, chunk])
            missed += int(np.count_nonzero(residual > self.tolerance))
        if missed:
            warnings.warn(InverseNotConvergedWarning(self.field.source, missed, flat.shape[1], self.tolerance),
                          stacklevel=2)
        return mapped.reshape(np.shape(points))

    def solve(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p, |p + d(p) - q|)``, (3, n) and (n,), for targets ``q`` (3, n), RAS mm."""
        field = self.field
        p = self.start.map(targets) if self.start is not None else 2.0 * targets - field.map(targets)
        residual = field.map(p) - targets
        length = np.linalg.norm(residual, axis=0)
        scale = np.ones_like(length)  # halved at a point each time its step is refused
        active = np.flatnonzero(length > self.tolerance)
        for _ in range(self.max_steps):
            if not active.size:
                break
            step = _solve_3x3(field.jacobian(p[:, active]), residual[:, active])
            moved = p[:, active] - scale[active] * step
            moved_residual = field.map(moved) - targets[:, active]
            moved_length = np.linalg.norm(moved_residual, axis=0)
            better = moved_length < length[active]
            taken = active[better]
            p[:, taken], residual[:, taken] = moved[:, better], moved_residual[:, better]
            length[taken] = moved_length[better]
            scale[taken] = 1.0
            scale[active[~better]] *= 0.5
            active = active[length[active] > self.tolerance]
        return p, length


def _solve_3x3(matrices: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``x`` (3, n) with ``matrices[:, :, k] @ x[:, k] = rhs[:, k]``, by Cramer's rule (the rows of
    the inverse are cross products of the columns); where a matrix is singular (a fold's crease)
    ``x = rhs``, a plain residual step."""
    columns = [matrices[:, j] for j in range(3)]
    rows = [np.cross(columns[(j + 1) % 3], columns[(j + 2) % 3], axis=0) for j in range(3)]
    determinant = (columns[0] * rows[0]).sum(axis=0)
    singular = np.abs(determinant) < 1e-9
    solved = np.stack([(row * rhs).sum(axis=0) for row in rows]) / np.where(singular, 1.0, determinant)
    return np.where(singular, rhs, solved)


def _as_block(flat: np.ndarray) -> np.ndarray:
    """Points (3, N) laid out as a near-cubic (3, a, a, c) block (zero-padded), so that the
    sampling kernels' voxel indices stay small."""
    count = flat.shape[1]
    side = max(1, int(np.ceil(count ** (1 / 3))))
    depth = max(1, -(-count // (side * side)))
    block = np.zeros((3, side * side * depth))
    block[:, :count] = flat
    return block.reshape(3, side, side, depth)


@dataclass(frozen=True)
class TransformChain:
    """Transforms in ANTs' order; `map_points` sends reference points (3, ...) RAS mm, float64,
    to the input's space (a (3, X, Y, Z) block of a grid, or points of any other shape)."""

    steps: tuple

    def map_points(self, points: np.ndarray) -> np.ndarray:
        from .geometry import ops

        points = np.asarray(points, dtype=np.float64)
        # Fields were checked finite when loaded; the kernels need not scan them at every slab.
        with ops.inputs_known_finite():
            for step in self.steps:
                points = step.map(points)
        return points


def parse_transform(text: str) -> tuple[str, bool]:
    """``"T"`` -> (T, False); ``"[T,1]"`` -> (T, True); ``"[T,0]"`` -> (T, False)."""
    match = _SPEC.match(str(text).strip())
    if match:
        return match["path"], match["flag"] == "1"
    return str(text), False


def _is_field(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def _field_step(path: Path) -> FieldStep:
    displacement, affine = transforms.itk_image_to_displacement(path, name=f"transform '{path.name}'")
    return FieldStep(displacement, affine, str(path))


def load_chain(specs, *, fixed=None, moving=None) -> TransformChain:
    """A `TransformChain` from transforms in ANTs' order: paths, ``"[path,1]"`` strings,
    ``(path, invert)`` pairs, 4x4 matrices or nibabel field images. An FSL FLIRT matrix is read
    against `fixed` (the reference grid) and `moving` (the image it reads)."""
    from .io import transform_formats

    if isinstance(specs, (str, os.PathLike)) or not len(specs):
        raise ValueError("transforms must be a non-empty list in ANTs' order (the first acts on the point first)")
    steps = []
    for spec in specs:
        if isinstance(spec, nib.spatialimages.SpatialImage):
            steps.append(FieldStep(*transforms.itk_image_to_displacement(spec), source="field image"))
            continue
        if isinstance(spec, np.ndarray):
            steps.append(AffineStep(np.asarray(spec, dtype=np.float64), source="matrix"))
            continue
        path, invert = spec if isinstance(spec, tuple) else parse_transform(os.fspath(spec))
        path = Path(os.fspath(path)).expanduser()
        if _is_field(path):
            field = _field_step(path)
            if invert:
                sibling = path.parent / SIBLING_FIELDS.get(path.name, "")
                start = _field_step(sibling) if path.name in SIBLING_FIELDS and sibling.is_file() else None
                field = InverseFieldStep(field, start)
            steps.append(field)
        else:
            matrix = transform_formats.read_affine(path, fixed=fixed, moving=moving)
            steps.append(AffineStep(np.linalg.inv(matrix) if invert else matrix, str(path) + (" (inverted)" if invert else "")))
    return TransformChain(tuple(steps))


# ---------------------------------------------------------------------------------------------
# Images


def _slabs(shape):
    """Ranges of the last axis holding at most 1/_SLABS_PER_VOLUME of the voxels (at least one
    plane): the float64 points of a slab stay a fraction of a float32 volume."""
    plane = int(shape[0]) * int(shape[1])
    depth = max(1, int(np.prod(shape)) // _SLABS_PER_VOLUME // max(plane, 1))
    return [(z, min(z + depth, int(shape[2]))) for z in range(0, int(shape[2]), depth)]


def _input_coordinates(chain: TransformChain, reference_shape, reference_affine, input_affine, z0, z1) -> np.ndarray:
    """Voxel coordinates in the input (float32, (3, X, Y, z1 - z0)) of reference slab z0:z1."""
    index = np.stack(np.meshgrid(np.arange(reference_shape[0], dtype=np.float64),
                                 np.arange(reference_shape[1], dtype=np.float64),
                                 np.arange(z0, z1, dtype=np.float64), indexing="ij"))
    mapped = chain.map_points(_affine_map(reference_affine, index))
    return _affine_map(np.linalg.inv(input_affine), mapped).astype(np.float32)


def _warped_slabs(chain, volume: io.Volume, reference_shape, reference_affine, interpolation: str, dtype):
    """`volume` read through `chain` at every reference voxel, slab by slab along the last axis:
    yields ``(values (X, Y, dz) of `dtype`, how many of the slab's voxels map inside the volume)``.
    Nearest and label values come back exact, so an int32 output holds them as they are."""
    upper = np.asarray(volume.shape, dtype=np.float32).reshape(3, 1, 1, 1) - 0.5
    for z0, z1 in _slabs(reference_shape):
        coordinates = _input_coordinates(chain, reference_shape, reference_affine, volume.affine, z0, z1)
        inside = int(np.count_nonzero(np.all((coordinates >= -0.5) & (coordinates <= upper), axis=0)))
        sampled = transforms.sample_image(volume.data, coordinates, interpolation)
        yield (sampled if sampled.dtype == dtype else np.rint(sampled).astype(dtype)), inside


def _output_header(shape, affine, dtype, count: int, series_header) -> nib.Nifti1Header:
    """The output's NIfTI-1 header: the reference's affine (sform and qform), `dtype`, and for a
    series of `count` volumes the input's 4th dimension (TR in pixdim[4], units, toffset)."""
    header = io.make_nifti(np.zeros((1, 1, 1), dtype), affine).header
    header.set_data_dtype(dtype)
    header.set_data_shape(tuple(shape) + ((count,) if count > 1 else ()))
    zooms = tuple(float(z) for z in io.voxel_sizes(affine))
    if count > 1:
        header.set_zooms(zooms + (float(series_header.get_zooms()[3]),))
        header.set_xyzt_units(*series_header.get_xyzt_units())
        header["toffset"] = series_header.get("toffset", 0)
    else:
        header.set_zooms(zooms)
        header.set_xyzt_units("mm")
    header["vox_offset"] = _NIFTI1_DATA_OFFSET
    return header


_NIFTI1_DATA_OFFSET = 352  # 348 header bytes and 4 of "no extension"


@contextlib.contextmanager
def _image_in_memory(path: Path, header: nib.Nifti1Header, threads):
    """`_nifti_stream`'s ``write(slab)`` for other formats (.mgz): the slabs fill the image in
    file order and io's writer converts and writes it at the end."""
    shape = header.get_data_shape()
    flat = np.empty(int(np.prod(shape)), dtype=header.get_data_dtype())
    filled = [0]

    def write(slab):
        values = np.ascontiguousarray(slab.T).reshape(-1)
        flat[filled[0]:filled[0] + values.size] = values
        filled[0] += values.size

    yield write
    io.save_image_atomic(nib.Nifti1Image(flat.reshape(shape, order="F"), None, header), path, threads=threads)


@contextlib.contextmanager
def _nifti_stream(path: Path, header: nib.Nifti1Header):
    """Yield ``write(slab)`` for a .nii/.nii.gz written in file order (x fastest, then y, z, t),
    so that a z-slab of a volume is a contiguous run of the file: the output is never held whole.
    The file goes to a temporary beside `path`, renamed into place when the block succeeds."""
    with atomic.atomic_path(path) as temp:
        if path.name.lower().endswith(".gz"):
            from isal import igzip

            handle = igzip.open(temp, "wb", compresslevel=1)  # ISA-L, as io's writer
        else:
            handle = open(temp, "wb")
        with handle:
            handle.write(header.binaryblock)
            handle.write(b"\0" * (_NIFTI1_DATA_OFFSET - len(header.binaryblock)))
            yield lambda slab: handle.write(np.ascontiguousarray(slab.T).tobytes())


def _volumes(path, interpolation: str):
    """(nibabel image, number of volumes, loader of volume t as a checked io.Volume).

    The file is opened by nibabel, which streams a .nii.gz (io.open_image would decompress a
    whole series into memory): one volume is read at a time."""
    source = str(Path(os.fspath(path)).expanduser())
    if not Path(source).is_file():
        raise FileNotFoundError(f"input image: no such file: '{source}'")
    try:
        image = nib.load(source)
    except Exception as error:  # noqa: BLE001  (nibabel raises several unrelated types)
        raise io.InvalidImageError(f"input image: could not read '{source}' as an image: {type(error).__name__}: "
                                   f"{error}") from None
    io.check_header(image, "input image", source)
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        count = 1
    elif len(shape) == 4:
        count = shape[3]
    else:
        raise io.InvalidImageError(f"input image '{source}': expected 3-D or 4-D (a series), got shape {shape}")
    affine = np.asarray(image.affine, dtype=np.float64)
    name = "input label map" if interpolation == "label" else "input image"

    def volume(t: int) -> io.Volume:
        where = f"{name} '{source}'" + (f" volume {t}" if count > 1 else "")
        try:
            data = np.asarray(image.dataobj[..., t] if len(shape) == 4 else image.dataobj)
        except Exception as error:  # noqa: BLE001  (a truncated or damaged file)
            raise io.InvalidImageError(f"{where}: could not be read: {type(error).__name__}: {error}") from None
        return io.load_for_resampling((data, affine), interpolation, name=where)

    return image, count, volume


def apply_to_image(chain: TransformChain, input_path, reference, output_path, *, interpolation: str = "linear",
                   threads: int | None = None) -> Path:
    """Resample a 3-D image, label map or 4-D series onto `reference` (path, nibabel image or
    io.Volume) through `chain`, one volume at a time, each interpolated once, into a .nii or
    .nii.gz written atomically as it is made (`_nifti_stream`; other formats, .mgz, at the end). A series keeps its header's 4th
    dimension (TR in pixdim[4], xyzt_units, toffset). Float32 output, int32 for labels."""
    from .geometry import ops

    if interpolation not in transforms.INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(transforms.INTERPOLATIONS)}, got {interpolation!r}")
    if not isinstance(reference, io.Volume):
        reference = io.load_volume(reference, name="reference image", allow_constant=True)
    shape, affine = reference.shape, reference.affine
    image, count, volume = _volumes(input_path, interpolation)
    first = volume(0)
    # nearest on integer values (labels stored as float included) writes integers, as it read them;
    # an integer file keeps its own type, so every label survives exactly
    stored = np.dtype(image.get_data_dtype())
    integer = interpolation == "label" or (interpolation == "nearest" and (
        stored.kind in "iu" or bool(np.all(first.data == np.rint(first.data)))))
    dtype = stored if integer and stored.kind in "iu" else np.dtype(np.int32 if integer else np.float32)
    output_path = Path(os.fspath(output_path))
    header = _output_header(shape, affine, dtype, count, image.header)
    streamed = output_path.name.lower().endswith((".nii", ".nii.gz"))
    writer = _nifti_stream(output_path, header) if streamed else _image_in_memory(output_path, header, threads)
    with ops.cpu_threads(threads), writer as write:
        for t in range(count):
            data, first = (first if t == 0 else volume(t)), None  # one input volume held at a time
            inside = 0
            for slab, slab_inside in _warped_slabs(chain, data, shape, affine, interpolation, dtype):
                write(slab)
                inside += slab_inside
            del data
            if inside == 0:  # the temporary file is dropped: nothing is written
                raise InvalidTransformError(
                    f"the transforms map no voxel of the reference image into the input '{input_path}': the output "
                    "would be empty (are these the transforms for these images, in ANTs' order?)")
    return output_path


# ---------------------------------------------------------------------------------------------
# Points and streamlines

_LPS_FLIP = np.array([-1.0, -1.0, 1.0])[:, None]


def _read_points_csv(path) -> tuple[list, list, np.ndarray]:
    """(header, rows, points (3, N) as written) of a CSV with columns x, y, z."""
    path = Path(os.fspath(path))
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise io.InvalidImageError(f"points '{path}': empty file (expected a header with x, y, z)")
    header = [name.strip() for name in rows[0]]
    missing = [axis for axis in "xyz" if axis not in header]
    if missing:
        raise io.InvalidImageError(f"points '{path}': the header {header} lacks column(s) {missing}; expected x, y, z "
                                   "(antsApplyTransformsToPoints' layout)")
    columns = [header.index(axis) for axis in "xyz"]
    try:
        points = np.array([[float(row[c]) for c in columns] for row in rows[1:]], dtype=np.float64).reshape(-1, 3).T
    except (ValueError, IndexError) as error:
        raise io.InvalidImageError(f"points '{path}': a row is not numbers in x, y, z ({error})") from None
    if not np.all(np.isfinite(points)):
        raise io.InvalidImageError(f"points '{path}': non-finite coordinates")
    return header, rows[1:], points


def apply_to_points_csv(chain: TransformChain, input_path, output_path, *, space: str = "lps") -> Path:
    """Map the points of a CSV (x, y, z in `space` mm: "lps", antsApplyTransformsToPoints'
    convention, or "ras") through `chain`; other columns are copied. Written atomically."""
    if space not in POINT_SPACES:
        raise ValueError(f"points space must be one of {list(POINT_SPACES)}, got {space!r}")
    header, rows, points = _read_points_csv(input_path)
    flip = _LPS_FLIP if space == "lps" else 1.0
    mapped = chain.map_points(points * flip) * flip
    columns = [header.index(axis) for axis in "xyz"]
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for n, row in enumerate(rows):
        row = list(row)
        for axis, c in enumerate(columns):
            row[c] = repr(float(mapped[axis, n]))
        writer.writerow(row)
    return atomic.write_text(Path(os.fspath(output_path)), buffer.getvalue())


def apply_to_streamlines(chain: TransformChain, input_path, output_path, *, reference=None) -> Path:
    """Map a tractogram (.trk or .tck, nibabel.streamlines; RAS mm) through `chain`, as points.
    A .trk output takes its grid from `reference` (required then)."""
    from nibabel import streamlines

    tractogram = streamlines.load(str(input_path)).tractogram  # RAS mm
    lines = tractogram.streamlines
    mapped = chain.map_points(np.asarray(lines.get_data(), dtype=np.float64).T).T.astype(np.float32)
    ends = np.cumsum([len(line) for line in lines])[:-1]
    moved = streamlines.Tractogram(streamlines.ArraySequence(np.split(mapped, ends)),
                                   data_per_streamline=tractogram.data_per_streamline,
                                   data_per_point=tractogram.data_per_point, affine_to_rasmm=np.eye(4))
    output_path = Path(os.fspath(output_path))
    header = None
    if output_path.suffix == ".trk":
        if reference is None:
            raise ValueError("a .trk output needs a reference image (its grid goes into the header)")
        grid = reference if isinstance(reference, io.Volume) else io.load_volume(reference, name="reference image",
                                                                                 allow_constant=True)
        header = {streamlines.Field.VOXEL_TO_RASMM: grid.affine, streamlines.Field.DIMENSIONS: grid.shape,
                  streamlines.Field.VOXEL_SIZES: tuple(io.voxel_sizes(grid.affine)),
                  streamlines.Field.VOXEL_ORDER: "".join(nib.aff2axcodes(grid.affine))}
    with atomic.atomic_path(output_path) as temp:
        streamlines.save(moved, str(temp), header=header)
    return output_path


# ---------------------------------------------------------------------------------------------
# smgic-apply


def add_arguments(parser) -> None:
    """smgic-apply's command line: the one-field form of earlier versions, or ANTs-style options."""
    parser.add_argument("legacy", nargs="*", metavar="TRANSFORM REFERENCE INPUT OUTPUT",
                        help="one displacement field, the output grid, the image and the output (as before); "
                             "or use -t/-r/-i/-o")
    parser.add_argument("-t", "--transform", action="append", default=[], metavar="T",
                        help="a transform, repeated in ANTs' order (the first acts on the point first): "
                             "warp.nii.gz, inverse_warp.nii.gz or any ITK displacement field, an affine "
                             "(.mat/.txt ITK, .lta, 4x4 RAS text); [T,1] for its inverse: exact for an affine, "
                             "and for a field F solved at each point (inverse_warp.nii.gz is the inverse as a file "
                             "for other tools, within ~0.1 mm; [warp.nii.gz,1] is exact)")
    parser.add_argument("-r", "--reference", help="image defining the output grid (and a .trk output's header)")
    parser.add_argument("-i", "--input", action="append", default=[], metavar="IN",
                        help="image, label map, 4-D series (.nii/.nii.gz/.mgz), points (.csv) or streamlines "
                             "(.trk/.tck); repeat for several, each with its -o")
    parser.add_argument("-o", "--output", action="append", default=[], metavar="OUT", help="one per input")
    parser.add_argument("--interpolation", default="linear", choices=transforms.INTERPOLATIONS)
    parser.add_argument("--points-space", default="lps", choices=POINT_SPACES,
                        help="coordinates of .csv points: lps (antsApplyTransformsToPoints, default) or ras")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores, or OMP_NUM_THREADS)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")


def _jobs(args):
    """(transform specs, reference, [(input, output)]) from either command-line form."""
    if args.legacy:
        if len(args.legacy) != 4 or args.transform or args.input or args.output or args.reference:
            raise ValueError("give either TRANSFORM REFERENCE INPUT OUTPUT, or -t ... -r REFERENCE -i IN -o OUT; "
                             f"got positional {args.legacy} with options")
        transform, reference, source, output = args.legacy
        return [transform], reference, [(source, output)]
    if not args.transform:
        raise ValueError("no transform: pass -t T (repeat in ANTs' order)")
    if not args.input or len(args.input) != len(args.output):
        raise ValueError(f"each -i needs its -o: got {len(args.input)} input(s) and {len(args.output)} output(s)")
    return args.transform, args.reference, list(zip(args.input, args.output))


def _kind(path) -> str:
    name = str(path).lower()
    if name.endswith(".csv"):
        return "points"
    if name.endswith((".trk", ".tck")):
        return "streamlines"
    return "image"


def apply_to_file(chain: TransformChain, source, output, *, reference=None, interpolation: str = "linear",
                  points_space: str = "lps", threads: int | None = None) -> Path:
    """`chain` applied to one file, by its kind: points (.csv), streamlines (.trk/.tck) or an
    image (anything else; needs `reference`, the output grid)."""
    kind = _kind(source)
    if kind == "points":
        return apply_to_points_csv(chain, source, output, space=points_space)
    if kind == "streamlines":
        return apply_to_streamlines(chain, source, output, reference=reference)
    if reference is None:
        raise ValueError(f"input '{source}' is an image: a reference image (the output grid) is needed")
    return apply_to_image(chain, source, reference, output, interpolation=interpolation, threads=threads)


def run(args, logger) -> int:
    """smgic-apply: check every output before any work, load the chain once, apply it to each input."""
    from .io import outputs

    specs, reference, jobs = _jobs(args)
    # Nothing this run reads is ever replaced, --overwrite or not.
    protected = [parse_transform(spec)[0] for spec in specs] + [reference] + [source for source, _ in jobs]
    for source, output in jobs:
        outputs.check_output_file(output, overwrite=args.overwrite, protected=protected)
        if _kind(source) == "image" and reference is None:
            raise ValueError(f"input '{source}' is an image: pass -r REFERENCE (the output grid)")
    grid = None if reference is None else io.load_volume(reference, name="reference image", allow_constant=True)
    images = [source for source, _ in jobs if _kind(source) == "image"]
    # a FLIRT matrix relates the reference grid and the one image it reads
    chain = load_chain(specs, fixed=grid, moving=images[0] if len(images) == 1 else None)
    for step in chain.steps:
        field = step.field if isinstance(step, InverseFieldStep) else step
        if isinstance(field, FieldStep) and grid is not None:
            transforms.check_field_placement(field.displacement, field.affine, grid.shape, grid.affine,
                                             name=f"transform '{field.source}'")
    for source, output in jobs:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InverseNotConvergedWarning)
            apply_to_file(chain, source, output, reference=grid, interpolation=args.interpolation,
                          points_space=args.points_space, threads=args.threads)
        _report_unconverged(caught, source, logger)
        logger.info("wrote %s", output)
    return 0


def _report_unconverged(caught, source, logger) -> None:
    """One log line per inverted field for the InverseNotConvergedWarnings of one input (one per
    call of the step: per slab of an image), summed; other warnings go on as they came."""
    missed = {}
    for warning in caught:
        if isinstance(warning.message, InverseNotConvergedWarning):
            key = (warning.message.source, warning.message.tolerance)
            missed[key] = missed.get(key, 0) + warning.message.count
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    for (field, tolerance), count in missed.items():
        logger.warning("%s: [%s,1] left %d point(s) or voxel(s) off by more than %g mm (Newton did not converge, "
                       "near a fold of the field); they keep their best estimate", source, field, count, tolerance)
