"""Pairs that flag themselves: ``assess(result) -> {"flag": "ok"|"warn"|"fail", "flag_reasons": [...]}``.

    >>> from smgic_rt import Registrar, flags
    >>> result = Registrar().register("fixed.nii.gz", "moving.nii.gz")           # doctest: +SKIP
    >>> verdict = flags.assess(result, moving_labels="labels.nii.gz")           # doctest: +SKIP
    >>> verdict["flag"], verdict["flag_reasons"]                                 # doctest: +SKIP
    ('fail', ['brain-mask overlap (Dice of the foregrounds) 0.61 is below 0.8 (fail)', ...])

What is measured (`measure`), on a coarse grid over the fixed image (``spacing_mm``, 4 mm by
default: the image read every 2 mm and averaged 2x2x2, so a 1 mm image is not aliased), which
keeps a 1 mm pair to a small fraction of a second:

- ``lncc``: local NCC (5x5x5 windows of that grid, 20 mm; the refinement's formula `_C.lncc`)
  of the fixed image and the warped moving image, inside the fixed image's foreground;
- ``lncc_affine`` and ``lncc_gain``: the same for the moving image resampled through the affine
  stage alone (`result.affine_matrix`), and what the deformable stages added to it;
- ``folding_fraction``, ``inverse_consistency_voxels_brain_mean``: from `result.stats`;
- ``affine_scale_min/max``, ``affine_determinant``: singular values and determinant of the
  affine's linear part (fixed world -> moving world);
- ``mask_dice`` and ``foreground_volume_ratio``: Dice of the foregrounds of the fixed and the
  warped image (above a tenth of their 99th percentile) and the warped foreground's volume over
  the fixed one's: the brain-versus-head mismatch (a stripped brain covers under half a head);
- with `moving_labels`: ``labels_in_image`` (fraction of labelled voxels inside the moving
  image's grid) and ``labels_on_foreground`` (fraction on its foreground): labels that only
  partly overlap their image (labels that miss it entirely are refused earlier, by the loaders);
- ``mirror_margin``: local NCC of the affine-aligned moving image minus that of its left-right
  reflection about the fixed image's mid-sagittal plane; a rule only with ``same_subject=True``.

Thresholds (`THRESHOLDS`) come from measured distributions of good and bad pairs (docs/tuning.md).
For a pair whose intensities say the contrasts differ (``stats["contrast_check"]``, a T2 onto a
T1) the local-NCC rules (`NCC_MEASUREMENTS`) are not applied: their values are still reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["assess", "measure", "judge", "Threshold", "THRESHOLDS", "Together", "TOGETHER", "MIRROR_RULE", "FLAGS",
           "local_ncc"]

logger = logging.getLogger("smgic_rt")

FLAGS = ("ok", "warn", "fail")
# The measurements that compare intensities by local NCC: not judged for a pair whose contrasts
# differ (``stats["contrast_check"]``, `smgic_rt.methods.similarity.contrast_check`).
NCC_MEASUREMENTS = ("lncc", "lncc_gain", "mirror_margin")

# Foreground: above this fraction of the 99th percentile of the positive voxels (after a light
# smoothing on the measurement grid). Heads' noisy background stays below it, as do a stripped
# brain's exact zeros.
FOREGROUND_FRACTION = 0.1
LNCC_RADIUS = 2          # window (2 r + 1)^3 voxels of the measurement grid: 15 mm at 3 mm
LNCC_EPS = 1e-3          # variance floor, images scaled to about [0, 1] (as the refinement's)


@dataclass(frozen=True)
class Threshold:
    """A rule on one measurement: `warn` and `fail` limits, `below` (True: small values are bad)."""

    measurement: str
    description: str
    warn: float
    fail: float | None
    below: bool

    def level(self, value) -> str:
        if value is None or not np.isfinite(value):
            return "ok"
        worse = (lambda limit: value < limit) if self.below else (lambda limit: value > limit)
        if self.fail is not None and worse(self.fail):
            return "fail"
        return "warn" if worse(self.warn) else "ok"

    def reason(self, value, level: str) -> str:
        limit = self.fail if level == "fail" else self.warn
        relation = "below" if self.below else "above"
        return f"{self.description} {_fmt(value)} is {relation} {_fmt(limit)} ({level})"


def _fmt(value) -> str:
    value = float(value)
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.4g}"
    return f"{value:.2e}"


# The rules. Each limit's origin: docs/tuning.md (measured values of good and bad pairs).
THRESHOLDS = (
    Threshold("lncc", "similarity after registration (local NCC)", warn=0.80, fail=0.65, below=True),
    Threshold("lncc_gain", "similarity gain over the affine stage", warn=-0.01, fail=-0.05, below=True),
    Threshold("folding_fraction", "folding fraction (det J <= 0)", warn=1e-4, fail=1e-2, below=False),
    Threshold("inverse_consistency_voxels_brain_mean", "inverse consistency in the brain (voxels)",
              warn=0.09, fail=0.25, below=False),
    Threshold("affine_scale_min", "smallest affine scale", warn=0.80, fail=0.60, below=True),
    Threshold("affine_scale_max", "largest affine scale", warn=1.25, fail=1.67, below=False),
    Threshold("affine_determinant", "affine determinant (<= 0: a reflection)", warn=0.5, fail=0.0, below=True),
    Threshold("mask_dice", "brain-mask overlap (Dice of the foregrounds)", warn=0.92, fail=0.80, below=True),
    Threshold("foreground_volume_ratio", "warped/fixed foreground volume (a brain on a head?)",
              warn=0.85, fail=0.70, below=True),
    Threshold("foreground_volume_ratio", "warped/fixed foreground volume (a head on a brain?)",
              warn=1.20, fail=1.40, below=False),
    Threshold("labels_in_image", "fraction of labels inside the moving image's grid", warn=0.999, fail=0.95, below=True),
    Threshold("labels_on_foreground", "fraction of labels on the moving image's foreground",
              warn=0.985, fail=0.85, below=True),
)

@dataclass(frozen=True)
class Together:
    """Fail when every one of `rules` is beyond its own warn limit: independent pieces of
    evidence that agree the pair did not register, each alone only worth a warning."""

    rules: tuple
    conclusion: str

    def reason(self, measurements: dict) -> str | None:
        """The fail sentence when every rule warns or fails on `measurements`, else None."""
        levels = [rule.level(measurements.get(rule.measurement)) for rule in self.rules]
        if any(level == "ok" for level in levels):
            return None
        parts = [f"{rule.description} {_fmt(measurements[rule.measurement])}" for rule in self.rules]
        return f"{' with '.join(parts)}: {self.conclusion} (fail)"


def _rule(measurement: str, description: str) -> Threshold:
    return next(rule for rule in THRESHOLDS if rule.measurement == measurement and rule.description == description)


# Low similarity alone may be a contrast difference, a forward/backward disagreement alone a hard
# pair; both at once: the deformable stages did not find a transform (docs/tuning.md).
TOGETHER = (
    Together((_rule("lncc", "similarity after registration (local NCC)"),
              _rule("inverse_consistency_voxels_brain_mean", "inverse consistency in the brain (voxels)")),
             "the pair did not register (is one header turned, or the affine stage off?)"),
)

# Only for two images of one subject (e.g. longitudinal scans): across different brains the test
# is unreliable (docs/tuning.md), so `assess` applies it only with ``same_subject=True``.
MIRROR_RULE = Threshold("mirror_margin", "left-right mirror test (same subject; < 0: the moving image's reflection fits "
                        "better, is its header mirrored?)", warn=0.0, fail=-0.02, below=True)

# ---------------------------------------------------------------------------------------------
# Measurements


def local_ncc(first: np.ndarray, second: np.ndarray, mask: np.ndarray | None = None,
              radius: int = LNCC_RADIUS) -> float:
    """Mean local NCC of two volumes of one shape over `mask` (all voxels if None), windows of
    (2 radius + 1)^3 voxels: the refinement's per-voxel formula (`_C.lncc`)."""
    from .. import _C
    from ..geometry.filters import box_mean

    first = np.ascontiguousarray(first, dtype=np.float32)
    second = np.ascontiguousarray(second, dtype=np.float32)
    if first.shape != second.shape or first.ndim != 3:
        raise ValueError(f"local_ncc needs two 3-D volumes of one shape, got {first.shape} and {second.shape}")
    means = box_mean(np.stack([first, second, first * first, second * second, first * second]), radius)
    cc = _C.lncc(first, second, means, LNCC_EPS)[0]
    if mask is None:
        return float(cc.mean(dtype=np.float64))
    if mask.shape != cc.shape:
        raise ValueError(f"mask must have shape {cc.shape}, got {mask.shape}")
    return float(cc[mask].mean(dtype=np.float64)) if mask.any() else float("nan")


def _measurement_grid(shape, affine, spacing_mm: float):
    """Where to sample an image for a measurement grid of about `spacing_mm` over its voxels.

    Returns (fine shape, fine index matrix, coarse grid affine): the image is read at every
    ``stride / 2`` voxels (the fine grid, `fine index matrix` maps its indices to the image's)
    and the fine samples are averaged 2x2x2 (`ops.downsample_haar`) onto the coarse grid, so that
    a 1 mm image measured at 4 mm is not aliased; coarse voxel i sits at fine 2i + 0.5.
    """
    sizes = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    half = np.maximum(0.5, np.round(spacing_mm / sizes / 2.0))  # fine step, voxels (0.5: upsampled)
    fine_shape = tuple(2 * max(1, int(np.ceil(n / (2.0 * h)))) for n, h in zip(shape, half))
    fine = np.diag([*half, 1.0])
    haar = np.diag([2.0, 2.0, 2.0, 1.0])
    haar[:3, 3] = 0.5
    return fine_shape, fine, np.asarray(affine, dtype=np.float64) @ fine @ haar


def _sample(data: np.ndarray, matrix: np.ndarray, fine_shape) -> np.ndarray:
    """`data` (X, Y, Z) read (trilinear, zeros outside) at `matrix` @ [x, 1] of each fine-grid
    voxel, then averaged 2x2x2 onto the measurement grid."""
    from ..geometry import ops

    volume = np.asarray(data, dtype=np.float32)
    sampled = _every_nth_voxel(volume, matrix, fine_shape)
    if sampled is None:
        sampled = ops.affine_resample(np.ascontiguousarray(volume[None]), np.asarray(matrix, dtype=np.float64),
                                      fine_shape)
    else:
        sampled = np.add(sampled, np.float32(0.0), out=sampled)[None]  # -0.0 as the lerps mostly leave it: +0.0
    return ops.downsample_haar(sampled)[0]


def _every_nth_voxel(data: np.ndarray, matrix: np.ndarray, fine_shape) -> np.ndarray | None:
    """What reading `data` at `matrix` @ [x, 1] on a grid of `fine_shape` gives, zeros outside,
    when `matrix` only scales by whole numbers of voxels (`_measurement_grid` on images of voxels
    up to 4 mm): the voxels themselves, every n-th along each axis, as trilinear and nearest reads
    at whole coordinates return them (a strided copy instead of a resampling; a -0.0 voxel may
    come out as the kernel's +0.0 or keep its sign, equal values either way). None for any other
    matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    steps = np.diag(matrix)[:3]
    if not (np.array_equal(matrix, np.diag(np.diag(matrix))) and matrix[3, 3] == 1
            and np.all(steps >= 1) and np.all(steps == np.round(steps))):
        return None
    out = np.zeros(tuple(int(n) for n in fine_shape), dtype=data.dtype)
    voxels = data[::int(steps[0]), ::int(steps[1]), ::int(steps[2])][tuple(slice(0, int(n)) for n in fine_shape)]
    out[tuple(slice(0, n) for n in voxels.shape)] = voxels
    return out


def _scaled(volume: np.ndarray) -> np.ndarray:
    positive = volume[volume > 0]
    top = float(np.percentile(positive, 99)) if positive.size else 1.0
    return (volume / (top if top > 0 else 1.0)).astype(np.float32)


def _foreground(volume: np.ndarray) -> np.ndarray:
    return volume > FOREGROUND_FRACTION


def _less_background(data: np.ndarray) -> np.ndarray:
    from ..methods.preprocess import background_level

    level = background_level(data)
    return data - np.float32(level) if level else data


def _data(image) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(image.dataobj, dtype=np.float32), np.asarray(image.affine, dtype=np.float64)


def _mirror_matrix(fixed_scaled: np.ndarray, grid_affine: np.ndarray):
    """Grid-index map of the reflection x -> 2 c - x (RAS x) about the fixed image's mid-sagittal
    plane, c chosen among the foreground's centroid +- 12 mm (3 mm steps) as the one whose
    reflection correlates best with the image itself."""
    from ..geometry import ops

    mask = _foreground(fixed_scaled)
    if not mask.any():
        return None
    centroid = grid_affine @ np.r_[np.argwhere(mask).mean(axis=0), 1.0]
    inverse = np.linalg.inv(grid_affine)
    values = fixed_scaled[mask] - fixed_scaled[mask].mean()
    best = None
    for offset in np.arange(-12.0, 12.5, 3.0):
        reflect = np.diag([-1.0, 1.0, 1.0, 1.0])
        reflect[0, 3] = 2.0 * (centroid[0] + offset)
        matrix = inverse @ reflect @ grid_affine
        mirrored = ops.affine_resample(fixed_scaled[None], matrix, fixed_scaled.shape)[0][mask]
        score = float(values @ (mirrored - mirrored.mean()))  # correlation up to a positive factor
        if best is None or score > best[0]:
            best = (score, matrix)
    return best[1]


def _label_overlap(labels, moving_data: np.ndarray, moving_affine: np.ndarray, spacing_mm: float):
    """(fraction of labelled voxels inside the moving grid, fraction on its foreground), counted
    on the labels' own measurement grid."""
    from .. import io
    from ..geometry import ops

    volume = labels if isinstance(labels, io.Volume) else io.load_label_map(labels, name="moving labels")
    fine_shape, fine, _ = _measurement_grid(volume.shape, volume.affine, spacing_mm)
    labelled = _every_nth_voxel(volume.data, fine, fine_shape)
    if labelled is not None:
        labelled = labelled != 0
    else:
        labelled = ops.affine_resample(np.ascontiguousarray((volume.data != 0).astype(np.float32)[None]), fine,
                                       fine_shape, interpolation="nearest")[0] > 0.5
    if not labelled.any():
        return None, None
    # inside the moving grid: each labelled point's moving voxel coordinate within [-0.5, n - 0.5]
    points = np.argwhere(labelled).T.astype(np.float64)
    to_moving = np.linalg.inv(moving_affine) @ volume.affine @ fine
    coordinates = to_moving[:3, :3] @ points + to_moving[:3, 3:4]
    limits = np.asarray(moving_data.shape, dtype=np.float64)[:, None] - 0.5
    inside_count = float(np.all((coordinates >= -0.5) & (coordinates <= limits), axis=0).sum())
    # on the foreground: the moving image's foreground on its own measurement grid, read there
    moving_fine_shape, moving_fine, moving_grid = _measurement_grid(moving_data.shape, moving_affine, spacing_mm)
    foreground_moving = _foreground(_scaled(_sample(_less_background(moving_data), moving_fine,
                                                    moving_fine_shape))).astype(np.float32)
    to_grid = np.linalg.inv(moving_grid) @ volume.affine @ fine
    foreground = ops.affine_resample(np.ascontiguousarray(foreground_moving[None]), to_grid, fine_shape)[0] > 0.5
    count = float(labelled.sum())
    return inside_count / count, float((labelled & foreground).sum() / count)


def measure(result, *, moving_labels=None, spacing_mm: float = 4.0) -> dict:
    """The QC measurements of one `RegistrationResult` (see the module docstring); JSON-safe."""
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be a positive number of mm, got {spacing_mm!r}")
    for attribute in ("fixed_image", "moving_image", "warped"):
        if getattr(result, attribute, None) is None:
            raise ValueError(f"result.{attribute} is needed to assess a registration, got None")
    fixed, fixed_affine = _data(result.fixed_image)
    moving, moving_affine = _data(result.moving_image)
    warped, _ = _data(result.warped)
    # Measured as registered: each image less its background level (0 for a zero background).
    from ..methods.preprocess import background_level

    fixed = _less_background(fixed)
    moving_level = background_level(moving)
    moving, warped = (moving - np.float32(moving_level), warped - np.float32(moving_level)) if moving_level else (moving, warped)
    fine_shape, fine, grid_affine = _measurement_grid(fixed.shape, fixed_affine, spacing_mm)
    fixed_c = _scaled(_sample(fixed, fine, fine_shape))
    warped_c = _scaled(_sample(warped, fine, fine_shape))
    shape = fixed_c.shape
    fixed_mask, warped_mask = _foreground(fixed_c), _foreground(warped_c)
    stats = result.stats or {}
    out = {
        "grid_shape": list(shape),
        "lncc": local_ncc(fixed_c, warped_c, fixed_mask),
        "folding_fraction": stats.get("folding_fraction"),
        "inverse_consistency_voxels_brain_mean": stats.get("inverse_consistency_voxels_brain_mean"),
    }
    volume_fixed, volume_warped = int(fixed_mask.sum()), int(warped_mask.sum())
    out["mask_dice"] = (2.0 * float((fixed_mask & warped_mask).sum()) / (volume_fixed + volume_warped)
                        if volume_fixed + volume_warped else None)
    out["foreground_volume_ratio"] = volume_warped / volume_fixed if volume_fixed else None

    matrix = getattr(result, "affine_matrix", None)
    if matrix is not None:
        matrix = np.asarray(matrix, dtype=np.float64)
        scales = np.linalg.svd(matrix[:3, :3], compute_uv=False)
        out["affine_scale_min"], out["affine_scale_max"] = float(scales.min()), float(scales.max())
        out["affine_determinant"] = float(np.linalg.det(matrix[:3, :3]))
    else:
        out["affine_scale_min"] = out["affine_scale_max"] = out["affine_determinant"] = None
        matrix = np.eye(4)  # no affine stage: the headers' alignment
    affine_c = _scaled(_sample(moving, np.linalg.inv(moving_affine) @ matrix @ fixed_affine @ fine, fine_shape))
    out["lncc_affine"] = local_ncc(fixed_c, affine_c, fixed_mask)
    out["lncc_gain"] = out["lncc"] - out["lncc_affine"]
    mirror = _mirror_matrix(fixed_c, grid_affine)
    if mirror is not None:
        from ..geometry import ops

        mirrored = ops.affine_resample(affine_c[None], mirror, shape)[0]
        out["mirror_margin"] = out["lncc_affine"] - local_ncc(fixed_c, mirrored, fixed_mask)
    else:
        out["mirror_margin"] = None
    out.update(measure_labels(result, moving_labels, spacing_mm=spacing_mm))
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


def measure_labels(result, moving_labels, *, spacing_mm: float = 4.0) -> dict:
    """The label measurements of `measure` alone (None without labels)."""
    if moving_labels is None:
        return {"labels_in_image": None, "labels_on_foreground": None}
    moving, moving_affine = _data(result.moving_image)
    inside, on_foreground = _label_overlap(moving_labels, moving, moving_affine, spacing_mm)
    return {"labels_in_image": inside, "labels_on_foreground": on_foreground}


def judge(measurements: dict, thresholds=THRESHOLDS, together=TOGETHER) -> dict:
    """``{"flag", "flag_reasons"}`` from `measurements` (as `measure` returns them): the worst
    level over the rules and the `Together` rules; one sentence per rule that is not ok, worst
    first."""
    reasons = []
    for rule in thresholds:
        value = measurements.get(rule.measurement)
        level = rule.level(value)
        if level != "ok":
            reasons.append((FLAGS.index(level), rule.reason(value, level)))
    for combined in together:
        text = combined.reason(measurements)
        if text is not None:
            reasons.append((FLAGS.index("fail"), text))
    reasons.sort(key=lambda item: -item[0])
    worst = max((level for level, _ in reasons), default=0)
    return {"flag": FLAGS[worst], "flag_reasons": [text for _, text in reasons]}


def assess(result, *, moving_labels=None, same_subject: bool = False, thresholds=THRESHOLDS,
           spacing_mm: float = 4.0, measured: dict | None = None) -> dict:
    """Flag one registration: ``{"flag", "flag_reasons", "qc_measurements"}``, ready to merge into
    report.json (``result.stats.update(assess(result))``).

    Parameters
    ----------
    result : smgic_rt.RegistrationResult
        Needs ``fixed_image``, ``moving_image`` and ``warped`` (as `Registrar.register` returns).
    moving_labels : path, nibabel image, `io.Volume` or None
        The label map that goes with the moving image; checked against the moving image.
    same_subject : bool
        Both images show one person (longitudinal pairs): adds `MIRROR_RULE`, the left-right
        mirror test, which is reliable only then.
    thresholds : sequence of `Threshold`
    spacing_mm : float
        Spacing of the measurement grid.
    measured : dict, optional
        `measure`'s result for this `result` at this spacing, taken earlier without labels: only
        the label measurements are then taken (saving with labels judges the pair again).
    """
    if not isinstance(same_subject, bool):
        raise TypeError(f"same_subject must be True or False, got {same_subject!r}")
    if measured is None:
        measurements = measure(result, moving_labels=moving_labels, spacing_mm=spacing_mm)
    else:
        measurements = {**measured, **measure_labels(result, moving_labels, spacing_mm=spacing_mm)}
    together = TOGETHER
    if ((getattr(result, "stats", None) or {}).get("contrast_check") or {}).get("differ"):
        # Images of different contrasts: local NCC of intensities does not measure their alignment.
        thresholds = tuple(rule for rule in thresholds if rule.measurement not in NCC_MEASUREMENTS)
        together = ()
    verdict = judge(measurements, tuple(thresholds) + ((MIRROR_RULE,) if same_subject else ()), together)
    if verdict["flag"] != "ok":
        logger.debug("QC flag %s: %s", verdict["flag"], "; ".join(verdict["flag_reasons"]))
    return {**verdict, "qc_measurements": measurements}
