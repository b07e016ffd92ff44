"""`PairState`: everything one registration knows, handed from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from ..io import Volume

__all__ = ["PairState"]


@dataclass
class PairState:
    """The per-pair state that the stages read and fill, in the order they run.

    Arrays live in one namespace per run, `xp` (numpy on the CPU; a GPU run would carry cupy),
    so that a stage never moves data between host and device on its own: the host only loads
    (`fixed`, `moving`, their masks) and saves (`smgic_rt.registrar.RegistrationResult`).

    ``inputs`` holds the images as given (``fixed``, ``moving``, ``fixed_mask``,
    ``moving_mask``, and an optional ``initial`` transform: paths, nibabel images, (array, affine) pairs or validated `io.Volume`s).
    Attributes filled by the stages (None until then):

    ``fixed``, ``moving``, ``fixed_mask``, ``moving_mask``
        The inputs loaded and validated, each once (load).
    ``fixed_data``, ``moving_data``
        The images as registered: voxel data times the mask when one was given (load).
    ``world_matrix``
        4x4 fixed world -> moving world (RAS mm): the caller's initial transform (load), then the
        affine stage's result; None when there is neither.
    ``model_affine``, ``fixed_model``, ``moving_model``, ``intensity``, ``antialias``
        The model grid (voxel -> RAS mm) and both images on it, intensities in [0, 1] by the
        bundle's `preprocess.IntensityScaling` (``intensity``), low-passed by
        `preprocess.antialias` at strength ``antialias`` (the refinement's; the network makes its
        own at 1 when it differs); the moving one seen through ``world_matrix`` (preprocess). A
        refinement on a finer grid replaces grid and images (``grid_shape``, ``spacing`` and
        ``integration_steps`` with them).
    ``velocity``
        Stationary velocity (3, X, Y, Z) on the model grid, in its voxels (network, refine).
    ``forward_model``, ``inverse_model``
        ``exp(v)`` and ``exp(-v)`` on the model grid (integrate).
    ``forward_ras``
        RAS-mm displacement (3, X, Y, Z) on the fixed native grid, affine composed in: the one
        field convention inside; ITK's LPS only when writing (fields).
    ``forward_field``, ``inverse_field``
        ``(RAS-mm displacement, grid affine)`` of the transforms handed to users, on the grids
        that `FieldsOptions` chooses (fields).
    ``warped``
        The moving image resampled once onto the fixed grid (resample).
    ``jacobian``, ``quality``
        det J of the fixed -> moving map on the fixed grid, and the pair's summary statistics
        (folding, inverse consistency) (quality).
    """

    inputs: dict
    grid_shape: tuple
    spacing: tuple
    integration_steps: int
    xp: ModuleType = np
    # load
    fixed: Volume | None = None
    moving: Volume | None = None
    fixed_mask: Volume | None = None
    moving_mask: Volume | None = None
    fixed_data: np.ndarray | None = None
    moving_data: np.ndarray | None = None
    # affine
    world_matrix: np.ndarray | None = None
    # preprocess
    model_affine: np.ndarray | None = None
    fixed_model: np.ndarray | None = None
    moving_model: np.ndarray | None = None
    intensity: object = None
    antialias: float = 1.0
    # network, refine
    velocity: np.ndarray | None = None
    # integrate
    forward_model: np.ndarray | None = None
    inverse_model: np.ndarray | None = None
    # fields, resample, quality
    forward_ras: np.ndarray | None = None
    forward_field: tuple | None = None
    inverse_field: tuple | None = None
    warped: np.ndarray | None = None
    jacobian: np.ndarray | None = None
    quality: dict = field(default_factory=dict)
