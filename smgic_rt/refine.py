"""Per-pair deformable refinement, warm-started from the network's velocity.

Symmetric (by default) and diffeomorphic: the stationary velocity ``v`` is optimised so that the fixed image
pulled half-way back, ``F o exp(-v/2)``, and the moving image pulled half-way forward,
``M o exp(v/2)``, agree in local NCC at the midpoint (or, with ``symmetric=False``, ``M o exp(v)``
and ``F`` itself); ``exp(v)`` then registers moving onto fixed and ``exp(-v)`` is its inverse, as
for the network. Updates are the local-NCC forces of both
images (`RefineOptions.gradient`), Gaussian-smoothed (SyN-style "fluid"
regularisation) plus the optional regulariser's gradient, taken as normalised steps with a
backtracking line search on the objective ``-mean LNCC + reg * |grad v|^2``, the velocity
smoothed after each step ("elastic"), coarse to fine (1/4, 1/2 of the model grid and the grid
itself by default; the smoothing, the regulariser's weight, symmetry and the force may differ
per level, `PER_LEVEL`). ``exp(+-v/2)`` is integrated with one scaling-and-squaring step fewer than
``exp(v)`` (and one fewer again per halving of the grid), which keeps the first step as small.
As in ANTs' SyN the boundary is stationary: updates fade to zero at the grid's faces.
A warm start that scores worse than no deformation at all is dropped (the refinement then starts
from zero, and says so). A step that does not lower the objective is never taken, and the result
is checked against the start on the model grid: the refinement never returns a velocity worse by
its objective than the one it was given.

The per-voxel work (box means, local NCC and its derivatives, gradients, Gaussian filters,
warps, scaling and squaring) runs in `smgic_rt._C` through `smgic_rt.ops`; the whole-array
arithmetic between the kernels is written once against the inputs' namespace
(`ops.array_namespace`: numpy, or cupy for CUDA arrays), so a GPU refinement is this very code
with every array on the device. The host reads back one number per evaluation of the
objective (the line search compares it) and the largest force per iteration (the step's scale).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from . import ops
from ._filters import box_mean, smooth

__all__ = ["RefineOptions", "RefineResult", "refine_velocity", "objective", "level_options", "GRADIENTS", "PER_LEVEL"]


GRADIENTS = ("window", "exact")
# Options that may hold one value per level (a tuple as long as `factors`, coarsest first) instead
# of one for all; a finer grid after the levels (`fine_iterations`) takes the last level's value.
# Each level's record in the stats says the values it ran with.
PER_LEVEL = ("fluid_sigma", "reg", "symmetric", "gradient", "radius")


@dataclass(frozen=True)
class RefineOptions:
    # Coarse-to-fine, relative to the model grid. An iteration on the model grid itself (factor 1)
    # costs about 8x one at factor 2, but on 1 mm Colin27 pairs 8 of them raised mean Dice from
    # 0.865 to 0.907 (benchmarks/accuracy.py); at 2 mm the gain is smaller (about +0.015).
    factors: tuple = (4, 2, 1)
    iterations: tuple = (60, 40, 8)       # at most, per factor
    # Measured on the real-pair set (6 directed pairs, raw headers, network off; mean Dice) and
    # on benchmarks/accuracy.py's 1 mm synthetic heads: these values 0.7086 and 0.9289; Greedy's
    # brain window and smoothing (radius 2, fluid 1.732, elastic 0.707, no |grad v|^2 term)
    # 0.7117 on the real pairs but 0.9052 (with the exact gradient) on the heads, radius 2 alone
    # 0.7113 and 0.9187 (exact). So the heads keep these. On sharper images (`antialias` 0.5)
    # radius 2 on the model grid's level alone, with the window force there, raised the 256^3
    # pair of benchmarks/peers.py 0.7613 -> 0.7634 and the heads 0.9324 -> 0.9329 (real pairs
    # 0.7157 -> 0.7149): the fast preset takes it (refine_sweep_2026-12-05e.md).
    radius: int | tuple = 1               # local NCC window (2 radius + 1)^3; one value or one per level
    fluid_sigma: float | tuple = 1.5      # Gaussian on each update, voxels of the level
    elastic_sigma: float = 0.0            # Gaussian on the whole velocity after each step (0: none;
                                          # the |grad v|^2 term regularises instead)
    step: float = 0.5                     # initial largest update, voxels of the level
    min_step: float = 0.02                # below this the level stops (no step helps)
    reg: float | tuple = 0.05             # weight of |grad v|^2 in the objective (both presets
                                          # weaken it on their last grids: smgic_rt.quality)
    # The NCC force: "window" takes each voxel's derivative through its own window only (as
    # ANTs' CC does); "exact" sums it over every window that holds the voxel (`_ncc_derivatives`).
    # Measured (mean Dice): real pairs 0.7086 -> 0.7120, but the 256^3 pair of benchmarks/peers.py
    # 0.7582 -> 0.7519, the heads 0.9289 -> 0.9266, and +1.2 s on that pair (7.2 s against 6.0,
    # 5 alternating runs); with the accurate preset real pairs 0.7104 -> 0.7129 but the 256^3
    # pair 0.7625 -> 0.7574 (+11 s). Better on four pairs, worse on both MNI152/CAT12 ones, so
    # it is not the default; the accurate preset takes it on every level, with symmetric=False
    # below (together 0.7160 on the real pairs); the fast preset on its 4 mm level, where it
    # helps the real pairs, and the window force with a 5-voxel window on the model grid, where
    # that helps the 256^3 pair (smgic_rt.quality). One value or one per level.
    gradient: str | tuple = "window"
    # True: both images move half-way and meet at the midpoint (unbiased towards either grid);
    # False: the moving image alone moves, through exp(v), onto the fixed image as it is, as
    # Greedy does: nothing blurs the fixed image, on whose grid labels are compared. Measured
    # (mean Dice, exact gradient): real pairs 0.7120 -> 0.7153 (fast), 0.7129 -> 0.7160
    # (accurate); the 1 mm synthetic heads 0.9289 -> 0.9195 (window gradient, fast). So the
    # coarse levels stay symmetric in the fast preset, its last level and the accurate preset
    # are not (smgic_rt.quality). One value or one per level.
    symmetric: bool | tuple = True
    plateau: float = 1e-4                 # stop when 5 iterations gain less than this
    steps: int = 7                        # scaling-and-squaring steps for v on the model grid
    eps: float = 1e-3                     # NCC variance floor (images are in [0, 1])
    # Stationary boundary, as ANTs' SyN keeps its field's: updates fade to zero over this many
    # voxels of each level towards the grid's faces, so the faces never move. Outside the model
    # grid the field is read with border padding; a face that moved would drag every voxel beyond
    # it along (on the demo's heads, 9-voxel displacements at the faces squashed the scalp
    # outside the grid into tubes of det(J) ~ 0.35). 0: free boundary.
    boundary: int = 2
    # Start from zero when the given velocity scores worse than zero: a weak network's field
    # costs the coarse levels time to undo (on the 1 mm Colin27 head pairs of accuracy.py the
    # first CPU-trained default scored 0.58 Dice with its network, 0.65 with the affine alone).
    zero_if_better: bool = True
    # Iterations on a grid twice finer than the model grid (1 mm for the default bundle's 2 mm),
    # after the levels above: where Greedy and ANTs end. Each costs about 8x one on the model
    # grid. 0: none (the fast default). The RefineStage prepares that grid's images.
    fine_iterations: int = 0
    # How much the images the refinement compares are low-passed when resampled onto the model
    # grid: the strength of `smgic_rt.preprocess.antialias` (1: a Gaussian making up the whole
    # difference in voxel size, as the network was trained; 0: none). The PreprocessStage makes
    # them so (the network, when it runs, gets its own at 1). Measured with the fast preset of
    # 2026-12-05 (network off, mean Dice; benchmarks/refine_sweep.py's fast_d_antialias*): 1 ->
    # 0.5 -> 0 raised accuracy.py's real pairs 0.7152 -> 0.7157 -> 0.7157, the 256^3 pair of
    # benchmarks/peers.py 0.7604 -> 0.7613 -> 0.7616, its 1 mm synthetic heads 0.9297 -> 0.9324
    # -> 0.9326 (its 2 mm brains are 2 mm already: unchanged). 0.5 keeps most of the gain and
    # most of the protection against aliasing.
    antialias: float = 0.5
    # A wall-clock limit in seconds (None: none). The iteration counts above are the budget;
    # with a time limit the result depends on the machine's load, so it is off by default.
    max_seconds: float | None = None

    def __post_init__(self):
        for name in PER_LEVEL:
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != len(self.factors):
                raise ValueError(f"{name} must be one value or one per level ({len(self.factors)}, as factors), "
                                 f"got {value!r}")
        if any(g not in GRADIENTS for g in (self.gradient if isinstance(self.gradient, tuple) else (self.gradient,))):
            raise ValueError(f"gradient must be one of {list(GRADIENTS)}, got {self.gradient!r}")
        radii = self.radius if isinstance(self.radius, tuple) else (self.radius,)
        if any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in radii):
            raise ValueError(f"radius must be an int >= 1 or one per level, got {self.radius!r}")
        if not 0 <= self.antialias <= 1:
            raise ValueError(f"antialias must be in [0, 1], got {self.antialias!r}")
        if not isinstance(self.fine_iterations, int) or isinstance(self.fine_iterations, bool) or self.fine_iterations < 0:
            raise ValueError(f"fine_iterations must be an int >= 0, got {self.fine_iterations!r}")


@dataclass
class RefineResult:
    velocity: np.ndarray
    stats: dict = field(default_factory=dict)


def _gradient_energy(v) -> float:
    xp = ops.array_namespace(v)
    return float(sum(xp.mean(xp.square(xp.diff(v, axis=a))) for a in (1, 2, 3)))


def _laplacian(v):
    """Discrete Laplacian of each channel (edge-replicated borders)."""
    xp = ops.array_namespace(v)
    padded = xp.pad(v, ((0, 0), (1, 1), (1, 1), (1, 1)), mode="edge")
    core = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    out = -6.0 * padded[core]
    for axis in (1, 2, 3):
        for shift in (-1, 1):
            index = list(core)
            index[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            out += padded[tuple(index)]
    return out.astype(np.float32)


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


def _evaluate(fixed, moving, v, options: RefineOptions, factor: int = 1, fixed_means=None):
    """Objective and what the next update needs (warped images and their NCC derivatives).
    `fixed_means`: the box means of ``fixed`` and ``fixed * fixed`` (2, X, Y, Z) when only the
    moving image moves: they do not change within a level, so a level computes them once."""
    xp = ops.array_namespace(fixed, moving, v)
    if options.symmetric:
        half = xp.ascontiguousarray(v * np.float32(0.5))
        steps = _half_steps(options, factor)
        fixed_w = ops.warp(fixed[None], ops.integrate_velocity(-half, steps))[0]
        moving_w = ops.warp(moving[None], ops.integrate_velocity(half, steps))[0]
    else:  # the fixed image as it is, the moving one through exp(v): compared on the fixed grid
        steps = _half_steps(options, factor) + 1
        fixed_w = fixed
        moving_w = ops.warp(moving[None], ops.integrate_velocity(xp.ascontiguousarray(v), steps))[0]
    if fixed_means is None or options.symmetric:
        means = box_mean(xp.stack([fixed_w, moving_w, fixed_w * fixed_w, moving_w * moving_w, fixed_w * moving_w]),
                         options.radius)
    else:  # each channel is filtered alone, so these are the very values of the 5-channel box mean
        moved = box_mean(xp.stack([moving_w, moving_w * moving_w, fixed_w * moving_w]), options.radius)
        means = xp.stack([fixed_means[0], moved[0], fixed_means[1], moved[1], moved[2]])
    cc, d_fixed, d_moving = ops.lncc(fixed_w, moving_w, means, options.eps)
    ncc = float(cc.mean(dtype=np.float64))  # the host's one read of this evaluation (and the energy's)
    value = -ncc + options.reg * _gradient_energy(v)
    return value, ncc, (fixed_w, moving_w, means, d_fixed, d_moving)


def _ncc_derivatives(fixed_w, moving_w, means, options: RefineOptions):
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
    return ops.ncc_exact_derivatives(fixed_w, moving_w, means, options.eps, options.radius, both=options.symmetric)


def objective(fixed, moving, velocity, options: RefineOptions = RefineOptions()) -> float:
    """The refinement's objective (lower is better) for `velocity` on this pair, as its last
    level defines it."""
    fixed, moving, velocity = _check(fixed, moving, velocity)
    return _evaluate(fixed, moving, velocity, level_options(options, -1))[0]


def _optimise_level(fixed, moving, v, iterations, options: RefineOptions, deadline, factor):
    xp = ops.array_namespace(fixed, moving, v)
    fixed_means = None if options.symmetric else box_mean(xp.stack([fixed, fixed * fixed]), options.radius)
    value, ncc, cache = _evaluate(fixed, moving, v, options, factor, fixed_means)
    record = {"shape": list(fixed.shape), "objective_before": value, "ncc_before": ncc, "iterations": 0,
              "accepted": 0, "stop": "iterations"}
    step, history = options.step, [value]
    weight = _boundary_weight(fixed.shape, options.boundary, xp)
    for _ in range(iterations):
        if deadline is not None and time.perf_counter() > deadline:
            record["stop"] = "budget"
            break
        fixed_w, moving_w, means, d_fixed, d_moving = cache
        if options.gradient == "exact":
            d_fixed, d_moving = _ncc_derivatives(fixed_w, moving_w, means, options)
        # d(ncc)/dv: moving_w = M(x + v/2 ...) moves with +grad M, fixed_w with -grad F (when
        # symmetric; otherwise the fixed image does not move).
        force = d_moving[None] * ops.image_gradient(moving_w)
        if options.symmetric:
            force = force - d_fixed[None] * ops.image_gradient(fixed_w)
        # Descent direction of the whole objective: smoothed NCC force plus the regulariser's
        # own gradient (-d/dv of reg |grad v|^2 is 2 reg times the Laplacian of v).
        force = smooth(force, options.fluid_sigma) + np.float32(2 * options.reg) * _laplacian(v)
        if weight is not None:
            force *= weight
        peak = float(xp.sqrt(xp.square(force).sum(axis=0)).max())
        if not peak > 0:
            record["stop"] = "no force"
            break
        record["iterations"] += 1
        while step >= options.min_step:
            candidate = v + np.float32(step / peak) * force
            if options.elastic_sigma > 0:
                candidate = smooth(candidate, options.elastic_sigma)
            cand_value, cand_ncc, cand_cache = _evaluate(fixed, moving, candidate, options, factor, fixed_means)
            if cand_value < value:
                v, value, ncc, cache = candidate, cand_value, cand_ncc, cand_cache
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
    record.update(objective_after=value, ncc_after=ncc)
    return v, record


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


def level_options(options: RefineOptions, index: int) -> RefineOptions:
    """`options` with each `PER_LEVEL` option at its value for level `index` (-1: the last)."""
    return dataclasses.replace(options, **{name: getattr(options, name)[index] for name in PER_LEVEL
                                           if isinstance(getattr(options, name), tuple)})


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


def _run_levels(fixed, moving, start_velocity, options: RefineOptions, deadline):
    """Coarse to fine over ``options.factors``; returns (per-level records, velocity on the model grid)."""
    xp = ops.array_namespace(fixed, moving, start_velocity)
    levels = []
    v_full = start_velocity.copy()
    for index, (factor, iterations) in enumerate(zip(options.factors, options.iterations)):
        if not _level_fits(factor, fixed.shape):
            continue
        times = int(round(np.log2(factor)))
        tick = time.perf_counter()
        f, m = _downsample(fixed[None], times)[0], _downsample(moving[None], times)[0]
        v_start = _downsample(v_full, times) / np.float32(factor)
        settings = level_options(options, index)
        v_level, record = _optimise_level(f, m, xp.ascontiguousarray(v_start), iterations, settings, deadline,
                                          factor)
        if times == 0:
            v_full = v_level
        else:
            delta = v_level - v_start
            for _ in range(times):  # carry the change (not the start) up to the model grid
                delta = ops.upsample_field(xp.ascontiguousarray(delta))
            v_full = v_full + delta
        record.update(factor=factor, seconds=time.perf_counter() - tick,
                      **{name: getattr(settings, name) for name in PER_LEVEL})
        levels.append(record)
    return levels, v_full


def refine_velocity(fixed, moving, velocity=None, *, options: RefineOptions = RefineOptions()) -> RefineResult:
    """Refine `velocity` (3, X, Y, Z), voxels of the model grid, zeros when None) for this pair.

    `fixed`, `moving`: model-grid images (X, Y, Z), intensities about [0, 1]; all numpy or
    all cupy (then the refinement runs on their GPU and returns a cupy velocity). The budget is
    ``options.iterations`` per level; ``options.max_seconds`` optionally stops the refinement
    where it is (its best so far) after that much wall-clock time.
    """
    fixed, moving, start_velocity = _check(fixed, moving, velocity)
    xp = ops.array_namespace(fixed, moving, start_velocity)
    budget = options.max_seconds
    if budget is not None and not budget > 0:
        raise ValueError(f"max_seconds must be a positive number of seconds or None, got {budget!r}")
    started = time.perf_counter()
    deadline = None if budget is None else started + float(budget)
    # The objective is judged on the model grid, as the last level defines it.
    judged = level_options(options, -1)
    start = "given"
    choose_start = options.zero_if_better and bool(xp.any(start_velocity))
    # A first level on the model grid with the judged options evaluates the start itself, and its
    # record says what it found: one evaluation fewer (on the accurate preset's 1 mm grid, about
    # 0.35 s on 2 cores). Otherwise the start is evaluated here.
    fitting = [index for index, factor in enumerate(options.factors) if _level_fits(factor, fixed.shape)]
    start_in_first_level = (not choose_start and bool(fitting) and options.factors[fitting[0]] == 1
                            and level_options(options, fitting[0]) == judged)
    if not start_in_first_level:
        start_value = given_value = _evaluate(fixed, moving, start_velocity, judged)[:2]
    if choose_start:
        zero = xp.zeros_like(start_velocity)
        zero_value = _evaluate(fixed, moving, zero, judged)[:2]
        if zero_value[0] < given_value[0]:
            start_velocity, start_value, start = zero, zero_value, "zero"
    with ops.inputs_known_finite():  # _check made them finite; the kernels keep them so
        levels, v_full = _run_levels(fixed, moving, start_velocity, options, deadline)
    if start_in_first_level:
        start_value = given_value = (levels[0]["objective_before"], levels[0]["ncc_before"])
    # A last level on the model grid has already evaluated v_full.
    if levels and levels[-1]["factor"] == 1:
        end_value = (levels[-1]["objective_after"], levels[-1]["ncc_after"])
    else:
        end_value = _evaluate(fixed, moving, v_full, judged) if levels else start_value
    kept = end_value[0] < start_value[0]
    stats = {
        "levels": levels,
        "start": start, "objective_given": given_value[0], "ncc_given": given_value[1],
        "objective_before": start_value[0], "ncc_before": start_value[1],
        "objective_after": end_value[0] if kept else start_value[0],
        "ncc_after": end_value[1] if kept else start_value[1],
        "kept_refinement": bool(kept),
        "iterations": int(sum(r["iterations"] for r in levels)),
        "seconds": time.perf_counter() - started,
    }
    return RefineResult(xp.ascontiguousarray(v_full if kept else start_velocity, dtype=np.float32), stats)
