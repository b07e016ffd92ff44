"""The stages of one registration, each an object with its options, a mode and a `run`.

Every stage has the same interface (FireANTs-style): ``Stage(mode, options)``, ``.name``,
``.enabled``, and ``run(state) -> dict`` that reads and fills the `PairState` and returns its
statistics (JSON-safe after `jsonable`); no stage writes statistics anywhere else. The runner (`smgic_rt.pipeline.run_stages`) times each
stage and records ``{"mode", "ran", "seconds", "stats"}`` for every one, in one shape.
Stages that may be switched off (affine, network, refine) take ``"auto" | "on" | "off"``;
``"auto"`` lets the stage decide from the bundle and the hardware (the network: the levels its
bundle's profile for this hardware measured to pay for themselves, maybe none).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import numpy as np

from .. import io
from ..geometry import transforms
from ..options import STAGE_MODES, check_int, check_mode, check_number
from .state import PairState

logger = logging.getLogger(__name__)

__all__ = ["STAGE_MODES", "Stage", "LoadStage", "AffineStage", "PreprocessStage", "PreprocessOptions", "NetworkStage",
           "NetworkOptions", "FieldsOptions", "covering_lattice", "RefineStage", "IntegrateStage", "FieldsStage",
           "ResampleStage", "QualityStage", "check_mode", "as_field"]


class Stage:
    """One step of the pipeline. Subclasses set `name`, `switchable` and implement `run`."""

    name = "stage"
    switchable = False  # may the user turn it off?
    default_mode = "on"
    # "module:Class" of the stage's options dataclass, imported only when the stage is made
    # (the CLI reads STAGE_MODES before any heavy module loads); None: no options.
    options_class = None

    def __init__(self, mode=None, options=None):
        self.mode = check_mode(self.default_mode if mode is None else mode, self.name)
        if self.mode == "off" and not self.switchable:
            raise ValueError(f"the {self.name} stage cannot be switched off")
        if self.options_class is not None:
            module, name = self.options_class.split(":")
            cls = getattr(importlib.import_module(module), name)
            if options is None:
                options = cls()
            elif not isinstance(options, cls):
                raise TypeError(f"{self.name}_options must be a {module}.{name}, got {type(options).__name__}")
        self.options = options

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def run(self, state: PairState) -> dict:
        raise NotImplementedError


class LoadStage(Stage):
    """Load and validate the inputs (each once: an `io.Volume` is taken as validated) and make
    the images as registered: voxel data, times the brain mask where one was given."""

    name = "load"

    def run(self, state):
        inputs = state.inputs
        state.fixed = volume_or_load(inputs["fixed"], io.load_volume, name="fixed image")
        state.moving = volume_or_load(inputs["moving"], io.load_volume, name="moving image")
        if inputs.get("fixed_mask") is not None:
            state.fixed_mask = volume_or_load(inputs["fixed_mask"], io.load_mask, like=state.fixed, name="fixed mask")
        if inputs.get("moving_mask") is not None:
            state.moving_mask = volume_or_load(inputs["moving_mask"], io.load_mask, like=state.moving,
                                               name="moving mask")
        for role, image in (("fixed", state.fixed), ("moving", state.moving)):
            if inputs.get(f"{role}_exclude") is not None:
                setattr(state, f"{role}_exclude", volume_or_load(inputs[f"{role}_exclude"], load_exclusion, like=image,
                                                                 name=f"{role} exclusion mask"))
        # The host -> device boundary of a GPU run (`state.xp` cupy): every later stage works on
        # these (and, to resample it once, on the moving image's own data).
        xp = state.xp
        fixed, moving = xp.asarray(state.fixed.data), xp.asarray(state.moving.data)
        # A background that is not zero (shifted, negative, z-scored) is registered as zero, so
        # that padding, foreground and intensity scaling all see what a zero background gives.
        state.fixed_background, state.moving_background = _background(fixed), _background(moving)
        fixed = fixed - np.float32(state.fixed_background) if state.fixed_background else fixed
        moving = moving - np.float32(state.moving_background) if state.moving_background else moving
        state.fixed_data = fixed if state.fixed_mask is None else fixed * xp.asarray(state.fixed_mask.data)
        state.moving_data = moving if state.moving_mask is None else moving * xp.asarray(state.moving_mask.data)
        if inputs.get("initial") is not None:  # the affine stage starts from it (or, off, keeps it)
            from ..io.transform_formats import initial_matrix

            state.world_matrix = initial_matrix(inputs["initial"], state.fixed, state.moving)
        return {"fixed_mask": state.fixed_mask is not None, "moving_mask": state.moving_mask is not None,
                "fixed_exclude": state.fixed_exclude is not None, "moving_exclude": state.moving_exclude is not None,
                "initial_transform": state.world_matrix is not None}


class AffineStage(Stage):
    """Global affine, fixed world -> moving world (`smgic_rt.methods.affine`, its `AffineOptions`),
    started from the caller's initial transform when one was given (load)."""

    name = "affine"
    switchable = True
    default_mode = "auto"
    options_class = "smgic_rt.methods.affine:AffineOptions"

    def run(self, state):
        from ..methods.affine import register_affine

        excluded = [None if v is None else state.xp.asarray(v.data) for v in (state.fixed_exclude, state.moving_exclude)]
        result = register_affine(state.fixed_data, state.fixed.affine, state.moving_data, state.moving.affine,
                                 options=self.options, initial=state.world_matrix, fixed_exclude=excluded[0],
                                 moving_exclude=excluded[1])
        state.world_matrix = np.asarray(result.matrix, dtype=np.float64)
        return result.stats


@dataclass(frozen=True)
class PreprocessOptions:
    """``antialias``: strength of the antialiasing Gaussian of the images the pair is registered
    on (`smgic_rt.methods.preprocess.antialias`): the refinement's (`RefineOptions.antialias`)
    when it runs, else 1, as the network was trained (the network stage asks for its own)."""

    antialias: float = 1.0

    def __post_init__(self):
        check_number(self.antialias, "antialias", minimum=0, maximum=1)


class PreprocessStage(Stage):
    """The model grid over the fixed image and both images on it with the bundle's normalisation
    (`smgic_rt.methods.preprocess`, the function training uses); the moving one through the
    affine stage's matrix."""

    name = "preprocess"
    options_class = "smgic_rt.pipeline.stages:PreprocessOptions"

    def __init__(self, mode=None, options=None, *, normalization: dict | None = None):
        from ..methods.preprocess import intensity_parameters

        super().__init__(mode, options)
        # The bundle records the normalisation it was trained with; refuse one we do not apply.
        self.intensity = intensity_parameters(normalization)

    def run(self, state):
        from ..methods import preprocess
        from .state import Grid

        shape, spacing = state.grid_shape, state.spacing
        state.intensity, state.antialias = self.intensity, self.options.antialias
        affine = preprocess.model_grid(state.fixed_data, state.fixed.affine, shape, spacing)
        state.model_grid = state.velocity_grid = Grid(shape, spacing, affine, state.integration_steps)
        state.images(state.model_grid, state.antialias)  # made here, where their time is counted
        return {"grid_shape": list(shape), "spacing_mm": list(spacing), "antialias": state.antialias}


@dataclass(frozen=True)
class NetworkOptions:
    """``levels``: run the network's levels 1..levels (coarsest first) and upsample the last
    velocity to the model grid; None: the bundle's measured profile for this hardware under
    ``network="auto"``, every level under ``"on"``.

    ``skip_covered``: the refinement then skips its levels at least as coarse as the network's
    last level (the network did their work; all of them run when the refinement finds the
    network's field worse than none); None: as the bundle's profile for this hardware says."""

    levels: int | None = None
    skip_covered: bool | None = None

    def __post_init__(self):
        check_int(self.levels, "network levels", minimum=1, allow_none=True)
        if self.skip_covered is not None and not isinstance(self.skip_covered, bool):
            raise ValueError(f"network skip_covered must be True, False or None, got {self.skip_covered!r}")


class NetworkStage(Stage):
    """The SM-GICNet levels (`smgic_rt.methods.network`) on the chosen backend; off: zero velocity.

    How many levels run (1..k, coarsest first): `NetworkOptions.levels`, else every level under
    "on" and under "auto" the bundle's measured profile for this hardware (`profile`). A profile
    of 0 levels means the network does not pay for its time here: under "auto" the stage then
    does not run, and says why (`not_run_reason`). The backend is made only for a stage that runs.
    """

    name = "network"
    switchable = True
    default_mode = "auto"
    options_class = "smgic_rt.pipeline.stages:NetworkOptions"

    def __init__(self, mode=None, options=None, *, bundle=None, profile=None, make_backend=None):
        super().__init__(mode, options)
        self.bundle, self.profile = bundle, profile
        levels = self.options.levels
        if levels is None:
            levels = bundle.num_levels if self.mode == "on" else bundle.profile_levels(profile)
        elif levels > bundle.num_levels:
            raise ValueError(f"network levels must be at most the bundle's {bundle.num_levels}, got {levels}")
        self.levels = levels
        skip = self.options.skip_covered
        self.skip_covered = bundle.profile_skips_covered(profile) if skip is None else skip
        self.not_run_reason = None
        if self.mode == "auto" and levels == 0:
            self.not_run_reason = (f"the bundle's {profile} profile runs no levels: measured, the network does not "
                                   "pay for its time on this hardware (network='on' runs it)")
        self.backend = make_backend() if self.enabled and make_backend is not None else None

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self.not_run_reason is None

    def run(self, state):
        from ..geometry import ops
        from ..methods import network

        fixed, moving = state.images(state.model_grid, antialias=1.0)  # as the network was trained
        # The backends take host arrays (the torch-CUDA and TensorRT ones upload them themselves).
        velocity, timings = network.predict_velocity(self.backend, self.bundle, ops.to_host(fixed), ops.to_host(moving),
                                                     levels=self.levels)
        state.velocity = as_field(state.xp.asarray(velocity), "network velocity")  # a host array
        state.velocity_grid = state.model_grid
        # The grid factor (relative to the model grid) of the network's last level.
        state.network_covers = 2 ** (self.bundle.num_levels - self.levels) if self.skip_covered else None
        return {"seconds": timings, "levels": self.levels, "profile": self.profile,
                "refinement_covered_factor": state.network_covers}


class RefineStage(Stage):
    """Per-pair refinement of the velocity (`smgic_rt.methods.refine`, its `RefineOptions`),
    started from the network's velocity (or zero when the network is off): the levels of each
    grid (`RefineOptions.by_grid`: the model grid's, then those of a finer grid) on that grid's
    images, the velocity carried from grid to grid. It fills the velocity and the grid it is on."""

    name = "refine"
    switchable = True
    default_mode = "auto"
    options_class = "smgic_rt.methods.refine:RefineOptions"

    def run(self, state):
        from ..geometry import ops
        from ..methods.refine import refine_velocity

        records = []
        for factor, options in self.options.by_grid():
            grid = state.model_grid if factor == 1 else state.model_grid.finer(factor)
            fixed, moving = state.images(grid, state.antialias)
            velocity = state.velocity
            if velocity is not None and tuple(velocity.shape[1:]) != tuple(grid.shape):
                velocity = ops.upsample_field(state.xp.ascontiguousarray(velocity), grid.shape)
            fixed_exclude, moving_exclude = state.exclusions(grid, state.antialias)
            refined = refine_velocity(fixed, moving, velocity, options=options,
                                      covered=state.network_covers if factor == 1 else None,
                                      fixed_exclude=fixed_exclude, moving_exclude=moving_exclude)
            state.velocity, state.velocity_grid = as_field(refined.velocity, "refined velocity"), grid
            records.append(refined.stats if factor == 1 else
                           {**refined.stats, "grid_shape": list(grid.shape), "spacing_mm": list(grid.spacing)})
        # The first grid's statistics, a finer grid's under "fine" (levels allow one, at 1/2).
        return {**records[0], **({"fine": records[1]} if len(records) > 1 else {})}


class IntegrateStage(Stage):
    """``exp(v)`` and ``exp(-v)`` by scaling and squaring on the model grid."""

    name = "integrate"

    def run(self, state):
        from ..geometry import ops

        velocity = state.velocity
        if velocity is None:  # neither the network nor the refinement ran: the identity
            velocity = state.xp.zeros((3, *state.velocity_grid.shape), np.float32)
        steps, xp = state.velocity_grid.integration_steps, state.xp
        state.forward_model = ops.integrate_velocity(xp.ascontiguousarray(velocity, dtype=np.float32), steps=steps)
        state.inverse_model = ops.integrate_velocity(xp.ascontiguousarray(-velocity, dtype=np.float32), steps=steps)
        return {"steps": steps}


FIELD_GRIDS = ("compact", "native")


@dataclass(frozen=True)
class FieldsOptions:
    """Which grid the transforms handed to users (warp.nii.gz, inverse_warp.nii.gz) live on.

    ``"compact"``: the model grid's lattice (its axes and spacing, 2 mm for the default bundle)
    extended over each image's field of view. The forward field there is exact: its affine part
    is linear and its deformable part trilinear on that very lattice, so the trilinear
    interpolation that ITK/ANTs apply reproduces it. The inverse lattice lies in the moving
    image's world, where the deformable part is not trilinear on it: an approximation (its values
    `transforms.linear_quasi_interpolant` of the samples), measured in tests/test_fields.py.
    ``"native"``: each field on the native grid of the image it maps from (the 1 mm inverse of a
    256^3 head is 180 MB).

    The inverse's values are the numerical inverse of the forward map at its voxels: ``exp(-v)``
    read there and polished by Newton steps (`smgic_rt.geometry.ops.invert_displacement`) until
    ``|phi(psi(y)) - y|`` is at most ``inverse_tolerance_mm`` at all but one voxel in a thousand
    (its 99.9th percentile), in at most ``inverse_iterations`` steps (0: ``exp(-v)`` as it is).
    """

    grid: str = "compact"
    inverse_tolerance_mm: float = 0.01
    inverse_iterations: int = 6

    def __post_init__(self):
        if self.grid not in FIELD_GRIDS:
            raise ValueError(f"fields grid must be one of {list(FIELD_GRIDS)}, got {self.grid!r}")
        check_number(self.inverse_tolerance_mm, "inverse_tolerance_mm", minimum=0)
        check_int(self.inverse_iterations, "inverse_iterations", minimum=0)


def covering_lattice(model_affine: np.ndarray, shape, affine: np.ndarray, margin: int = 1):
    """``(shape, affine)`` of the model grid's lattice extended to cover an image's field of view
    (every voxel corner, plus `margin` lattice steps, so that interpolation near the edges never
    leaves the field)."""
    index = np.linalg.solve(model_affine, affine @ io.voxel_corners(shape).T)[:3]
    low = np.floor(index.min(axis=1)) - margin
    high = np.ceil(index.max(axis=1)) + margin
    lattice = model_affine.copy()
    lattice[:3, 3] = model_affine[:3, :3] @ low + model_affine[:3, 3]
    return tuple(int(n) for n in high - low + 1), lattice


class FieldsStage(Stage):
    """Model-grid displacements -> RAS-mm fields, affine composed in: the forward field on the
    fixed image's native grid (for the one resampling, the labels and the Jacobian) and the two
    fields written for users, forward (fixed world -> moving world) and inverse, on the grids of
    `FieldsOptions`."""

    name = "fields"
    options_class = "smgic_rt.pipeline.stages:FieldsOptions"

    def run(self, state):
        inverse_world = None if state.world_matrix is None else np.linalg.inv(state.world_matrix)
        grid_affine = state.velocity_grid.affine
        state.forward_ras = transforms.model_to_native_displacement(
            state.forward_model, grid_affine, state.fixed.shape, state.fixed.affine,
            world_after=state.world_matrix)
        if self.options.grid == "native":
            forward_grid = (state.fixed.shape, state.fixed.affine)
            inverse_grid = (state.moving.shape, state.moving.affine)
            state.forward_field = (state.forward_ras.copy(), state.fixed.affine)  # rounded below, not forward_ras
        else:
            forward_grid = covering_lattice(grid_affine, state.fixed.shape, state.fixed.affine)
            # The inverse maps moving world points: its lattice covers the moving image.
            inverse_grid = covering_lattice(grid_affine, state.moving.shape, state.moving.affine)
            state.forward_field = (transforms.model_to_native_displacement(
                state.forward_model, grid_affine, *forward_grid, world_after=state.world_matrix),
                forward_grid[1])
        inverse, polish = transforms.model_to_native_inverse(
            state.forward_model, state.inverse_model, grid_affine, *inverse_grid, world_before=inverse_world,
            tolerance_mm=self.options.inverse_tolerance_mm, max_iterations=self.options.inverse_iterations)
        if self.options.grid == "compact":  # not the lattice the inverse is trilinear on
            inverse = transforms.linear_quasi_interpolant(inverse)
        state.inverse_field = (inverse, inverse_grid[1])
        # The fields as written; forward_ras, which the resampling reads, is left unrounded in both
        # modes, so the grids give identical warped images.
        for field_array, _ in (state.forward_field, state.inverse_field):
            transforms.quantize(field_array, transforms.FIELD_QUANTUM_MM)
        return {"grid": self.options.grid, "quantum_mm": transforms.FIELD_QUANTUM_MM,
                "forward_grid": list(forward_grid[0]), "inverse_grid": list(inverse_grid[0]),
                "inverse_iterations": polish.iterations,
                "inverse_residual_p999_mm": polish.residual_p999, "inverse_residual_max_mm": polish.residual_max,
                "inverse_tolerance_mm": self.options.inverse_tolerance_mm}


class ResampleStage(Stage):
    """The one interpolation of the moving image: native moving grid -> native fixed grid."""

    name = "resample"

    def run(self, state):
        # forward_ras is warp.nii.gz on the fixed grid (up to the exact LPS sign flip) before its
        # rounding to FIELD_QUANTUM_MM: on the native grid the file's values, on the compact one
        # what ITK's trilinear reading of the file gives; so files and result agree.
        moving = state.moving_data  # the moving image less its background level
        if state.moving_mask is not None:
            moving = state.xp.asarray(state.moving.data)
            moving = moving - np.float32(state.moving_background) if state.moving_background else moving
        state.warped = transforms.warp_image(moving, state.moving.affine, state.forward_ras, state.fixed.affine)
        if state.moving_background:  # the moving image's own values, its background outside it too
            state.warped += np.float32(state.moving_background)
        return {"shape": list(state.warped.shape), "interpolation": "linear"}


class QualityStage(Stage):
    """The pair's Jacobian determinant and summary statistics: folding and inverse consistency
    (``exp(-v) o exp(v)``, ideally the identity) on the model grid."""

    name = "quality"

    def run(self, state):
        from ..geometry import ops

        xp = state.xp
        jacobian = transforms.field_jacobian_determinant(state.forward_ras, state.fixed.affine)
        composed = ops.compose(state.inverse_model, state.forward_model)
        inverse_error = xp.sqrt((composed.astype(np.float64) ** 2).sum(axis=0))
        brain = state.images(state.velocity_grid, state.antialias)[0] > 0
        jacobian = state.jacobian = transforms.quantize(jacobian, transforms.JACOBIAN_QUANTUM)  # as written
        # The mean of a boolean array is its exact count over its size: one comparison serves both.
        folding_voxels = int(xp.count_nonzero(jacobian <= 0))
        return {
            "folding_fraction": folding_voxels / jacobian.size,
            "folding_voxels": folding_voxels,
            "jacobian_min": float(jacobian.min()),
            "jacobian_max": float(jacobian.max()),
            "inverse_consistency_voxels_mean": float(inverse_error.mean()),
            "inverse_consistency_voxels_brain_mean": float(inverse_error[brain].mean()) if bool(brain.any()) else None,
            "inverse_consistency_voxels_max": float(inverse_error.max()),
        }


def as_field(array, name: str):
    """A (3, X, Y, Z) float32 field, in the array's own namespace, from a (1, 3, ...) or (3, ...) one."""
    from ..geometry import ops

    xp = ops.array_namespace(array)
    array = xp.asarray(array)
    if array.ndim == 5 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 4 or array.shape[0] != 3:
        raise RuntimeError(f"{name} must have shape (3, X, Y, Z) or (1, 3, X, Y, Z), got {array.shape}")
    return xp.ascontiguousarray(array, dtype=np.float32)


def _background(data) -> float:
    from ..methods import preprocess

    level = preprocess.background_level(data)
    if level:
        logger.info("background at %g, not 0: registered as if it were 0", level)
    return level


def load_exclusion(image, *, like: io.Volume, name: str) -> io.Volume:
    """A cost-function mask (nonzero: exclude) on the grid of `like` (`io.load_mask`'s checks),
    refused when it excludes every voxel."""
    volume = io.load_mask(image, like=like, name=name)
    if bool(volume.data.all()):
        raise io.InvalidImageError(f"{name} excludes every voxel of the {like.name}: nothing is left to compare")
    return volume


def volume_or_load(image, loader, **kwargs) -> io.Volume:
    """`image` itself when it is an already validated `io.Volume`, else ``loader(image)``: each
    input is validated once, where it enters."""
    return image if isinstance(image, io.Volume) else loader(image, **kwargs)
