"""`PairState`: everything one registration knows, handed from stage to stage, and `Grid`,
a lattice its arrays live on."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from ..io import Volume

__all__ = ["PairState", "Grid"]


@dataclass(frozen=True, eq=False)
class Grid:
    """A lattice of `shape` voxels of `spacing` mm, `affine` voxel -> RAS mm, and the
    scaling-and-squaring steps that integrate a velocity in its voxels."""

    shape: tuple
    spacing: tuple
    affine: np.ndarray
    integration_steps: int

    def finer(self, factor: float) -> "Grid":
        """The grid `1 / factor` times finer (factor 1/2: twice), same centre and field of view;
        one more squaring per halving keeps the first step, in its smaller voxels, as small."""
        from ..methods import preprocess

        times = int(round(np.log2(1 / factor)))
        shape = tuple(n * 2 ** times for n in self.shape)
        spacing = tuple(s / 2.0 ** times for s in self.spacing)
        centre = self.affine[:3, :3] @ ((np.asarray(self.shape) - 1) / 2.0) + self.affine[:3, 3]
        return Grid(shape, spacing, preprocess.grid_around(centre, shape, spacing), self.integration_steps + times)

    @property
    def key(self) -> tuple:
        return self.shape, self.spacing, tuple(np.asarray(self.affine).ravel().tolist())


@dataclass
class PairState:
    """The per-pair state that the stages read and fill, in the order they run.

    Arrays live in one namespace per run, `xp` (numpy on the CPU; a GPU run would carry cupy),
    so that a stage never moves data between host and device on its own: the host only loads
    (`fixed`, `moving`, their masks) and saves (`smgic_rt.registrar.RegistrationResult`).

    ``inputs`` holds the images as given (``fixed``, ``moving``, ``fixed_mask``,
    ``moving_mask``, ``fixed_exclude``, ``moving_exclude``, and an optional ``initial`` transform:
    paths, nibabel images, (array, affine) pairs or validated `io.Volume`s).
    Attributes filled by the stages (None until then):

    ``fixed``, ``moving``, ``fixed_mask``, ``moving_mask``
        The inputs loaded and validated, each once (load).
    ``fixed_exclude``, ``moving_exclude``
        Cost-function masks (1: a voxel the similarity must not read), loaded (load); on any
        grid by `exclusions`.
    ``fixed_data``, ``moving_data``
        The images as registered: voxel data times the mask when one was given (load).
    ``world_matrix``
        4x4 fixed world -> moving world (RAS mm): the caller's initial transform (load), then the
        affine stage's result; None when there is neither.
    ``model_grid``, ``intensity``, ``antialias``
        The model grid (a `Grid` over the fixed image at the bundle's ``grid_shape`` and
        ``spacing``), the bundle's `preprocess.IntensityScaling` and the antialiasing strength of
        the images registered (preprocess). `images` makes both images on any grid at any
        strength, once each.
    ``velocity``, ``velocity_grid``
        Stationary velocity (3, X, Y, Z) and the `Grid` it lives on, in that grid's voxels:
        the model grid (network), or the grid of the refinement's last level (refine).
    ``network_covers``
        The grid factor of the network's last level when the refinement is to skip the levels
        it covers (network), else None.
    ``forward_model``, ``inverse_model``
        ``exp(v)`` and ``exp(-v)`` on ``velocity_grid`` (integrate).
    ``forward_ras``
        RAS-mm displacement (3, X, Y, Z) on the fixed native grid, affine composed in: the one
        field convention inside; ITK's LPS only when writing (fields).
    ``forward_field``, ``inverse_field``
        ``(RAS-mm displacement, grid affine)`` of the transforms handed to users, on the grids
        that `FieldsOptions` chooses (fields).
    ``warped``
        The moving image resampled once onto the fixed grid (resample).
    ``jacobian``
        det J of the fixed -> moving map on the fixed grid (quality).
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
    fixed_exclude: Volume | None = None
    moving_exclude: Volume | None = None
    fixed_data: np.ndarray | None = None
    moving_data: np.ndarray | None = None
    fixed_background: float = 0.0  # `preprocess.background_level`, taken off *_data
    moving_background: float = 0.0
    # affine
    world_matrix: np.ndarray | None = None
    # preprocess
    model_grid: Grid | None = None
    intensity: object = None
    antialias: float = 1.0
    # network, refine
    velocity: np.ndarray | None = None
    velocity_grid: Grid | None = None
    network_covers: float | None = None
    # integrate
    forward_model: np.ndarray | None = None
    inverse_model: np.ndarray | None = None
    # fields, resample, quality
    forward_ras: np.ndarray | None = None
    forward_field: tuple | None = None
    inverse_field: tuple | None = None
    warped: np.ndarray | None = None
    jacobian: np.ndarray | None = None
    # (grid key, antialias) -> (fixed, moving): each made once
    _images: dict = field(default_factory=dict, repr=False)

    def images(self, grid: Grid, antialias: float) -> tuple:
        """``(fixed, moving)`` on `grid`, by `preprocess.prepare` with the pair's intensity scaling
        and the antialiasing strength `antialias`; the moving image seen through the affine
        stage's matrix. Made once per grid and strength, then cached."""
        key = (grid.key, float(antialias))
        if key not in self._images:
            self._images[key] = self._make_images(grid, antialias)
        return self._images[key]

    def exclusions(self, grid: Grid, antialias: float) -> tuple:
        """``(fixed, moving)`` exclusion masks on `grid` (boolean; None where not given), each
        resampled as its image is (the moving one through the affine stage's matrix): a grid
        voxel is excluded when any excluded voxel weighs in its value."""
        from ..methods import preprocess

        out = []
        for volume, seen in ((self.fixed_exclude, None), (self.moving_exclude, self._moving_seen())):
            if volume is None:
                out.append(None)
                continue
            resampled = preprocess.resample(volume.data, volume.affine if seen is None else seen, grid.affine,
                                            grid.shape, antialias_strength=antialias)
            out.append(self.xp.asarray(resampled > 0))
        return tuple(out)

    def _moving_seen(self):
        # prepare() reads moving at world points; seeing it through `world_matrix` means handing
        # it the affine inv(M) @ A_moving (model voxel -> M G x -> moving voxel).
        return (self.moving.affine if self.world_matrix is None
                else np.linalg.inv(self.world_matrix) @ self.moving.affine)

    def _make_images(self, grid: Grid, antialias: float) -> tuple:
        from ..methods import preprocess

        fixed, _ = preprocess.prepare(self.fixed_data, self.fixed.affine, grid.shape, grid.spacing,
                                      grid_affine=grid.affine, intensity=self.intensity, antialias_strength=antialias)
        moving, _ = preprocess.prepare(self.moving_data, self._moving_seen(), grid.shape, grid.spacing, grid_affine=grid.affine,
                                       intensity=self.intensity, antialias_strength=antialias)
        # From here on the pair's arrays live in `xp` (on the GPU for a device run).
        return self.xp.asarray(fixed), self.xp.asarray(moving)
