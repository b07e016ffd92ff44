"""The one preprocessing, shared by training (`training.data`) and the runtime (`Registrar`).

Works on ``(array, affine)`` pairs (nibabel affine: voxel index -> RAS+ mm); no file I/O.
The model grid is a canonical RAS+ grid (diagonal affine, positive spacing) of the bundle's
shape, centred on the image's foreground, so any orientation, voxel size or field of view in
the file lands on the same kind of grid the network was trained on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..geometry import ops
from ..geometry.filters import smooth

__all__ = ["grid_around", "model_grid", "foreground_centre", "antialias", "resample", "normalize_intensity", "prepare",
           "IntensityScaling", "intensity_parameters", "normalization_record", "background_level"]

# Foreground: voxels above this fraction of the robust maximum (99th percentile). Low enough to
# keep grey matter in T1 images, high enough to drop scanner background noise.
FOREGROUND_FRACTION = 0.1


@dataclass(frozen=True)
class IntensityScaling:
    """Robust intensity scaling to [0, 1]; a bundle records the values it was trained with."""

    foreground_fraction: float = FOREGROUND_FRACTION
    # These percentiles of the foreground map to 0 and 1.
    low_percentile: float = 0.5
    high_percentile: float = 99.5


# The name bundles record (config.json) for this scaling: kept as first written, whatever the module path.
NORMALIZATION_FUNCTION = "smgic_rt.preprocess.normalize_intensity"


def normalization_record(scaling: IntensityScaling = IntensityScaling()) -> dict:
    """The ``normalization`` entry of a bundle's config.json for `scaling`."""
    return {"function": NORMALIZATION_FUNCTION, **dataclasses.asdict(scaling),
            "note": "inputs are model-grid arrays from smgic_rt.preprocess.prepare"}


def intensity_parameters(normalization: dict | None) -> IntensityScaling:
    """The scaling a bundle's ``normalization`` entry asks for (None: the default).

    A bundle trained with another normalisation cannot be run correctly by this runtime, so an
    unknown function or parameter is refused rather than ignored.
    """
    if normalization is None:
        return IntensityScaling()
    if not isinstance(normalization, dict) or normalization.get("function") != NORMALIZATION_FUNCTION:
        found = normalization.get("function") if isinstance(normalization, dict) else normalization
        raise ValueError(f"bundle normalization must be {NORMALIZATION_FUNCTION!r} (the one this runtime applies), "
                         f"got {found!r}")
    names = {f.name for f in dataclasses.fields(IntensityScaling)}
    unknown = sorted(set(normalization) - names - {"function", "note"})
    if unknown:
        raise ValueError(f"bundle normalization has parameters this runtime does not know: {unknown}; "
                         f"known: {sorted(names)}")
    values = {name: float(normalization[name]) for name in names if name in normalization}
    scaling = IntensityScaling(**values)
    if not (0 <= scaling.foreground_fraction < 1 and 0 <= scaling.low_percentile < scaling.high_percentile <= 100):
        raise ValueError(f"bundle normalization parameters out of range: {dataclasses.asdict(scaling)}")
    return scaling


def _check_volume(data, affine):
    data = ops.array_namespace(data).asarray(data)
    if data.ndim != 3:
        raise ValueError(f"image must be 3-D, got shape {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular (zero voxel size)")
    return data, affine


def _three(value, name, cast):
    values = list(value) if isinstance(value, (tuple, list, np.ndarray)) else [value] * 3
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries, got {value!r}")
    return tuple(cast(v) for v in values)


def foreground_centre(data, affine) -> np.ndarray:
    """World (RAS+ mm) centre of mass of the foreground mask."""
    data, affine = _check_volume(data, affine)
    xp = ops.array_namespace(data)
    # A strided view keeps this cheap on 1 mm heads; the centre moves by well under a voxel.
    step = max(1, int(round((data.size / 2e6) ** (1 / 3))))
    sample = xp.asarray(data[::step, ::step, ::step], dtype=np.float32)
    finite = sample[xp.isfinite(sample)]
    if finite.size == 0:
        raise ValueError("image has no finite voxels")
    mask = sample > FOREGROUND_FRACTION * xp.percentile(finite, 99)
    if not bool(mask.any()):
        mask = sample > finite.min()
    if not bool(mask.any()):
        raise ValueError("image is constant: no foreground to centre the model grid on")
    index = ops.to_host(xp.argwhere(mask).mean(axis=0)) * step
    return affine[:3, :3] @ index + affine[:3, 3]


def grid_around(centre, shape, spacing) -> np.ndarray:
    """Affine of a RAS+ grid of `shape` voxels of `spacing` mm whose middle sits at world `centre`."""
    shape = _three(shape, "shape", int)
    spacing = _three(spacing, "spacing", float)
    if min(shape) < 1 or min(spacing) <= 0:
        raise ValueError(f"shape and spacing must be positive, got {shape} and {spacing}")
    grid = np.diag([*spacing, 1.0])
    grid[:3, 3] = np.asarray(centre, dtype=np.float64) - np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0
    return grid


def model_grid(data, affine, shape, spacing) -> np.ndarray:
    """Affine of a RAS+ grid of `shape` voxels of `spacing` mm centred on the image's foreground."""
    return grid_around(foreground_centre(data, affine), shape, spacing)


def antialias(data, affine, spacing, strength: float = 1.0) -> np.ndarray:
    """`data` low-pass filtered for resampling to voxels of `spacing` mm: a Gaussian whose FWHM
    makes up the difference in voxel size, so that downsampling does not alias.

    `strength` scales that Gaussian's width: 1 (the default, and what training prepares its
    images with) as above; below 1 a narrower one that keeps more of the edges (0: none). The
    refinement takes 0.5 (`smgic_rt.methods.refine.RefineOptions.antialias`, where it is measured).
    """
    data, affine = _check_volume(data, affine)
    if not 0 <= strength <= 1:
        raise ValueError(f"antialias strength must be in [0, 1], got {strength!r}")
    spacing = np.asarray(_three(spacing, "spacing", float))
    voxel = np.linalg.norm(affine[:3, :3], axis=0)
    # Target voxel size along each data axis, in data voxels (axes may be permuted or oblique).
    directions = affine[:3, :3] / voxel
    ratio = np.sqrt((np.square(directions) * spacing[:, None] ** 2).sum(axis=0)) / voxel
    sigmas = strength * np.sqrt(np.maximum(ratio ** 2 - 1.0, 0.0)) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    # Below 0.3 voxel the filter would barely differ from the identity: leave that axis alone.
    sigmas = np.where(sigmas < 0.3, 0.0, sigmas)
    return smooth(ops.contiguous_float32(data)[None], sigmas)[0]


def resample(data, affine, grid_affine, shape, interpolation="linear", smooth=True,
             antialias_strength: float = 1.0) -> np.ndarray:
    """`data` (on `affine`) resampled onto the grid `grid_affine` of `shape`; zeros outside.

    Linear resampling onto coarser voxels first applies `antialias` at `antialias_strength`
    (unless `smooth` is False because the caller already did, as training does once per template).
    """
    data, affine = _check_volume(data, affine)
    shape = _three(shape, "shape", int)
    grid_affine = np.asarray(grid_affine, dtype=np.float64)
    volume = ops.contiguous_float32(data)
    if interpolation == "linear" and smooth:
        volume = antialias(volume, affine, np.linalg.norm(grid_affine[:3, :3], axis=0), antialias_strength)
    matrix = np.linalg.solve(affine, grid_affine)  # grid voxel -> data voxel
    return ops.affine_resample(volume[None], matrix, shape, interpolation=interpolation, padding="zeros")[0]


# A value held by at least this fraction of the voxels, at or below the median, is a flat
# background (zero, shifted, z-scored): its exact value is the background level.
FLAT_BACKGROUND_FRACTION = 0.05
_BACKGROUND_SAMPLE = 2 ** 17  # voxels read to find the background (a strided view)


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The intensity that best splits `values` in two classes (Otsu: largest between-class variance)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight_low = np.cumsum(counts, dtype=np.float64)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.nanargmax(between[:-1])) + 1])


def background_level(data) -> float:
    """The intensity of the image's background, as the image's own histogram says: 0.0 for the
    usual image whose background is already at or near zero (then nothing changes), else the
    level that registration treats as zero (a shifted, negative or z-scored background).

    A flat background (one exact value on >= 5% of the voxels, at or below the median) is that
    value; in an image with negative values and no flat background, the median of the dark
    class of an Otsu split when it is negative (a dark class above zero is tissue of an image
    without background, whose few negative voxels are noise). The level is kept only when the image has negative values or the
    level lies above the foreground threshold (`FOREGROUND_FRACTION` of the 99th percentile):
    otherwise (a zero or near-zero background, or a crop with no background at all) the
    foreground rule of `normalize_intensity` already applies, and the image is used unchanged.
    numpy or cupy in; a float out.
    """
    flat = data.reshape(-1)
    step = max(1, flat.size // _BACKGROUND_SAMPLE)
    sample = np.asarray(ops.to_host(flat[::step]), dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0
    values, counts = np.unique(sample, return_counts=True)  # sorted: the percentiles come from it
    ranks = np.cumsum(counts)
    low, middle, top = (float(values[np.searchsorted(ranks, q * sample.size)]) for q in (0.0, 0.5, 0.99))
    mode = int(np.argmax(counts))
    if counts[mode] >= FLAT_BACKGROUND_FRACTION * sample.size and values[mode] <= middle:
        level = float(values[mode])
    elif low < 0 and top > low:
        threshold = _otsu_threshold(sample)
        level = min(float(np.median(sample[sample <= threshold])), 0.0)  # a dark class above 0 is tissue
    else:
        return 0.0
    if low >= 0 and level <= FOREGROUND_FRACTION * top:
        return 0.0
    return level


def normalize_intensity(data, scaling: IntensityScaling = IntensityScaling()) -> np.ndarray:
    """Robust scaling to [0, 1]: foreground percentiles (0.5 and 99.5 by default) map to 0 and 1,
    clipped. numpy or cupy in, the same out."""
    xp = ops.array_namespace(data)
    data = xp.asarray(data, dtype=np.float32)
    if not bool(xp.all(xp.isfinite(data))):
        raise ValueError("image holds NaN or infinite values")
    high_all = float(xp.percentile(data, 99)) if data.size else 0.0
    foreground = data[data > scaling.foreground_fraction * high_all] if high_all > 0 else data[data > data.min()]
    if foreground.size == 0:
        raise ValueError("image is constant: intensities cannot be normalised")
    low, high = (float(q) for q in xp.percentile(foreground, [scaling.low_percentile, scaling.high_percentile]))
    low = min(low, 0.0) if float(data.min()) >= 0 else low
    if not high > low:
        raise ValueError("image is constant: intensities cannot be normalised")
    return xp.clip((data - low) / (np.float64(high) - low), 0.0, 1.0).astype(np.float32)


def prepare(data, affine, shape, spacing, grid_affine=None, intensity: IntensityScaling = IntensityScaling(),
            antialias_strength: float = 1.0):
    """``(model-grid array float32 in [0, 1], grid_affine)``: resample (`antialias` at
    `antialias_strength`) then normalise.

    `grid_affine` defaults to `model_grid` of this image; pass the fixed image's grid to put a
    moving image on the same grid.
    """
    shape = _three(shape, "shape", int)
    if grid_affine is None:
        grid_affine = model_grid(data, affine, shape, spacing)
    volume = resample(data, affine, grid_affine, shape, antialias_strength=antialias_strength)
    return normalize_intensity(volume, intensity), np.asarray(grid_affine, dtype=np.float64)
