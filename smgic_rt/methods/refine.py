"""Per-pair deformable refinement, warm-started from the network's velocity.

Symmetric (by default) and diffeomorphic: the stationary velocity ``v`` is optimised so that the fixed image
pulled half-way back, ``F o exp(-v/2)``, and the moving image pulled half-way forward,
``M o exp(v/2)``, agree in local NCC at the midpoint (or, with ``symmetric=False``, ``M o exp(v)``
and ``F`` itself); ``exp(v)`` then registers moving onto fixed and ``exp(-v)`` is its inverse, as
for the network. Updates are the local-NCC forces of both
images (`Level.gradient`), Gaussian-smoothed (SyN-style "fluid"
regularisation) plus the optional regulariser's gradient, taken as normalised steps with a
backtracking line search on the objective ``-mean LNCC + reg * |grad v|^2``, the velocity
smoothed after each step ("elastic"), coarse to fine (1/4, 1/2 of the model grid and the grid
itself by default: `RefineOptions.levels`, each `Level` with its own smoothing, regulariser's
weight, symmetry and force, `PER_LEVEL`). ``exp(+-v/2)`` is integrated with one scaling-and-squaring step fewer than
``exp(v)`` (and one fewer again per halving of the grid), which keeps the first step as small.
As in ANTs' SyN the boundary is stationary: updates fade to zero at the grid's faces.
A warm start that scores worse than no deformation at all is dropped (the refinement then starts
from zero, and says so). A step that does not lower the objective is never taken, and the result
is checked against the start on the model grid: the refinement never returns a velocity worse by
its objective than the one it was given.

The similarity is local NCC or, with ``RefineOptions.metric="mind"``, minus the mean squared
difference of the two images' MIND-SSC descriptors (`smgic_rt.methods.similarity`), made once per
grid and warped as the images are; exclusion masks (``fixed_exclude``, ``moving_exclude``) take
the voxels that read excluded ones out of either similarity, the regulariser left as it is.

The per-voxel work (box means, local NCC and its derivatives, gradients, Gaussian filters,
warps, scaling and squaring) runs in `smgic_rt._C` through `smgic_rt.geometry.ops`; the whole-array
arithmetic between the kernels is written once against the inputs' namespace
(`ops.array_namespace`: numpy, or cupy for CUDA arrays), so a GPU refinement is this very code
with every array on the device. The host reads back one number per evaluation of the
objective (the line search compares it) and the largest force per iteration (the step's scale).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..geometry import ops
from ..geometry.filters import box_mean, smooth
from ..options import METRICS, check_choice, check_int, check_number, records_given
from .similarity import descriptor_reach, excluded_voxels, grow, mind_descriptors, shrink_any

__all__ = ["Level", "RefineOptions", "RefineResult", "refine_velocity", "objective", "GRADIENTS", "PER_LEVEL"]


GRADIENTS = ("window", "exact")
# The fields of a `Level` that set how it optimises (not where or for how long); each level's
# record in the stats says the values it ran with.
PER_LEVEL = ("fluid_sigma", "reg", "symmetric", "gradient", "radius")
# Upper limits: beyond them a value only costs memory and time or overflows (a Gaussian or window
# wider than any grid, a regulariser a thousand times the similarity, a step past the grid).
MAX_SIGMA_VOXELS = 50


@dataclass(frozen=True)
class Level:
    """One level of the refinement: `iterations` (at most) on a grid `factor` times coarser than
    the model grid (1/2: twice finer; its images are made for it from the native ones).

    ``radius``: local NCC window (2 radius + 1)^3. ``fluid_sigma``: Gaussian on each update, in
    voxels of the level. ``reg``: weight of |grad v|^2 in the objective. ``symmetric``: both
    images move half-way and meet at the midpoint (unbiased towards either grid); False: the
    moving image alone moves onto the fixed one as it is, on whose grid labels are compared.
    ``gradient``: the NCC force; "window" takes each voxel's derivative through its own window
    only (as ANTs' CC), "exact" sums it over every window that holds the voxel.
    """

    factor: float
    iterations: int
    radius: int = 1
    fluid_sigma: float = 1.5
    reg: float = 0.05
    symmetric: bool = True
    gradient: str = "window"

    def __post_init__(self):
        exponent = math.log2(self.factor) if check_number(self.factor, "level factor", positive=True) else 0.0
        if exponent != round(exponent) or exponent < -1:
            raise ValueError(f"level factor must be a power of 2 from 1/2 (a grid twice finer than the model "
                             f"grid) up, got {self.factor!r}")
        check_int(self.iterations, "level iterations", minimum=0)
        check_int(self.radius, "level radius", minimum=1, maximum=MAX_SIGMA_VOXELS)
        check_number(self.fluid_sigma, "level fluid_sigma", minimum=0, maximum=MAX_SIGMA_VOXELS)
        check_number(self.reg, "level reg", minimum=0, maximum=1e3)
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"level symmetric must be a bool, got {self.symmetric!r}")
        check_choice(self.gradient, "level gradient", GRADIENTS)

    @property
    def settings(self) -> tuple:
        """What sets how the level optimises: levels with equal settings have one objective."""
        return tuple(getattr(self, name) for name in PER_LEVEL)


def _default_levels():
    return (Level(4, 60), Level(2, 40), Level(1, 8))


@records_given
@dataclass(frozen=True)
class RefineOptions:
    """The refinement: its `levels`, coarse to fine, and what every level shares.

    Levels finer than the model grid (factor 1/2) run after the others, on images made for
    their grid (`smgic_rt.pipeline.RefineStage`); `refine_velocity` itself runs the levels on the
    grid it is given. Fields given explicitly override a preset's field by field
    (`smgic_rt.options.merged`).
    """

    levels: tuple = field(default_factory=_default_levels)
    elastic_sigma: float = 0.0            # Gaussian on the whole velocity after each step (0: none;
                                          # the |grad v|^2 term regularises instead)
    step: float = 0.5                     # initial largest update, voxels of the level
    min_step: float = 0.02                # below this the level stops (no step helps)
    plateau: float = 1e-4                 # stop when 5 iterations gain less than this
    steps: int = 7                        # scaling-and-squaring steps for v on the model grid
    eps: float = 1e-3                     # NCC variance floor (images are in [0, 1])
    # Stationary boundary, as ANTs' SyN keeps its field's: updates fade to zero over this many
    # voxels of each level towards the grid's faces. A face that moved would drag every voxel
    # beyond it along (outside the grid the field is read with border padding). 0: free boundary.
    boundary: int = 2
    # Start from zero when the given velocity scores worse than zero: a weak network's field
    # would cost the coarse levels time to undo.
    zero_if_better: bool = True
    # How much the images compared are low-passed when resampled onto the model grid: the
    # strength of `smgic_rt.methods.preprocess.antialias` (1: as the network was trained; 0:
    # none). Sharper images register better and 0.5 keeps most of the protection against
    # aliasing (docs/tuning.md).
    antialias: float = 0.5
    # A wall-clock limit in seconds (None: none). The iteration counts are the budget; with a
    # time limit the result depends on the machine's load, so it is off by default.
    max_seconds: float | None = None
    # What the images are compared by: local NCC of intensities, or ("mind") the squared
    # differences of their MIND-SSC descriptors (`smgic_rt.methods.similarity`).
    metric: str = "ncc"

    def __post_init__(self):
        levels = self.levels
        if not isinstance(levels, tuple) or not levels or not all(isinstance(lv, Level) for lv in levels):
            raise ValueError(f"levels must be a non-empty tuple of Level, got {levels!r}")
        factors = [level.factor for level in levels]
        if any(finer >= coarser for coarser, finer in zip(factors, factors[1:])):
            raise ValueError(f"levels must run coarse to fine (factors decreasing), got factors {factors}")
        check_number(self.elastic_sigma, "elastic_sigma", minimum=0, maximum=MAX_SIGMA_VOXELS)
        check_number(self.step, "step", positive=True, maximum=100)
        check_number(self.min_step, "min_step", positive=True, maximum=self.step)
        check_number(self.plateau, "plateau", minimum=0, maximum=1)
        check_int(self.steps, "steps", minimum=1, maximum=30)
        check_number(self.eps, "eps", positive=True, maximum=1)
        check_int(self.boundary, "boundary", minimum=0, maximum=1000)
        check_number(self.antialias, "antialias", minimum=0, maximum=1)
        check_number(self.max_seconds, "max_seconds", positive=True, allow_none=True)
        check_choice(self.metric, "refine metric", METRICS)

    def coarse(self) -> "RefineOptions":
        """These options keeping only the levels coarser than the model grid, each with its own
        settings, and no finer grid after them: the work a network's levels 1-3 take over on a
        CPU (the teacher of `python -m training --recipe cpu-coarse`)."""
        levels = tuple(level for level in self.levels if level.factor > 1)
        if not levels:
            raise ValueError(f"the refinement has no level coarser than the model grid: factors "
                             f"{[level.factor for level in self.levels]}")
        return dataclasses.replace(self, levels=levels)

    @property
    def model_grid_levels(self) -> tuple:
        """The levels on the model grid or coarser (factor >= 1)."""
        return tuple(level for level in self.levels if level.factor >= 1)

    def by_grid(self) -> list:
        """``[(grid factor, options on that grid), ...]``, the model grid first (when it has
        levels), then each finer grid: each grid's levels with factors relative to it, the
        integration steps one more per halving, and a zero start tried on the first grid only."""
        grids = sorted({min(level.factor, 1) for level in self.levels}, reverse=True)
        out = []
        for index, grid in enumerate(grids):
            levels = tuple(dataclasses.replace(level, factor=_relative(level.factor, grid))
                           for level in self.levels if min(level.factor, 1) == grid)
            extra = int(round(-math.log2(grid)))
            out.append((grid, dataclasses.replace(self, levels=levels, steps=self.steps + extra,
                                                  zero_if_better=self.zero_if_better and index == 0)))
        return out


def _relative(factor, grid):
    """`factor` relative to a grid `grid` times coarser than the model grid (an int when whole)."""
    relative = factor / grid if grid != 1 else factor
    return int(relative) if relative == int(relative) else relative


@dataclass
class RefineResult:
    velocity: np.ndarray
    stats: dict = field(default_factory=dict)


def _boundary_weight(shape, width: int, xp=np):
    """1 inside, falling linearly to 0 on the faces over `width` voxels (None when width is 0);
    made on the host (a few small arrays), handed over in `xp`."""
    if width <= 0:
        return None
    distance = np.full(shape, np.inf, np.float32)
    for axis, n in enumerate(shape):
        index = np.arange(n, dtype=np.float32)
        along = np.minimum(index, n - 1 - index).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        distance = np.minimum(distance, along)
    return xp.asarray(np.minimum(distance / np.float32(width), np.float32(1.0)))


def _half_steps(options: RefineOptions, factor: int) -> int:
    """Scaling-and-squaring steps for v/2 on a grid `factor` times coarser than the model grid:
    v/2 in that grid's voxels is 2 * factor times smaller than v in model voxels, so this many
    fewer steps keep the first step, v / 2^steps in model voxels, as small."""
    return max(1, options.steps - 1 - int(round(np.log2(factor))))


# The MIND similarity is minus this weight times the mean (over voxels and channels) squared
# descriptor difference: its balance against the levels' regulariser weights, which were made
# for local NCC (the choice: docs/contrasts.md).
MIND_WEIGHT = 1.0


@dataclass
class _Pair:
    """One grid's images as the metric compares them: the images (``"ncc"``) or their MIND
    descriptors (C, X, Y, Z), and the voxels each must not read (float32, grown by what a
    descriptor reads; None: none)."""

    fixed: object
    moving: object
    metric: str = "ncc"
    fixed_excluded: object = None
    moving_excluded: object = None


def _make_pair(fixed, moving, metric, fixed_excluded=None, moving_excluded=None) -> _Pair:
    excluded = (fixed_excluded, moving_excluded)
    if metric == "mind":
        fixed, moving = (mind_descriptors(image, excluded=e) for image, e in zip((fixed, moving), excluded))
    reach = descriptor_reach() if metric == "mind" else 0
    return _Pair(fixed, moving, metric, *(None if e is None else grow(e, reach).astype(np.float32) for e in excluded))


def _kept(pair: _Pair, backward, forward, radius: int):
    """1 where the comparison reads no excluded voxel, 0 elsewhere (None without exclusions):
    each excluded set warped as its image is (any weight on it counts), then grown by the NCC
    window (a descriptor's own reach was added before the warp)."""
    excluded = None
    for mask, through in ((pair.fixed_excluded, backward), (pair.moving_excluded, forward)):
        if mask is not None:
            read = (mask if through is None else ops.warp(mask[None], through)[0]) > 0
            excluded = read if excluded is None else excluded | read
    if excluded is None:
        return None
    return (~grow(excluded, radius if pair.metric == "ncc" else 0)).astype(np.float32)


def _evaluate(pair: _Pair, v, level: Level, options: RefineOptions, factor: int = 1, fixed_means=None):
    """Objective, similarity and what the next update needs: the warped images (or descriptors),
    the similarity's derivatives by them, the voxels compared (None: all) and the NCC box means.
    `fixed_means`: the box means of ``fixed`` and ``fixed * fixed`` (2, X, Y, Z) when only the
    moving image moves: they do not change within a level, so a level computes them once."""
    xp = ops.array_namespace(pair.fixed, pair.moving, v)
    fixed, moving = pair.fixed, pair.moving
    channels = fixed[None] if pair.metric == "ncc" else fixed
    # Squaring steps: as few as keep the first step within ops.SQUARING_FIRST_STEP_VOXELS, at most
    # the grid's own count (`_half_steps`), so a small velocity is not integrated in 7 steps.
    if level.symmetric:
        half = xp.ascontiguousarray(v * np.float32(0.5))
        steps = ops.squaring_steps(half, _half_steps(options, factor))
        backward = ops.integrate_velocity(-half, steps)
        forward = ops.integrate_velocity(half, steps)
        fixed_w = ops.warp(channels, backward)
    else:  # the fixed image as it is, the moving one through exp(v): compared on the fixed grid
        v = xp.ascontiguousarray(v)
        steps = ops.squaring_steps(v, _half_steps(options, factor) + 1)
        backward, fixed_w = None, channels
        forward = ops.integrate_velocity(v, steps)
    moving_w = ops.warp(moving[None] if pair.metric == "ncc" else moving, forward)
    kept = _kept(pair, backward, forward, level.radius)
    if pair.metric == "mind":
        difference = moving_w - fixed_w
        squared = (difference * difference).mean(axis=0)
        if kept is not None:
            squared = squared * kept
            difference = difference * kept[None]
        similarity = -MIND_WEIGHT * float(squared.mean(dtype=np.float64))
        # d(similarity) / d(each voxel and channel) times the voxel count (as the NCC's are)
        d_moving = difference * np.float32(-2.0 * MIND_WEIGHT / difference.shape[0])
        value = -similarity + level.reg * ops.gradient_energy(v)
        return value, similarity, (fixed_w, moving_w, None, -d_moving, d_moving, kept)
    fixed_w, moving_w = fixed_w[0], moving_w[0]
    if fixed_means is None or level.symmetric:
        means = box_mean(xp.stack([fixed_w, moving_w, fixed_w * fixed_w, moving_w * moving_w, fixed_w * moving_w]),
                         level.radius)
    else:  # each channel is filtered alone, so these are the very values of the 5-channel box mean
        moved = box_mean(xp.stack([moving_w, moving_w * moving_w, fixed_w * moving_w]), level.radius)
        means = xp.stack([fixed_means[0], moved[0], fixed_means[1], moved[1], moved[2]])
    if level.gradient == "exact" and kept is None:  # the next step takes the exact derivatives instead
        d_fixed = d_moving = None
        ncc = ops.lncc_mean(fixed_w, moving_w, means, options.eps)  # the host's one read (and the energy's)
    else:
        cc, d_fixed, d_moving = ops.lncc(fixed_w, moving_w, means, options.eps)
        if kept is not None:
            cc, d_fixed, d_moving = cc * kept, d_fixed * kept, d_moving * kept
        ncc = float(cc.mean(dtype=np.float64))  # the host's one read of this evaluation (and the energy's)
    value = -ncc + level.reg * ops.gradient_energy(v)
    return value, ncc, (fixed_w, moving_w, means, d_fixed, d_moving, kept)


def _force(fixed_w, moving_w, d_fixed, d_moving, symmetric: bool):
    """d(similarity)/dv: the moving image (or each descriptor channel) moves with +grad M, the
    fixed one with -grad F when both move."""
    if moving_w.ndim == 3:  # one image: one channel (d_fixed None when only the moving one moves)
        fixed_w, moving_w, d_fixed, d_moving = [fixed_w], [moving_w], [d_fixed], [d_moving]
    force = None
    for channel in range(len(moving_w)):
        moved = d_moving[channel][None] * ops.image_gradient(moving_w[channel])
        force = moved if force is None else force + moved
        if symmetric:
            force = force - d_fixed[channel][None] * ops.image_gradient(fixed_w[channel])
    return force


def _ncc_derivatives(fixed_w, moving_w, means, level: Level, eps: float):
    """The exact derivatives of ``mean_x cc(x)`` by each voxel of the two warped images.

    A voxel y lies in the window of every x within `radius` of it, so its derivative sums the
    windows' terms: with ``a = 1 / sqrt(var_f var_m)`` and ``b_f = a cov / var_f`` (the same
    eps-floored statistics as `ops.lncc`), ``d/dm(y) = f(y) <a> - <a mean_f> - m(y) <b_m> +
    <b_m mean_m>``, ``<.>`` the box mean around y. ANTs' CC (and this refinement before)
    keeps only y's own window (``gradient="window"``). One more box mean of 7 channels per
    iteration (4 when only the moving image moves, ``symmetric=False``: ``d_fixed`` is then
    None): only the accepted step needs it, the line search's evaluations do not. One fused
    kernel (`ops.ncc_exact_derivatives`: the terms, their box mean and the sums in `_C`).
    """
    return ops.ncc_exact_derivatives(fixed_w, moving_w, means, eps, level.radius, both=level.symmetric)


def objective(fixed, moving, velocity, options: RefineOptions = RefineOptions(), *, fixed_exclude=None,
              moving_exclude=None) -> float:
    """The refinement's objective (lower is better) for `velocity` on this pair, as its last
    level defines it (its metric `options.metric`, the exclusion masks on the images' grid)."""
    fixed, moving, velocity = _check(fixed, moving, velocity)
    pair = _make_pair(fixed, moving, options.metric, *_check_excluded(fixed, fixed_exclude, moving_exclude))
    return _evaluate(pair, velocity, options.levels[-1], options)[0]


def _optimise_level(pair: _Pair, v, level: Level, options: RefineOptions, deadline, factor):
    xp = ops.array_namespace(pair.fixed, pair.moving, v)
    fixed = pair.fixed
    fixed_means = None
    if pair.metric == "ncc" and not level.symmetric:
        fixed_means = box_mean(xp.stack([fixed, fixed * fixed]), level.radius)
    value, similarity, cache = _evaluate(pair, v, level, options, factor, fixed_means)
    key = pair.metric
    record = {"shape": list(v.shape[1:]), "objective_before": value, f"{key}_before": similarity, "iterations": 0,
              "accepted": 0, "stop": "iterations"}
    step, history = options.step, [value]
    weight = _boundary_weight(tuple(v.shape[1:]), options.boundary, xp)
    for _ in range(level.iterations):
        if deadline is not None and time.perf_counter() > deadline:
            record["stop"] = "budget"
            break
        fixed_w, moving_w, means, d_fixed, d_moving, kept = cache
        # With exclusions the NCC force keeps the window form (the kernel knows no weights).
        if pair.metric == "ncc" and level.gradient == "exact" and kept is None:
            d_fixed, d_moving = _ncc_derivatives(fixed_w, moving_w, means, level, options.eps)
        force = _force(fixed_w, moving_w, d_fixed, d_moving, level.symmetric)
        # Descent direction of the whole objective: smoothed similarity force plus the
        # regulariser's own gradient (-d/dv of reg |grad v|^2 is 2 reg times the Laplacian of v).
        force = smooth(force, level.fluid_sigma)
        peak = ops.descent_direction(force, v, np.float32(2 * level.reg), weight)
        if not peak > 0:
            record["stop"] = "no force"
            break
        record["iterations"] += 1
        while step >= options.min_step:
            candidate = v + np.float32(step / peak) * force
            if options.elastic_sigma > 0:
                candidate = smooth(candidate, options.elastic_sigma)
            cand_value, cand_similarity, cand_cache = _evaluate(pair, candidate, level, options, factor, fixed_means)
            if cand_value < value:
                v, value, similarity, cache = candidate, cand_value, cand_similarity, cand_cache
                record["accepted"] += 1
                step = min(step * 1.2, 2 * options.step)
                break
            step *= 0.5
        else:
            record["stop"] = "step below minimum"
            break
        history.append(value)
        if len(history) > 5 and history[-6] - history[-1] < options.plateau:
            record["stop"] = "plateau"
            break
    record.update({"objective_after": value, f"{key}_after": similarity})
    return v, record


def _check_excluded(fixed, fixed_exclude, moving_exclude):
    """The exclusion masks as boolean arrays of the images' grid (None where not given)."""
    return [excluded_voxels(mask, fixed, name, "the images'")
            for name, mask in (("fixed_exclude", fixed_exclude), ("moving_exclude", moving_exclude))]


def _check(fixed, moving, velocity):
    xp = ops.array_namespace(fixed, moving, velocity)
    fixed = xp.asarray(fixed)
    moving = xp.asarray(moving)
    if fixed.ndim != 3 or moving.shape != fixed.shape:
        raise ValueError(f"fixed and moving must be 3-D images of one shape, got {fixed.shape} and {moving.shape}")
    if min(fixed.shape) < 4:
        raise ValueError(f"images must have at least 4 voxels per axis, got shape {fixed.shape}")
    velocity = xp.zeros((3, *fixed.shape), np.float32) if velocity is None else xp.asarray(velocity)
    if velocity.shape != (3, *fixed.shape):
        raise ValueError(f"velocity must have shape {(3, *fixed.shape)}, got {velocity.shape}")
    arrays = [xp.ascontiguousarray(a, dtype=np.float32) for a in (fixed, moving, velocity)]
    for name, array in zip(("fixed", "moving", "velocity"), arrays):
        if not bool(xp.all(xp.isfinite(array))):
            raise ValueError(f"{name} holds NaN or infinite values")
    return arrays


def _downsample(volume, times: int):
    xp = ops.array_namespace(volume)
    for _ in range(times):
        volume = ops.downsample_haar(xp.ascontiguousarray(volume))
    return volume


def _level_fits(factor: int, shape) -> bool:
    """Whether a level `factor` times coarser than the model grid exists for this grid: the
    factor a power of 2, and the grid halving that often (even sizes, at least 4 voxels left)."""
    times = int(round(np.log2(factor)))
    return 2 ** times == factor and not any(n % factor or n // factor < 4 for n in shape)


class _Pairs:
    """The pair on each grid of the levels (the model grid halved `times` times), made once."""

    def __init__(self, fixed, moving, metric, excluded=(None, None)):
        self.fixed, self.moving, self.metric, self.excluded = fixed, moving, metric, excluded
        self._made = {}

    def halved(self, times: int) -> _Pair:
        if times not in self._made:
            fixed, moving = _downsample(self.fixed[None], times)[0], _downsample(self.moving[None], times)[0]
            excluded = [None if e is None else shrink_any(e, times) for e in self.excluded]
            self._made[times] = _make_pair(fixed, moving, self.metric, *excluded)
        return self._made[times]


def _run_levels(pairs: _Pairs, start_velocity, run, options: RefineOptions, deadline):
    """Coarse to fine over the levels `run`; returns (per-level records, velocity on the grid given)."""
    xp = ops.array_namespace(start_velocity)
    levels = []
    v_full = start_velocity.copy()
    for level in run:
        factor = level.factor
        if not _level_fits(factor, start_velocity.shape[1:]):
            continue
        times = int(round(np.log2(factor)))
        tick = time.perf_counter()
        pair = pairs.halved(times)
        v_start = _downsample(v_full, times) / np.float32(factor)
        v_level, record = _optimise_level(pair, xp.ascontiguousarray(v_start), level, options, deadline, factor)
        if times == 0:
            v_full = v_level
        else:
            delta = v_level - v_start
            for _ in range(times):  # carry the change (not the start) up to the model grid
                delta = ops.upsample_field(xp.ascontiguousarray(delta))
            v_full = v_full + delta
        record.update(factor=factor, seconds=time.perf_counter() - tick,
                      **{name: getattr(level, name) for name in PER_LEVEL})
        levels.append(record)
    return levels, v_full


def refine_velocity(fixed, moving, velocity=None, *, options: RefineOptions = RefineOptions(),
                    covered: float | None = None, fixed_exclude=None, moving_exclude=None) -> RefineResult:
    """Refine `velocity` (3, X, Y, Z), voxels of the model grid, zeros when None) for this pair.

    `fixed`, `moving`: model-grid images (X, Y, Z), intensities about [0, 1]; all numpy or
    all cupy (then the refinement runs on their GPU and returns a cupy velocity). The budget is
    ``level.iterations`` per level; ``options.max_seconds`` optionally stops the refinement
    where it is (its best so far) after that much wall-clock time. `covered`: the grid factor
    that the given velocity was made on (a network's last level); levels at least that coarse
    are skipped while that velocity is the start, and all run when zero replaces it.
    `fixed_exclude`, `moving_exclude`: masks on the model grid (nonzero: the voxels of the fixed
    image, and of the moving image as given, that the similarity must not read).
    """
    fixed, moving, start_velocity = _check(fixed, moving, velocity)
    excluded = _check_excluded(fixed, fixed_exclude, moving_exclude)
    if options.levels[-1].factor < 1:
        raise ValueError(f"refine_velocity runs levels on the grid it is given (factor >= 1), got factors "
                         f"{[level.factor for level in options.levels]}; a finer grid needs its own images "
                         "(RefineOptions.by_grid, as the RefineStage runs them)")
    xp = ops.array_namespace(fixed, moving, start_velocity)
    pairs = _Pairs(fixed, moving, options.metric, excluded)
    metric = options.metric
    budget = options.max_seconds
    started = time.perf_counter()
    deadline = None if budget is None else started + float(budget)
    # The objective is judged on the grid given, as the last level defines it.
    judged = options.levels[-1]
    start = "given"
    given_nonzero = bool(xp.any(start_velocity))
    choose_start = options.zero_if_better and given_nonzero
    # The levels run from the given start: without those the velocity already covers.
    from_given = options.levels
    if covered is not None and given_nonzero:
        from_given = tuple(level for level in options.levels if level.factor < covered)
    # A first level on the model grid with the judged settings evaluates the start itself, and
    # its record says what it found: one evaluation fewer. Otherwise the start is evaluated here.
    fitting = [level for level in from_given if _level_fits(level.factor, fixed.shape)]
    start_in_first_level = (not choose_start and bool(fitting) and fitting[0].factor == 1
                            and fitting[0].settings == judged.settings)
    if not start_in_first_level:
        start_value = given_value = _evaluate(pairs.halved(0), start_velocity, judged, options)[:2]
    if choose_start:
        zero = xp.zeros_like(start_velocity)
        zero_value = _evaluate(pairs.halved(0), zero, judged, options)[:2]
        if zero_value[0] < given_value[0]:
            start_velocity, start_value, start = zero, zero_value, "zero"
    run = from_given if start == "given" else options.levels
    with ops.inputs_known_finite():  # _check made them finite; the kernels keep them so
        levels, v_full = _run_levels(pairs, start_velocity, run, options, deadline)
    if start_in_first_level:
        start_value = given_value = (levels[0]["objective_before"], levels[0][f"{metric}_before"])
    # A last level on the model grid has already evaluated v_full.
    if levels and levels[-1]["factor"] == 1:
        end_value = (levels[-1]["objective_after"], levels[-1][f"{metric}_after"])
    else:
        end_value = _evaluate(pairs.halved(0), v_full, judged, options) if levels else start_value
    kept = end_value[0] < start_value[0]
    stats = {
        "levels": levels,
        "metric": metric,
        "start": start, "objective_given": given_value[0], f"{metric}_given": given_value[1],
        "objective_before": start_value[0], f"{metric}_before": start_value[1],
        "objective_after": end_value[0] if kept else start_value[0],
        f"{metric}_after": end_value[1] if kept else start_value[1],
        "kept_refinement": bool(kept),
        "skipped_factors": [level.factor for level in options.levels if level not in run],
        "iterations": int(sum(r["iterations"] for r in levels)),
        "seconds": time.perf_counter() - started,
    }
    if stats["iterations"] == 0 and any(r.get("stop") == "budget" for r in levels):
        logging.getLogger("smgic_rt").warning(
            "refinement ran no iteration: its time limit (max_seconds=%g) ran out before the first one; "
            "the result is the network's (raise --refine-seconds, or leave it unset)", budget)
    return RefineResult(xp.ascontiguousarray(v_full if kept else start_velocity, dtype=np.float32), stats)
