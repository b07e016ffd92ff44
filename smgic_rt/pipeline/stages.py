"""The stages of one registration, each an object with its options, a mode and a `run`.

Every stage has the same interface (FireANTs-style): ``Stage(mode, options)``, ``.name``,
``.enabled``, and ``run(state) -> dict`` that reads and fills the `PairState` and returns its
statistics (JSON-safe after `jsonable`). The runner (`smgic_rt.pipeline.run_stages`) times each
stage and records ``{"mode", "ran", "seconds", "stats"}`` for every one, in one shape.
Stages that may be switched off (affine, network, refine) take ``"auto" | "on" | "off"``;
``"auto"`` lets the stage decide from the bundle and the hardware (the network: the levels its
bundle's profile for this hardware measured to pay for themselves, maybe none).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from .. import io, transforms
from .state import PairState

__all__ = ["STAGE_MODES", "Stage", "LoadStage", "AffineStage", "PreprocessStage", "NetworkStage", "NetworkOptions", "FieldsOptions", "covering_lattice",
           "RefineStage", "IntegrateStage", "FieldsStage", "ResampleStage", "QualityStage",
           "check_mode", "as_field"]

STAGE_MODES = ("auto", "on", "off")


def check_mode(value, name: str) -> str:
    """A stage mode from "auto" / "on" / "off" (or a bool)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in STAGE_MODES:
        raise ValueError(f"{name} must be one of {list(STAGE_MODES)}, got {value!r}")
    return value


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
        # The host -> device boundary of a GPU run (`state.xp` cupy): every later stage works on
        # these (and, to resample it once, on the moving image's own data).
        xp = state.xp
        fixed, moving = xp.asarray(state.fixed.data), xp.asarray(state.moving.data)
        state.fixed_data = fixed if state.fixed_mask is None else fixed * xp.asarray(state.fixed_mask.data)
        state.moving_data = moving if state.moving_mask is None else moving * xp.asarray(state.moving_mask.data)
        if inputs.get("initial") is not None:  # the affine stage starts from it (or, off, keeps it)
            from ..transform_formats import initial_matrix

            state.world_matrix = initial_matrix(inputs["initial"], state.fixed, state.moving)
        return {"fixed_mask": state.fixed_mask is not None, "moving_mask": state.moving_mask is not None,
                "initial_transform": state.world_matrix is not None}


class AffineStage(Stage):
    """Global affine, fixed world -> moving world (`smgic_rt.affine`, its `AffineOptions`),
    started from the caller's initial transform when one was given (load)."""

    name = "affine"
    switchable = True
    default_mode = "auto"
    options_class = "smgic_rt.affine:AffineOptions"

    def run(self, state):
        from ..affine import register_affine

        result = register_affine(state.fixed_data, state.fixed.affine, state.moving_data, state.moving.affine,
                                 options=self.options, initial=state.world_matrix)
        state.world_matrix = np.asarray(result.matrix, dtype=np.float64)
        return result.stats


class PreprocessStage(Stage):
    """Both images onto the model grid with the bundle's normalisation (`smgic_rt.preprocess`,
    the function training uses); the moving one through the affine stage's matrix. The
    antialiasing Gaussian at `antialias` strength: the refinement's (`RefineOptions.antialias`)
    when it runs, else 1, as the network was trained."""

    name = "preprocess"

    def __init__(self, mode=None, options=None, *, normalization: dict | None = None, antialias: float = 1.0):
        from ..preprocess import intensity_parameters

        super().__init__(mode, options)
        # The bundle records the normalisation it was trained with; refuse one we do not apply.
        self.intensity = intensity_parameters(normalization)
        self.antialias = antialias

    def run(self, state):
        from .. import preprocess

        shape, spacing = state.grid_shape, state.spacing
        state.intensity, state.antialias = self.intensity, self.antialias
        state.model_affine = preprocess.model_grid(state.fixed_data, state.fixed.affine, shape, spacing)
        state.fixed_model, state.moving_model = images_on_grid(state, shape, spacing, state.model_affine)
        return {"grid_shape": list(shape), "spacing_mm": list(spacing), "antialias": self.antialias}


def images_on_grid(state, shape, spacing, grid_affine, antialias: float | None = None):
    """``(fixed, moving)`` on the grid `grid_affine` of `shape`, by `preprocess.prepare` with the
    pair's intensity scaling and antialiasing strength (or `antialias`); the moving image seen
    through the affine stage's matrix."""
    from .. import preprocess

    antialias = state.antialias if antialias is None else antialias
    fixed, _ = preprocess.prepare(state.fixed_data, state.fixed.affine, shape, spacing, grid_affine=grid_affine,
                                  intensity=state.intensity, antialias_strength=antialias)
    # prepare() reads moving at world points; seeing it through `world_matrix` means handing
    # it the affine inv(M) @ A_moving (model voxel -> M G x -> moving voxel).
    seen = (state.moving.affine if state.world_matrix is None
            else np.linalg.inv(state.world_matrix) @ state.moving.affine)
    moving, _ = preprocess.prepare(state.moving_data, seen, shape, spacing, grid_affine=grid_affine,
                                   intensity=state.intensity, antialias_strength=antialias)
    # From here on the pair's arrays live in `state.xp` (on the GPU for a device run).
    return state.xp.asarray(fixed), state.xp.asarray(moving)


@dataclass(frozen=True)
class NetworkOptions:
    """``levels``: run the network's levels 1..levels (coarsest first) and upsample the last
    velocity to the model grid; None: the bundle's measured profile for this hardware under
    ``network="auto"``, every level under ``"on"``."""

    levels: int | None = None

    def __post_init__(self):
        if self.levels is not None and (not isinstance(self.levels, int) or isinstance(self.levels, bool)
                                        or self.levels < 1):
            raise ValueError(f"network levels must be a positive int or None, got {self.levels!r}")


class NetworkStage(Stage):
    """The SM-GICNet levels (`smgic_rt.network`) on the chosen backend; off: zero velocity.

    ``levels``: how many levels run (1..k, coarsest first; the Registrar takes them from the
    bundle's measured profile for this hardware under "auto", all of them under "on"). A profile
    of 0 levels means the network does not pay for its time here: under "auto" the stage then
    does not run, and says why (`not_run_reason`).
    """

    name = "network"
    switchable = True
    default_mode = "auto"

    def __init__(self, mode=None, *, backend=None, bundle=None, levels=None, profile=None):
        super().__init__(mode)  # its options are the backend's, chosen when the Registrar is made
        self.backend, self.bundle, self.levels, self.profile = backend, bundle, levels, profile
        self.not_run_reason = None
        if self.mode == "auto" and levels == 0:
            self.not_run_reason = (f"the bundle's {profile} profile runs no levels: measured, the network does not "
                                   "pay for its time on this hardware (network='on' runs it)")

    @property
    def enabled(self) -> bool:
        return self.mode != "off" and self.not_run_reason is None

    def run(self, state):
        from .. import network, ops

        fixed, moving = state.fixed_model, state.moving_model
        if state.antialias != 1.0:  # sharper images made for the refinement: the network's as trained
            fixed, moving = images_on_grid(state, state.grid_shape, state.spacing, state.model_affine, antialias=1.0)
        # The backends take host arrays (the torch-CUDA and TensorRT ones upload them themselves).
        velocity, timings = network.predict_velocity(self.backend, self.bundle, ops.to_host(fixed), ops.to_host(moving),
                                                     levels=self.levels)
        state.velocity = as_field(state.xp.asarray(velocity), "network velocity")  # a host array
        return {"seconds": timings, "levels": self.levels, "profile": self.profile}


class RefineStage(Stage):
    """Per-pair refinement of the velocity (`smgic_rt.refine`, its `RefineOptions`), started
    from the network's velocity (or zero when the network is off)."""

    name = "refine"
    switchable = True
    default_mode = "auto"
    options_class = "smgic_rt.refine:RefineOptions"

    def run(self, state):
        from ..refine import refine_velocity

        refined = refine_velocity(state.fixed_model, state.moving_model, state.velocity, options=self.options)
        state.velocity = as_field(refined.velocity, "refined velocity")
        stats = refined.stats
        if self.options.fine_iterations > 0:
            stats["fine"] = self._refine_on_finer_grid(state)
        return stats

    def _refine_on_finer_grid(self, state) -> dict:
        """``fine_iterations`` on a grid twice finer than the model grid, same centre and field of
        view; from then on the pair's grid is that one (integration, fields and quality follow)."""
        import dataclasses

        from .. import ops, preprocess
        from ..refine import level_options, refine_velocity

        shape = tuple(2 * n for n in state.grid_shape)
        spacing = tuple(s / 2.0 for s in state.spacing)
        centre = state.model_affine[:3, :3] @ ((np.asarray(state.grid_shape) - 1) / 2.0) + state.model_affine[:3, 3]
        grid = preprocess.grid_around(centre, shape, spacing)
        fixed, moving = images_on_grid(state, shape, spacing, grid)
        # Twice as many voxels per mm: the velocity doubles and one more squaring keeps the
        # first step as small.
        steps = state.integration_steps + 1
        # the options of the last level on the model grid, carried on to this one
        options = dataclasses.replace(level_options(self.options, -1), factors=(1,),
                                      iterations=(self.options.fine_iterations,), steps=steps, zero_if_better=False,
                                      fine_iterations=0)
        velocity = ops.upsample_field(state.xp.ascontiguousarray(state.velocity), shape)
        refined = refine_velocity(fixed, moving, velocity, options=options)
        state.velocity = as_field(refined.velocity, "refined velocity (finer grid)")
        state.grid_shape, state.spacing, state.model_affine = shape, spacing, grid
        state.fixed_model, state.moving_model, state.integration_steps = fixed, moving, steps
        return {**refined.stats, "grid_shape": list(shape), "spacing_mm": list(spacing)}


class IntegrateStage(Stage):
    """``exp(v)`` and ``exp(-v)`` by scaling and squaring on the model grid."""

    name = "integrate"

    def run(self, state):
        from .. import ops

        velocity = state.velocity
        if velocity is None:  # neither the network nor the refinement ran: the identity
            velocity = state.xp.zeros((3, *state.grid_shape), np.float32)
        steps, xp = state.integration_steps, state.xp
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
    """

    grid: str = "compact"

    def __post_init__(self):
        if self.grid not in FIELD_GRIDS:
            raise ValueError(f"fields grid must be one of {list(FIELD_GRIDS)}, got {self.grid!r}")


def covering_lattice(model_affine: np.ndarray, shape, affine: np.ndarray, margin: int = 1):
    """``(shape, affine)`` of the model grid's lattice extended to cover an image's field of view
    (every voxel corner, plus `margin` lattice steps, so that interpolation near the edges never
    leaves the field)."""
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)]).T
    index = np.linalg.solve(model_affine, affine @ corners)[:3]
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
        state.forward_ras = transforms.model_to_native_displacement(
            state.forward_model, state.model_affine, state.fixed.shape, state.fixed.affine,
            world_after=state.world_matrix)
        if self.options.grid == "native":
            forward_grid = (state.fixed.shape, state.fixed.affine)
            inverse_grid = (state.moving.shape, state.moving.affine)
            state.forward_field = (state.forward_ras.copy(), state.fixed.affine)  # rounded below, not forward_ras
        else:
            forward_grid = covering_lattice(state.model_affine, state.fixed.shape, state.fixed.affine)
            # The inverse maps moving world points: its lattice covers the moving image.
            inverse_grid = covering_lattice(state.model_affine, state.moving.shape, state.moving.affine)
            state.forward_field = (transforms.model_to_native_displacement(
                state.forward_model, state.model_affine, *forward_grid, world_after=state.world_matrix),
                forward_grid[1])
        inverse = transforms.model_to_native_displacement(state.inverse_model, state.model_affine, *inverse_grid,
                                                          world_before=inverse_world)
        if self.options.grid == "compact":  # not the lattice the inverse is trilinear on
            inverse = transforms.linear_quasi_interpolant(inverse)
        state.inverse_field = (inverse, inverse_grid[1])
        # The fields as written; forward_ras, which the resampling reads, is left unrounded in both
        # modes, so the grids give identical warped images.
        for field_array, _ in (state.forward_field, state.inverse_field):
            transforms.quantize(field_array, transforms.FIELD_QUANTUM_MM)
        return {"grid": self.options.grid, "quantum_mm": transforms.FIELD_QUANTUM_MM, "forward_grid": list(forward_grid[0]), "inverse_grid": list(inverse_grid[0])}


class ResampleStage(Stage):
    """The one interpolation of the moving image: native moving grid -> native fixed grid."""

    name = "resample"

    def run(self, state):
        # forward_ras is warp.nii.gz on the fixed grid (up to the exact LPS sign flip) before its
        # rounding to FIELD_QUANTUM_MM: on the native grid the file's values, on the compact one
        # what ITK's trilinear reading of the file gives; so files and result agree.
        moving = state.moving_data if state.moving_mask is None else state.xp.asarray(state.moving.data)
        state.warped = transforms.warp_image(moving, state.moving.affine, state.forward_ras, state.fixed.affine)
        return {}


class QualityStage(Stage):
    """The pair's Jacobian determinant and summary statistics: folding and inverse consistency
    (``exp(-v) o exp(v)``, ideally the identity) on the model grid."""

    name = "quality"

    def run(self, state):
        from .. import ops

        xp = state.xp
        jacobian = transforms.field_jacobian_determinant(state.forward_ras, state.fixed.affine)
        composed = ops.compose(state.inverse_model, state.forward_model)
        inverse_error = xp.sqrt((composed.astype(np.float64) ** 2).sum(axis=0))
        brain = state.fixed_model > 0
        jacobian = state.jacobian = transforms.quantize(jacobian, transforms.JACOBIAN_QUANTUM)  # as written
        state.quality = {
            "folding_fraction": float(xp.mean(jacobian <= 0)),
            "folding_voxels": int(xp.count_nonzero(jacobian <= 0)),
            "jacobian_min": float(jacobian.min()),
            "jacobian_max": float(jacobian.max()),
            "inverse_consistency_voxels_mean": float(inverse_error.mean()),
            "inverse_consistency_voxels_brain_mean": float(inverse_error[brain].mean()) if bool(brain.any()) else None,
            "inverse_consistency_voxels_max": float(inverse_error.max()),
        }
        return {}


def as_field(array, name: str):
    """A (3, X, Y, Z) float32 field, in the array's own namespace, from a (1, 3, ...) or (3, ...) one."""
    from .. import ops

    xp = ops.array_namespace(array)
    array = xp.asarray(array)
    if array.ndim == 5 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 4 or array.shape[0] != 3:
        raise RuntimeError(f"{name} must have shape (3, X, Y, Z) or (1, 3, X, Y, Z), got {array.shape}")
    return xp.ascontiguousarray(array, dtype=np.float32)


def volume_or_load(image, loader, **kwargs) -> io.Volume:
    """`image` itself when it is an already validated `io.Volume`, else ``loader(image)``: each
    input is validated once, where it enters."""
    return image if isinstance(image, io.Volume) else loader(image, **kwargs)
