"""Global affine stage: moments initialisation, then multi-resolution rigid and affine
optimisation of a similarity inside the (dilated) fixed foreground: the normalised
cross-correlation (``metric="ncc"``), or for images of different contrasts the mean squared
difference of their MIND-SSC descriptors (``"mind"``, `smgic_rt.methods.similarity`), summed
over the channels by one kernel call. Exclusion masks take voxels out of the similarity: fixed
ones from the mask of the sums, moving ones wherever the map reads them (recomputed per
evaluation; the mask's own derivative is zero almost everywhere).

The result maps fixed world (RAS mm) to moving world: a fixed-space point ``p`` samples the moving
image at ``matrix @ p``. Each stage refines its start ``S`` as ``S @ U(theta)``, ``U`` a map about
the fixed brain centre whose parameters are all measured in mm of motion (angles, log-scales and
shears times a brain radius): translation and rotation for the rigid stage, plus scales and
shears for the affine stage. They are found by L-BFGS (scipy) with the exact gradient: the
similarity's sums and their derivatives by the 12 voxel-matrix entries, chained to the
parameters. Each resolution runs on images resampled once to an isotropic RAS grid covering the
whole image. The per-voxel work (resampling through the matrix, the sums and their derivatives)
is `smgic_rt._C.affine_ncc_sums` (NCC) or `smgic_rt._C.affine_ssd_sums` (MIND, every channel
in one pass). The result is never below the best start by its similarity.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import io
from ..geometry import ops
from . import preprocess
from ..geometry.filters import box_mean
from ..options import METRICS, check_choice, check_int, check_number, records_given
from .similarity import descriptor_reach, excluded_voxels, grow, mind_descriptors

__all__ = ["AffineLevel", "AffineOptions", "AffineResult", "register_affine", "ncc_and_gradient",
           "similarity_and_gradient", "rotation_matrix"]


@dataclass(frozen=True)
class AffineLevel:
    """One resolution of the affine stage: images resampled to `resolution_mm`, then at most
    `rigid_iterations` of L-BFGS on a rigid map and `affine_iterations` on a full affine one."""

    resolution_mm: float
    rigid_iterations: int = 0
    affine_iterations: int = 0

    def __post_init__(self):
        check_number(self.resolution_mm, "affine level resolution_mm", positive=True)
        check_int(self.rigid_iterations, "affine level rigid_iterations", minimum=0)
        check_int(self.affine_iterations, "affine level affine_iterations", minimum=0)


def _default_affine_levels():
    # Rigid at 8 mm, then affine at 4 mm: a 2 mm level or a rigid pass at 4 mm cost time and
    # gained nothing measurable (docs/tuning.md).
    return (AffineLevel(8.0, rigid_iterations=60), AffineLevel(4.0, affine_iterations=30))


@records_given
@dataclass(frozen=True)
class AffineOptions:
    levels: tuple = field(default_factory=_default_affine_levels)   # coarse to fine
    radius_mm: float = 60.0                     # lever arm that turns angles, scales, shears into mm
    moments: bool = True                        # principal-axes candidates at the start
    metric: str = "ncc"                         # smgic_rt.options.METRICS

    def __post_init__(self):
        levels = self.levels
        if not isinstance(levels, tuple) or not levels or not all(isinstance(lv, AffineLevel) for lv in levels):
            raise ValueError(f"affine levels must be a non-empty tuple of AffineLevel, got {levels!r}")
        resolutions = self.resolutions
        if any(finer >= coarser for coarser, finer in zip(resolutions, resolutions[1:])):
            raise ValueError(f"affine levels must run coarse to fine (resolution_mm decreasing), got {list(resolutions)}")
        check_number(self.radius_mm, "radius_mm", positive=True)
        if not isinstance(self.moments, bool):
            raise ValueError(f"moments must be True or False, got {self.moments!r}")
        check_choice(self.metric, "affine metric", METRICS)

    @property
    def resolutions(self) -> tuple:
        return tuple(level.resolution_mm for level in self.levels)


@dataclass
class AffineResult:
    matrix: np.ndarray                          # 4x4, fixed world RAS mm -> moving world RAS mm
    stats: dict = field(default_factory=dict)


@dataclass
class _Level:
    image: np.ndarray
    grid: np.ndarray                            # voxel -> world
    mask: np.ndarray | None = None              # fixed: where the similarity is summed
    features: np.ndarray | None = None          # (C, X, Y, Z) MIND descriptors ("mind")
    excluded: np.ndarray | None = None          # moving: float32 1 where the similarity must not read


def _check(data, affine, name):
    xp = ops.array_namespace(data)
    data = xp.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"{name} image must be 3-D, got shape {data.shape}")
    if min(data.shape) < 2:
        raise ValueError(f"{name} image must have at least 2 voxels per axis, got shape {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ValueError(f"{name} affine must be a finite, invertible 4x4 matrix")
    data = xp.asarray(data, dtype=np.float32)
    if not bool(xp.all(xp.isfinite(data))):
        raise ValueError(f"{name} image holds NaN or infinite values")
    if float(data.max()) == float(data.min()):
        raise ValueError(f"{name} image is constant: nothing to align")
    return data, affine


def _covering_grid(shape, affine, spacing):
    """RAS grid of `spacing` mm covering the image's bounding box."""
    corners = io.voxel_corners(shape, faces=False) @ affine.T
    low, high = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    size = np.maximum(np.ceil((high - low) / spacing).astype(int) + 1, 2)
    grid = np.diag([spacing, spacing, spacing, 1.0])
    grid[:3, 3] = low
    return tuple(int(n) for n in size), grid


# Voxel (i, j, k) of a 2x2x2 block-mean image sits at (2i + 0.5, 2j + 0.5, 2k + 0.5) of its source.
_HALVING = np.array([[2.0, 0, 0, 0.5], [0, 2.0, 0, 0.5], [0, 0, 2.0, 0.5], [0, 0, 0, 1.0]])


def _block_means(data, affine, spacing):
    """2x2x2 block means (odd last slices dropped) while the voxels stay at most half of
    `spacing` mm: a cheap low-pass that leaves little for the Gaussian of preprocess.resample
    (at 1 mm, filtering the full image for 4 mm took most of this stage's time)."""
    while np.linalg.norm(affine[:3, :3], axis=0).max() * 2 <= spacing and min(data.shape) >= 4:
        even = tuple(n - n % 2 for n in data.shape)
        block = ops.contiguous_float32(data[: even[0], : even[1], : even[2]])
        data, affine = ops.downsample_haar(block[None])[0], affine @ _HALVING
    return data, affine


def _pyramid(data, affine, resolutions, with_mask, metric="ncc", excluded=None):
    """Images resampled to each resolution (fine first, each from the previous), normalised;
    with `metric` "mind" their descriptors; with `excluded` (a mask on the image's grid) the
    voxels the similarity must not read, grown by the descriptors' reach."""
    out = {}
    xp = ops.array_namespace(data)
    source, source_affine = _block_means(data, affine, min(resolutions))
    if excluded is not None:
        excluded_source, excluded_affine = _block_means(excluded, affine, min(resolutions))
    for spacing in sorted(resolutions):
        shape, grid = _covering_grid(data.shape, affine, spacing)
        resampled = preprocess.resample(source, source_affine, grid, shape)
        source, source_affine = resampled, grid
        image = preprocess.normalize_intensity(resampled)
        touched = None
        if excluded is not None:  # any weight of an excluded voxel in a resampled one excludes it
            excluded_source = preprocess.resample(excluded_source, excluded_affine, grid, shape)
            excluded_affine = grid
            touched = excluded_source > 0
        out[spacing] = _make_level(xp.ascontiguousarray(image), grid, with_mask, metric, touched)
    return out


def _make_level(image, grid, with_mask: bool, metric: str, touched=None) -> _Level:
    """One resolution of one image: with `with_mask` (the fixed image) the mask of the voxels
    summed, with `metric` "mind" the descriptors, with `touched` (boolean, the voxels that
    excluded ones weigh in) the voxels the similarity must not read, grown by what a descriptor
    reads: out of the fixed mask, or (the moving image) in `_Level.excluded`."""
    xp = ops.array_namespace(image)
    mask = None
    if with_mask:
        # The foreground and a rim of ~8 mm around it: the edge of the brain carries signal.
        radius = max(1, int(round(8.0 / abs(float(grid[0, 0])))))
        mask = (box_mean((image > 0.05).astype(np.float32)[None], radius)[0] > 0).astype(np.float32)
    level = _Level(image, grid, mask)
    if metric == "mind":
        level.features = mind_descriptors(image, excluded=touched)
    if touched is not None:
        reached = grow(touched, descriptor_reach() if metric == "mind" else 0)
        if with_mask:
            level.mask = xp.ascontiguousarray(mask * (~reached).astype(np.float32))
        else:
            level.excluded = xp.ascontiguousarray(reached.astype(np.float32))
    return level


def _voxel_map(fixed: _Level, moving: _Level, world):
    return np.linalg.solve(moving.grid, world @ fixed.grid)  # fixed voxel -> moving voxel


def _kernel_matrix(voxel):
    """The 3x4 map as the kernels take it (float32, as they compute)."""
    return voxel[:3].astype(np.float32).astype(np.float64)


def _world_gradient(d_voxel_rows, fixed: _Level, moving: _Level):
    # voxel = inv(Gm) world Gf  =>  dE/dworld = inv(Gm)^T dE/dvoxel Gf^T
    d_voxel = np.zeros((4, 4))
    d_voxel[:3] = d_voxel_rows.reshape(3, 4)
    return np.linalg.inv(moving.grid).T @ d_voxel @ fixed.grid.T


def _mask_for(fixed: _Level, moving: _Level, voxel):
    """The fixed mask less the voxels whose moving sample reads an excluded moving voxel."""
    if moving.excluded is None:
        return fixed.mask
    read = ops.affine_resample(moving.excluded[None], voxel[:3], fixed.image.shape)[0]
    kept = (read <= 0).astype(np.float32)
    return kept if fixed.mask is None else fixed.mask * kept


def ncc_and_gradient(fixed: _Level, moving: _Level, world: np.ndarray):
    """NCC of fixed and moving through `world` (4x4) and its gradient by the 4x4 world matrix."""
    voxel = _voxel_map(fixed, moving, world)
    # on the GPU the 42 sums are this evaluation's one read back to the host
    sums = ops.to_host(ops.affine_ncc_sums(fixed.image, _mask_for(fixed, moving, voxel), moving.image,
                                           _kernel_matrix(voxel)))
    s, sf, sm, sff, smm, sfm = sums[:6]
    if s < 10:
        return -1.0, np.zeros((4, 4))
    g, gf, gm = sums[6:18], sums[18:30], sums[30:42]
    mf, mm = sf / s, sm / s
    cov, vf, vm = sfm / s - mf * mm, sff / s - mf * mf, smm / s - mm * mm
    if vf <= 1e-12 or vm <= 1e-12:
        return -1.0, np.zeros((4, 4))
    root = np.sqrt(vf * vm)
    ncc = cov / root
    d_cov = gf / s - mf * g / s
    d_vm = 2.0 * (gm / s - mm * g / s)
    return float(ncc), _world_gradient(d_cov / root - 0.5 * ncc * d_vm / vm, fixed, moving)


def mind_and_gradient(fixed: _Level, moving: _Level, world: np.ndarray):
    """Minus the mean over the voxels of the squared difference of the MIND descriptors, summed
    over the channels, of fixed and moving through `world`, and its gradient by the 4x4 world
    matrix, from the kernel's multi-channel sums (`ops.affine_ssd_sums`): ``-E / S``, and
    ``-2 D / S`` by the voxel matrix."""
    voxel = _voxel_map(fixed, moving, world)
    sums = ops.to_host(ops.affine_ssd_sums(fixed.features, _mask_for(fixed, moving, voxel), moving.features,
                                           _kernel_matrix(voxel)))
    s, squares, d_rows = sums[0], sums[1], sums[2:14]
    if s < 10:
        return -float(fixed.features.shape[0]), np.zeros((4, 4))
    return float(-squares / s), _world_gradient(-2.0 * d_rows / s, fixed, moving)


SIMILARITIES = {"ncc": ncc_and_gradient, "mind": mind_and_gradient}


def similarity_and_gradient(fixed: _Level, moving: _Level, world: np.ndarray, metric: str = "ncc"):
    """The similarity `metric` (higher is better) of the pair through `world` and its gradient."""
    return SIMILARITIES[metric](fixed, moving, world)


def _compose(linear, translation, centre):
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre + translation - linear @ centre
    return out


def _nearest_rotation(linear):
    u, _, vt = np.linalg.svd(linear)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def rotation_matrix(angles):
    """The 3x3 rotation ``Rz Ry Rx`` by `angles` (radians about x, y, z): the one formula that the
    affine stage, training's augmentation, the benchmarks and the tests share."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _update(theta, centre, radius):
    """U(theta) about `centre`: translation theta[0:3] mm, rotation angles theta[3:6] / radius,
    and with 12 parameters log-scales theta[6:9] / radius and shears theta[9:12] / radius."""
    linear = rotation_matrix(theta[3:6] / radius)
    if len(theta) == 12:
        shear = np.eye(3)
        shear[0, 1], shear[0, 2], shear[1, 2] = theta[9:12] / radius
        linear = linear @ np.diag(np.exp(theta[6:9] / radius)) @ shear
    return _compose(linear, theta[:3], centre)


def _optimise(fixed, moving, start, centre, iterations, options, rigid):
    """L-BFGS on minus the similarity over ``start @ U(theta)``; returns the matrix and a record."""
    from scipy import optimize

    count = 6 if rigid else 12
    radius = options.radius_mm
    metric = options.metric

    def negative_similarity(theta):
        value, d_world = similarity_and_gradient(fixed, moving, start @ _update(theta, centre, radius), metric)
        # d(U)/d(theta_j) by central differences of the closed form (exact to ~1e-9 here).
        gradient = np.empty(count)
        for j in range(count):
            e = np.zeros(count)
            e[j] = 1e-4
            d_update = (_update(theta + e, centre, radius) - _update(theta - e, centre, radius)) / 2e-4
            gradient[j] = np.sum(d_world * (start @ d_update))
        return -value, -gradient

    before = -negative_similarity(np.zeros(count))[0]
    found = optimize.minimize(negative_similarity, np.zeros(count), jac=True, method="L-BFGS-B",
                              options={"maxiter": int(iterations), "gtol": 1e-7})
    record = {"kind": "rigid" if rigid else "affine", f"{metric}_before": before, "iterations": int(found.nit),
              "evaluations": int(found.nfev), "stop": str(found.message)}
    if -found.fun < before:  # L-BFGS-B returns its best point, but never take a worse one
        record.update({f"{metric}_after": before})
        return start, record
    record.update({f"{metric}_after": float(-found.fun)})
    return start @ _update(found.x, centre, radius), record


def _moments(level: _Level):
    """Intensity-weighted centroid (world) and covariance of the foreground."""
    image = level.image
    xp = ops.array_namespace(image)
    index = xp.argwhere(image > 0.05)
    weights = ops.to_host(image[tuple(index.T)].astype(np.float64))
    index = ops.to_host(index)
    points = index @ level.grid[:3, :3].T + level.grid[:3, 3]
    centre = np.average(points, axis=0, weights=weights)
    spread = points - centre
    return centre, (spread * weights[:, None]).T @ spread / weights.sum()


def _check_excluded(excluded, image, name):
    excluded = excluded_voxels(excluded, image, name)
    return None if excluded is None else ops.array_namespace(image).ascontiguousarray(excluded.astype(np.float32))


def register_affine(fixed, fixed_affine, moving, moving_affine, *, options: AffineOptions = AffineOptions(),
                    initial=None, fixed_exclude=None, moving_exclude=None) -> AffineResult:
    """Affine map fixed world -> moving world for this pair; see the module docstring.

    `initial` (4x4 fixed world -> moving world, e.g. another tool's alignment) replaces the
    moments' candidates: the optimisation starts from it, and the result is never below it.
    `fixed_exclude`, `moving_exclude`: masks on the images' grids (nonzero = exclude) of voxels
    that the similarity must not read (a lesion, an artefact).
    """
    fixed, fixed_affine = _check(fixed, fixed_affine, "fixed")
    moving, moving_affine = _check(moving, moving_affine, "moving")
    fixed_exclude = _check_excluded(fixed_exclude, fixed, "fixed_exclude")
    moving_exclude = _check_excluded(moving_exclude, moving, "moving_exclude")
    started = time.perf_counter()
    metric = options.metric
    fixed_levels = _pyramid(fixed, fixed_affine, options.resolutions, with_mask=True, metric=metric,
                            excluded=fixed_exclude)
    moving_levels = _pyramid(moving, moving_affine, options.resolutions, with_mask=False, metric=metric,
                             excluded=moving_exclude)
    for spacing in options.resolutions:
        if not float(fixed_levels[spacing].mask.sum()) > 0:
            raise ValueError(f"fixed_exclude leaves no voxel of the fixed foreground to compare at {spacing:g} mm")
        left = moving_levels[spacing].excluded
        if left is not None and not bool((left <= 0).any()):
            raise ValueError(f"moving_exclude leaves no voxel of the moving image to compare at {spacing:g} mm")

    def similarity(level, start):
        return similarity_and_gradient(fixed_levels[level], moving_levels[level], start, metric)[0]

    coarse = options.resolutions[0]
    centre_f, cov_f = _moments(fixed_levels[coarse])
    centre_m, cov_m = _moments(moving_levels[coarse])

    # Start: the identity, the centroid shift, and (optionally) principal-axes rotations; or the
    # caller's initial transform alone.
    candidates = {"identity": _compose(np.eye(3), np.zeros(3), centre_f),
                  "centroids": _compose(np.eye(3), centre_m - centre_f, centre_f)}
    if initial is not None:
        candidates = {"initial": np.asarray(initial, dtype=np.float64)}
    elif options.moments:
        _, axes_f = np.linalg.eigh(cov_f)
        _, axes_m = np.linalg.eigh(cov_m)
        for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
            rotation = _nearest_rotation(axes_m @ np.diag(signs) @ axes_f.T)
            candidates[f"principal_axes{signs}"] = _compose(rotation, centre_m - centre_f, centre_f)
    # The inputs were checked finite and the pyramid is made by our kernels, which keep them so:
    # the optimiser's many small kernel calls need not scan them again.
    with ops.inputs_known_finite():
        scores = {name: similarity(coarse, start) for name, start in candidates.items()}
        best = max(scores, key=scores.get)
        matrix = candidates[best]

        stages = []
        for level in options.levels:
            spacing = level.resolution_mm
            tick = time.perf_counter()
            for rigid, its in ((True, level.rigid_iterations), (False, level.affine_iterations)):
                if its:
                    matrix, record = _optimise(fixed_levels[spacing], moving_levels[spacing], matrix, centre_f, its,
                                               options, rigid)
                    record.update(resolution_mm=spacing, seconds=time.perf_counter() - tick)
                    stages.append(record)

        # Never worse than the start: compare with the initial candidates at the finest resolution.
        finest = options.resolutions[-1]
        final = similarity(finest, matrix)
        at_start = {name: similarity(finest, start) for name, start in candidates.items()}
    fallback = max(at_start, key=at_start.get)
    kept = final >= at_start[fallback]
    if not kept:
        matrix = candidates[fallback]
    stats = {
        "metric": metric, "initialisation": best, f"initial_{metric}": scores,
        "stages": stages,
        f"{metric}_before": at_start.get("identity", at_start.get("initial")),
        f"{metric}_after": max(final, at_start[fallback]),
        "kept_optimisation": bool(kept),
        "iterations": int(sum(s["iterations"] for s in stages)),
        "seconds": time.perf_counter() - started,
    }
    return AffineResult(matrix, stats)
