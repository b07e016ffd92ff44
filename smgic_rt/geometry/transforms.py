"""Between the model's voxel displacements and the files ANTs/ITK read.

Three coordinate systems meet here:

* a grid's voxel indices (voxel centres at integers, axis order of the NIfTI array);
* nibabel world coordinates, RAS+ millimetres (``affine @ [i, j, k, 1]``);
* ITK/ANTs physical coordinates, LPS millimetres (x and y negated).

A user-facing transform is an ITK displacement-field NIfTI (float32, shape (X, Y, Z, 1, 3),
intent "vector", LPS mm) on the grid of the image it maps *from*: a world point ``p`` of that
grid maps to ``p + d(p)`` in the other image's world (DESIGN.md, checked against antspyx).
``ants.apply_transforms(fixed, moving, [warp])`` then samples ``moving`` at ``p + d(p)``.

Inside this module displacements in world space are arrays ``(3, X, Y, Z)`` in RAS mm
(channel c = RAS axis c); the LPS flip happens only when a field becomes an ITK image.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import io
from ..io import InvalidImageError, make_nifti

__all__ = [
    "RAS_TO_LPS",
    "voxel_grid",
    "world_points",
    "displacement_to_itk_image",
    "itk_image_to_displacement",
    "InvalidTransformError",
    "check_field_placement",
    "model_to_native_displacement",
    "model_to_native_inverse",
    "sampling_coordinates",
    "sample_image",
    "warp_image",
    "apply_displacement_field",
    "displacement_on_grid",
    "field_jacobian_determinant",
    "quantize",
    "linear_quasi_interpolant",
    "FIELD_QUANTUM_MM",
    "JACOBIAN_QUANTUM",
    "write_itk_affine",
    "read_itk_affine",
    "INTERPOLATIONS",
]

# Diagonal flip between RAS and LPS; its own inverse.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
INTERPOLATIONS = ("linear", "nearest", "label")
_NIFTI_INTENT_VECTOR = 1007
_NIFTI_INTENT_DISPVECT = 1006  # "displacement vector": also a vector field, written by some tools
_VECTOR_INTENTS = (_NIFTI_INTENT_VECTOR, _NIFTI_INTENT_DISPVECT)
# The most field voxels (a strided sample) that decide whether a field maps into an image.
_PLACEMENT_SAMPLE_VOXELS = 1 << 18


class InvalidTransformError(InvalidImageError):
    """A transform file that is not a usable ITK displacement field (or does not fit the images
    it is applied to); the message names the file, what was expected and what came."""


def voxel_grid(shape) -> np.ndarray:
    """Voxel index coordinates of a grid, shape (3, X, Y, Z), float64."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))


def _apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """matrix (4x4) applied to points (3, ...) as homogeneous coordinates."""
    matrix = np.asarray(matrix, dtype=np.float64)
    flat = points.reshape(3, -1)
    out = matrix[:3, :3] @ flat + matrix[:3, 3:4]
    return out.reshape(points.shape)


def world_points(shape, affine) -> np.ndarray:
    """RAS mm coordinates of every voxel centre of a grid, (3, X, Y, Z), float64."""
    return _apply_matrix(affine, voxel_grid(shape))


# ---------------------------------------------------------------------------------------------
# ITK displacement-field images


def displacement_to_itk_image(displacement_ras_mm: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """ITK/ANTs displacement-field NIfTI from a RAS-mm displacement (3, X, Y, Z) on a grid.

    The result is float32 of shape (X, Y, Z, 1, 3), intent "vector", components in LPS mm,
    carrying `affine` (the grid the field lives on): what `antsApplyTransforms` reads. The LPS
    flip is a sign change, so a float32 input is stored exactly (up to sign).
    """
    displacement = np.asarray(displacement_ras_mm)
    if displacement.ndim != 4 or displacement.shape[0] != 3:
        raise ValueError(f"displacement_ras_mm must have shape (3, X, Y, Z), got {displacement.shape}")
    data = np.empty((*displacement.shape[1:], 1, 3), dtype=np.float32)
    for c, sign in enumerate((-1.0, -1.0, 1.0)):
        np.multiply(displacement[c], np.float32(sign), out=data[:, :, :, 0, c], casting="unsafe")
    image = make_nifti(data, affine)
    image.header.set_intent("vector", (), name="")
    image.header.set_xyzt_units("mm")
    return image


def _intent_text(header) -> str:
    try:
        code = int(header["intent_code"])
    except (KeyError, TypeError, ValueError):
        return "no intent"
    try:
        label = nib.nifti1.intent_codes.label[code]
    except KeyError:
        label = "unknown"
    return f"intent {label} ({code})"


def itk_image_to_displacement(field, *, name: str = "transform") -> tuple[np.ndarray, np.ndarray]:
    """(RAS-mm displacement (3, X, Y, Z) float32, affine float64) from an ITK displacement field.

    Accepts a path or a nibabel NIfTI image laid out as ITK writes displacement fields, shape
    (X, Y, Z, 1, 3) (intent vector, displacement vector or none), or of shape (X, Y, Z, 3) only
    with a vector intent: a plain 4-D image of 3 volumes is a time series, not a field. Values
    keep the file's float32 precision (fields of other types are converted).

    Raises
    ------
    FileNotFoundError, InvalidTransformError
        Naming the file: unreadable, truncated or damaged, not NIfTI, not a displacement field
        (layout or intent), a broken affine (io's voxel-size bounds, finite, invertible),
        complex or non-finite values.
    """
    source = None
    if isinstance(field, (str, os.PathLike)):
        path = Path(os.fspath(field)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{name}: no such file: '{path}'")
        try:
            field, source = io.open_image(path, name)
        except InvalidImageError as error:
            raise InvalidTransformError(f"{error} (expected an ITK displacement field)") from None
    if not isinstance(field, nib.spatialimages.SpatialImage):
        raise InvalidTransformError(f"{name}: expected a displacement-field image or its path, got {type(field).__name__}")
    source = source or field.get_filename()
    where = f"{name} '{source}'" if source else name
    if not isinstance(field.header, nib.nifti1.Nifti1Header):
        raise InvalidTransformError(
            f"{where}: displacement fields must be NIfTI (ITK/ANTs layout), got a {type(field).__name__}"
        )
    try:
        # A file's header was checked whole by open_image; an image in memory means its affine.
        io.check_header(field, name, source, file_forms=False)
    except InvalidImageError as error:
        raise InvalidTransformError(str(error)) from None
    shape = tuple(int(n) for n in field.shape)
    intent = int(field.header["intent_code"])
    if len(shape) == 5 and shape[3] == 1 and shape[4] == 3:
        if intent not in (0, *_VECTOR_INTENTS):
            raise InvalidTransformError(
                f"{where}: has the ITK field layout {shape} but {_intent_text(field.header)}; a displacement field has "
                "intent vector (1007) or none"
            )
    elif len(shape) == 4 and shape[3] == 3:
        if intent not in _VECTOR_INTENTS:
            raise InvalidTransformError(
                f"{where}: is a 4-D image of 3 volumes (shape {shape}, {_intent_text(field.header)}), not a displacement "
                "field: ITK/ANTs fields have shape (X, Y, Z, 1, 3) with intent vector, as antsRegistration and "
                "smgic-register write them"
            )
    else:
        raise InvalidTransformError(
            f"{where}: must be an ITK displacement field of shape (X, Y, Z, 1, 3) (intent vector), got shape {shape} "
            f"with {_intent_text(field.header)}"
        )
    if min(shape[:3]) < 2:
        raise InvalidTransformError(f"{where}: a displacement field needs at least 2 voxels along each axis, got shape {shape}")
    try:
        affine = io.check_affine(io.image_affine(field, name, source), where)  # as ITK reads it
    except InvalidImageError as error:
        raise InvalidTransformError(str(error)) from None
    try:
        values = io.read_voxels(field, name, source)
    except InvalidImageError as error:
        raise InvalidTransformError(str(error)) from None
    data = values[:, :, :, 0, :] if values.ndim == 5 else values
    ras = np.empty((3, *shape[:3]), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 becomes inf: refused below
        for c, sign in enumerate((-1.0, -1.0, 1.0)):
            np.multiply(data[..., c], sign, out=ras[c], casting="unsafe")
    finite = np.isfinite(ras)
    if not finite.all():
        raise InvalidTransformError(
            f"{where}: has {int(finite.size - finite.sum())} non-finite displacement values (NaN, infinite, or beyond "
            f"float32) out of {finite.size}"
        )
    return ras, affine


def check_field_placement(displacement_ras_mm: np.ndarray, field_affine: np.ndarray, reference_shape, reference_affine,
                          image=None, *, name: str = "transform", reference_name: str = "reference image",
                          check_mapping: bool = True) -> None:
    """Refuse a field that cannot map the reference (and `image`, an io.Volume) meaningfully.

    * the field's grid must overlap the reference's field of view (world boxes; outside its grid
      a field maps points to themselves, so a grid elsewhere does nothing);
    * no displacement may be longer than the diagonal of the box holding the field's, the
      reference's and the image's fields of view together: such a vector sends a point of one
      of them beyond all of them (a 1e6 mm displacement is a broken file);
    * with `image` and `check_mapping`, some voxels of the field's grid must map into the image's
      field of view (a strided sample decides), or the output would be all zeros (pass the
      field resampled on the reference grid to decide it for the reference's voxels).

    `displacement_ras_mm` (3, X, Y, Z) lives on `field_affine`'s grid. Raises
    InvalidTransformError saying by how much the grids miss or the magnitude exceeds.
    """
    field_shape = tuple(int(n) for n in displacement_ras_mm.shape[1:])
    reference_shape = tuple(int(n) for n in reference_shape)
    field_box = io.world_box(field_shape, field_affine)
    reference_box = io.world_box(reference_shape, reference_affine)
    gap = np.maximum(0.0, np.maximum(reference_box[0] - field_box[1], field_box[0] - reference_box[1]))
    if np.any(gap > 0):
        raise InvalidTransformError(
            f"{name}: its grid {io.format_world_box(*field_box)} does not overlap the {reference_name}'s field of view "
            f"{io.format_world_box(*reference_box)} (RAS); it misses by {float(np.linalg.norm(gap)):.1f} mm"
        )
    boxes = [field_box, reference_box] + ([io.world_box(image.shape, image.affine)] if image is not None else [])
    low = np.min([b[0] for b in boxes], axis=0)
    high = np.max([b[1] for b in boxes], axis=0)
    diagonal = float(np.linalg.norm(high - low))
    # float32 squares: the bound is a diagonal of hundreds of mm, far above float32's rounding.
    squared = np.einsum("c...,c...->...", displacement_ras_mm, displacement_ras_mm)
    longest = float(np.sqrt(squared.max()))
    if longest > diagonal:
        where = np.unravel_index(int(np.argmax(squared)), squared.shape)
        raise InvalidTransformError(
            f"{name}: displacements up to {longest:.4g} mm (at field voxel {tuple(int(i) for i in where)}) are longer "
            f"than the {diagonal:.1f} mm diagonal of the field's, the {reference_name}'s"
            f"{' and the image' + chr(39) + 's' if image is not None else ''} fields of view together; "
            "not a displacement field between these images (wrong units or a broken file?)"
        )
    if image is not None and check_mapping:
        _check_maps_into(displacement_ras_mm, field_affine, image, name=name, reference_name=reference_name)


def _check_maps_into(displacement_ras_mm, field_affine, image, *, name: str, reference_name: str) -> None:
    field_shape = tuple(int(n) for n in displacement_ras_mm.shape[1:])
    step = max(1, int(np.ceil((int(np.prod(field_shape)) / _PLACEMENT_SAMPLE_VOXELS) ** (1 / 3))))
    index = np.stack(np.meshgrid(*[np.arange(0, n, step, dtype=np.float64) for n in field_shape], indexing="ij")).reshape(3, -1)
    points = _apply_matrix(field_affine, index) + displacement_ras_mm[:, ::step, ::step, ::step].reshape(3, -1)
    in_image = _apply_matrix(np.linalg.inv(np.asarray(image.affine, dtype=np.float64)), points)
    upper = np.asarray(image.shape, dtype=np.float64)[:, None] - 0.5
    if not np.any(np.all((in_image >= -0.5) & (in_image <= upper), axis=0)):
        image_box = io.world_box(image.shape, image.affine)
        mapped_low, mapped_high = points.min(axis=1), points.max(axis=1)
        miss = np.maximum(0.0, np.maximum(image_box[0] - mapped_high, mapped_low - image_box[1]))
        raise InvalidTransformError(
            f"{name}: maps no voxel of the {reference_name} into the {image.name}"
            f"{' ' + repr(image.source) if image.source else ''}: the mapped points span {io.format_world_box(mapped_low, mapped_high)}, "
            f"the {image.name} {io.format_world_box(*image_box)} (RAS)"
            + (f"; they miss by {float(np.linalg.norm(miss)):.1f} mm" if np.any(miss > 0) else "")
            + "; the output would be empty (is this the transform for these images?)"
        )


# ---------------------------------------------------------------------------------------------
# Model grid <-> native grids


def _ops():
    # Imported here so that pure file conversions work before the compiled kernels are built.
    from . import ops

    return ops


_IDENTITY_3X4 = np.hstack([np.eye(3), np.zeros((3, 1))])


def _float32(array):
    return _ops().contiguous_float32(array)


def model_to_native_displacement(
    model_displacement: np.ndarray,
    model_affine: np.ndarray,
    native_shape,
    native_affine: np.ndarray,
    *,
    world_before: np.ndarray | None = None,
    world_after: np.ndarray | None = None,
) -> np.ndarray:
    """Turn a model-grid voxel displacement into a RAS-mm displacement on a native grid.

    For each native voxel centre ``p`` (world), the composed map is
    ``p -> world_after(G (m + u(m)))`` with ``m = G^-1 world_before(p)``, where ``G`` is
    `model_affine` and ``u`` is `model_displacement` (3, Xm, Ym, Zm) in model voxels, read by
    trilinear interpolation with border padding. Returns ``map(p) - p`` as (3, X, Y, Z) float32.

    `world_before` / `world_after` are optional 4x4 world -> world matrices (RAS mm), e.g. the
    affine stage's fixed-world -> moving-world matrix after the forward deformation, or its
    inverse before the inverse deformation.
    """
    composition = _NativeComposition(model_displacement, model_affine, native_shape, native_affine, world_before,
                                     world_after)
    return composition.read_to_world(model_displacement)


class _NativeComposition:
    """``p -> world_after(G (m + u(m)))``, ``m = G^-1 world_before(p)``, at the voxels ``x`` of a
    native grid. Every step but u is affine, so ``m(x) = Q x`` with ``Q = G^-1 before N``, and
    ``map(p) - p = (after G Q - N) x + after_lin G_lin u(m(x))``: one affine resampling of u in
    `read`, then the per-voxel affine and linear terms in `to_world` (or both in one pass:
    `read_to_world`)."""

    def __init__(self, model_displacement, model_affine, native_shape, native_affine, world_before, world_after):
        if model_displacement.ndim != 4 or model_displacement.shape[0] != 3:
            raise ValueError(f"model_displacement must have shape (3, X, Y, Z), got {model_displacement.shape}")
        native_affine = np.asarray(native_affine, dtype=np.float64)
        self.model_affine = np.asarray(model_affine, dtype=np.float64)
        before = np.eye(4) if world_before is None else np.asarray(world_before, dtype=np.float64)
        self.after = np.eye(4) if world_after is None else np.asarray(world_after, dtype=np.float64)
        self.shape = tuple(int(n) for n in native_shape)
        self.to_model = np.linalg.solve(self.model_affine, before @ native_affine)
        self.offset = self.after @ self.model_affine @ self.to_model - native_affine

    def read(self, model_displacement):
        """u(m(x)), in model voxels, at every native voxel (trilinear, border padding)."""
        return _ops().affine_resample(_float32(model_displacement), self.to_model, self.shape,
                                      interpolation="linear", padding="border")

    def to_world(self, u_at):
        """``map(p) - p`` in RAS mm from `read`'s values (written into them)."""
        return _ops().affine_field(u_at, self.offset[:3], self._linear(), out=u_at)

    def read_to_world(self, model_displacement):
        """``to_world(read(model_displacement))``, the same values in one pass."""
        return _ops().affine_resample_field(_float32(model_displacement), self.to_model, self.shape, self.offset[:3],
                                            self._linear(), padding="border")

    def _linear(self):
        return self.after[:3, :3] @ self.model_affine[:3, :3]


def model_to_native_inverse(forward_model, inverse_model, model_affine, native_shape, native_affine, *,
                            world_before=None, tolerance_mm: float = 0.01, max_iterations: int = 10):
    """The inverse of ``m -> m + forward_model(m)`` (model voxels) as a RAS-mm displacement on a
    native grid, `world_before` before it (as in `model_to_native_displacement`), its deformable
    part the numerical inverse of the forward one at every native voxel: `inverse_model` (e.g.
    ``exp(-v)``) read there and polished by `smgic_rt.geometry.ops.invert_displacement` (its
    stopping rule, with `tolerance_mm` in the model grid's mm). Returns ``(field, polish)``:
    the (3, X, Y, Z) float32 field and the `ops.InverseDisplacement` (iterations, residuals)."""
    composition = _NativeComposition(inverse_model, model_affine, native_shape, native_affine, world_before, None)
    spacing = np.linalg.norm(composition.model_affine[:3, :3], axis=0)
    polish = _ops().invert_displacement(_float32(forward_model), composition.read(inverse_model),
                                        composition.to_model, spacing=spacing, tolerance=tolerance_mm,
                                        max_iterations=max_iterations)
    return composition.to_world(polish.displacement), polish


def _image_voxel_map(field_affine: np.ndarray, image_affine: np.ndarray, *, relative: bool) -> tuple:
    """``(matrix, linear)`` for `ops.affine_field` that take a RAS-mm displacement ``d`` on a field's
    grid to the voxel coordinates in an image (with `image_affine`) of ``p + d(p)`` for every field
    voxel ``x`` (``p = field_affine x``), or with `relative` to those coordinates minus ``x``."""
    to_image = np.linalg.inv(np.asarray(image_affine, dtype=np.float64))
    matrix = (to_image @ np.asarray(field_affine, dtype=np.float64))[:3]
    if relative:
        matrix = matrix - _IDENTITY_3X4
    return matrix, to_image[:3, :3]


def _to_image_voxels(displacement_ras_mm: np.ndarray, field_affine: np.ndarray, image_affine: np.ndarray,
                     *, relative: bool) -> np.ndarray:
    """`_image_voxel_map`'s coordinates as an array (float32, (3, X, Y, Z))."""
    matrix, linear = _image_voxel_map(field_affine, image_affine, relative=relative)
    return _ops().affine_field(_float32(displacement_ras_mm), matrix, linear)


def sampling_coordinates(displacement_ras_mm: np.ndarray, field_affine: np.ndarray, image_affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates in an image (with `image_affine`) of ``p + d(p)`` for every field voxel
    (float32, (3, X, Y, Z))."""
    return _to_image_voxels(displacement_ras_mm, field_affine, image_affine, relative=False)


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")


def _sample_relative(data: np.ndarray, displacement: np.ndarray, interpolation: str, displacement_map=None) -> np.ndarray:
    """`data` read at ``x + u(x)`` (voxels of `data`; `u` the displacement, read through
    `displacement_map` as `ops.warp` does), zeros outside. Integer data (label maps) read by
    "nearest" or "label" stays integer: warped in its own type where `ops.warp_labels` has it
    (else as int64), never through float, and returned in `data`'s own type."""
    if data.dtype.kind in "iub" and interpolation != "linear":
        dtype = data.dtype if data.dtype.name in _ops().LABEL_DTYPES else np.int64
        labels = np.ascontiguousarray(data, dtype=dtype)[None]
        warped = _ops().warp_labels(labels, displacement, interpolation=interpolation, padding="zeros",
                                    displacement_map=displacement_map)[0]
        return warped.astype(data.dtype, copy=False)
    out = _ops().warp(_float32(data)[None], displacement, interpolation=interpolation, padding="zeros",
                      displacement_map=displacement_map)[0]
    return out.astype(np.int32) if interpolation == "label" else out


def sample_image(data: np.ndarray, coordinates: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Sample a 3-D array at voxel `coordinates` (3, X, Y, Z); zeros outside.

    ``interpolation``: "linear" (trilinear), "nearest", or "label": each label's indicator is
    resampled trilinearly and the label with the largest value wins (ANTs' "generic label"),
    which keeps label boundaries smooth without inventing labels.
    """
    _check_interpolation(interpolation)
    displacement = _ops().affine_field(_float32(coordinates), -_IDENTITY_3X4, np.eye(3))  # coordinates - x
    return _sample_relative(data, displacement, interpolation)


def warp_image(data: np.ndarray, image_affine: np.ndarray, displacement_ras_mm: np.ndarray, field_affine: np.ndarray,
               interpolation: str = "linear") -> np.ndarray:
    """The image (`data` on `image_affine`) read at ``p + d(p)`` for every voxel ``p`` of the
    field's grid, as ``antsApplyTransforms`` does with that field; zeros outside the image."""
    _check_interpolation(interpolation)
    # The field's change of units is done inside the warp, voxel by voxel: no converted copy of a
    # field the size of the output grid (3 floats a voxel) is ever made.
    displacement_map = _image_voxel_map(field_affine, image_affine, relative=True)
    return _sample_relative(data, _float32(displacement_ras_mm), interpolation, displacement_map)


def displacement_on_grid(displacement_ras_mm: np.ndarray, field_affine: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """The field re-read at the voxel centres of another grid (trilinear; zero outside).

    Zero outside the field's domain is what ITK's DisplacementFieldTransform does there
    (the point maps to itself).
    """
    if tuple(shape) == displacement_ras_mm.shape[1:] and np.allclose(affine, field_affine, atol=1e-6):
        return displacement_ras_mm
    to_field = np.linalg.inv(np.asarray(field_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    return _ops().affine_resample(_float32(displacement_ras_mm), to_field, tuple(int(n) for n in shape),
                                  interpolation="linear", padding="zeros")


def apply_displacement_field(field, image, *, interpolation: str = "linear", reference=None, name: str = "transform"):
    """Resample `image` (an io.Volume) through an ITK displacement field.

    `field` is an ITK displacement-field image (or path); the output lies on `reference`
    (a ``(shape, affine)`` pair) or, by default, on the field's own grid, and each output
    voxel ``p`` reads the image at ``p + d(p)``, as ``antsApplyTransforms`` does.
    Returns (array, affine): float32 for "linear"; for "nearest" and "label" the image's own
    values, in its integer type when it has one (labels exact at any size).

    Before any resampling the field is checked (`itk_image_to_displacement`: layout, intent,
    affine, finite values) and so is its placement (`check_field_placement`: grid overlapping
    the reference, plausible magnitudes, some voxels mapping into `image`); a field that fails
    raises InvalidTransformError naming it.
    """
    _check_interpolation(interpolation)
    displacement, field_affine = itk_image_to_displacement(field, name=name)
    if reference is None:
        shape, affine = displacement.shape[1:], field_affine
    else:
        shape, affine = tuple(int(n) for n in reference[0]), io.check_affine(reference[1], "reference")
    reference_name = "field's own grid" if reference is None else "reference image"
    check_field_placement(displacement, field_affine, shape, affine, image, name=name, reference_name=reference_name,
                          check_mapping=reference is None)
    if reference is not None:
        displacement = displacement_on_grid(displacement, field_affine, shape, affine)
        _check_maps_into(displacement, affine, image, name=name, reference_name="reference image")
    return warp_image(image.data, image.affine, displacement, affine, interpolation), affine


# What the written fields and Jacobian are rounded to: a float32 displacement's low bits lie
# below any registration's accuracy and are what gzip cannot compress (docs/tuning.md). Powers
# of two keep the values exact float32 numbers that every reader reads as they are.
FIELD_QUANTUM_MM = 2.0 ** -10
JACOBIAN_QUANTUM = 2.0 ** -14


def quantize(array, quantum: float):
    """`array` (float32, numpy or cupy) rounded in place to the nearest multiple of `quantum`, a
    power of two (so that scaling by it is exact); returns it."""
    if np.log2(quantum) != round(np.log2(quantum)) or array.dtype != np.float32:
        raise ValueError(f"quantize needs a power-of-two quantum and a float32 array, got {quantum} and {array.dtype}")
    xp = _ops().array_namespace(array)
    xp.multiply(array, np.float32(1.0 / quantum), out=array)
    xp.rint(array, out=array)
    xp.multiply(array, np.float32(quantum), out=array)
    return array


def linear_quasi_interpolant(samples):
    """Lattice values whose trilinear interpolation follows a smooth field better than its own
    samples do: ``f - (1/12) sum_axis (f[i-1] - 2 f[i] + f[i+1])`` (float32 (C, X, Y, Z), numpy or
    cupy; along each axis its first and last points take no correction from that axis).

    Linear interpolation between samples of f lies off f by ``h^2 t (1 - t) f''/2`` (h the step,
    t the fraction of it), all on one side for a curved f, up to ``h^2 f''/8`` at mid-step. Values
    lowered by ``h^2 f''/12`` centre that error (zero on average over the step: the least-squares
    values to second order), and the largest becomes ``h^2 f''/12``, at the lattice points: a
    third less. A field on its own lattice (the compact forward field: trilinear on the model
    lattice) is exact as sampled and does not need this; the compact inverse field lies in the
    moving image's world, where it is not trilinear on its lattice: there this brings it closer
    to the native inverse (tests/test_fields.py; docs/tuning.md). Affine parts (zero second
    differences) are left as they are.
    """
    if samples.ndim != 4 or samples.dtype != np.float32:
        raise ValueError(f"samples must be a float32 (C, X, Y, Z) array, got {samples.dtype} {samples.shape}")
    return _ops().quasi_interpolant(_float32(samples))


def field_jacobian_determinant(displacement_ras_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """det of the Jacobian of ``p -> p + d(p)`` on the field's grid (float32, (X, Y, Z)).

    det(I + grad_p d) equals det(I + grad_i u) for the same map written in voxel units
    ``u = R^-1 d`` (R the affine's 3x3 part), which is what the kernel computes: it reads the
    RAS-mm field and takes each value of u as ``ops.affine_field`` would store it, so no
    voxel-unit copy of the field is made.
    """
    ops = _ops()
    rotation_inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3])
    xp = ops.array_namespace(displacement_ras_mm)
    field = xp.ascontiguousarray(displacement_ras_mm, dtype=np.float32)  # no copy when it already is
    return ops.jacobian_determinant(field, linear=rotation_inverse)


# ---------------------------------------------------------------------------------------------
# ITK affine transform files (.mat, MATLAB v4 as ITK writes them): nitransforms' codec, through
# smgic_rt.io.transform_formats (which also reads and writes FSL and FreeSurfer matrices)


def write_itk_affine(matrix_ras: np.ndarray, path) -> Path:
    """Write a 4x4 fixed-world -> moving-world RAS matrix as an ITK AffineTransform .mat.

    ITK transforms map fixed LPS points to moving LPS points, ``T(x) = A x + t`` (centre 0),
    which is what `antsApplyTransforms` expects from a fixed->moving affine.
    """
    from ..io import transform_formats

    return transform_formats.write_affine(matrix_ras, path, fmt="itk")


def read_itk_affine(path) -> np.ndarray:
    """Read an ITK affine (.mat as ITK/ANTs write it, or Insight text) as a 4x4 RAS matrix."""
    from ..io import transform_formats

    return transform_formats.read_affine(path, fmt="itk")
