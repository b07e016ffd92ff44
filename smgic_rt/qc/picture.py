"""Quality-control picture of one registration: is the warped image on top of the fixed one?

Rows: fixed, moving, warped, a fixed/warped checkerboard and the Jacobian determinant; columns:
sagittal, coronal and axial slices through the centre, all shown in RAS display orientation
whatever the files' orientation. matplotlib is imported only here, lazily, with the Agg backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from ..io import atomic

__all__ = ["save_qc_png", "checkerboard", "canonical", "display_range", "display_scaled", "central_planes",
           "central_slices", "display_planes"]


def canonical(data: np.ndarray, affine: np.ndarray):
    """Data reoriented to RAS voxel axes (no resampling) and its voxel sizes."""
    ornt = nib.orientations.io_orientation(affine)
    oriented = nib.orientations.apply_orientation(data, ornt)
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))[ornt[:, 0].astype(int)]
    return oriented, sizes


_SLAB_VOXELS = 1 << 20


def display_range(data: np.ndarray) -> tuple:
    """``(low, high)`` that `display_scaled` maps to 0 and 1: the 1st and 99th percentiles of the
    nonzero voxels (high above low); None for an image without a nonzero voxel."""
    values = data[data != 0]
    if values.size == 0:
        return None
    low, high = np.percentile(values, [1, 99])
    return low, (low + 1.0 if high <= low else high)


def display_scaled(data: np.ndarray, value_range=None) -> np.ndarray:
    """Intensities mapped to [0, 1] (float32) by `display_range` (of `data` itself, or the given
    `value_range`, e.g. a whole volume's for one of its planes)."""
    value_range = display_range(data) if value_range is None else value_range
    if value_range is None:
        return np.zeros_like(data, dtype=np.float32)
    low, high = value_range
    scaled = np.empty(data.shape, np.float32)
    step = max(1, _SLAB_VOXELS // max(1, data[:1].size))
    for start in range(0, len(data), step):  # the arithmetic's wider temporaries one slab at a time
        part = np.subtract(data[start:start + step], low)
        part /= high - low
        scaled[start:start + step] = np.clip(part, 0, 1, out=part)
    return scaled


def checkerboard(first: np.ndarray, second: np.ndarray, squares: int = 8, *, grid_shape=None, origin=None) -> np.ndarray:
    """Alternate blocks of `first` and `second` (same shape), about `squares` per axis.

    `first` and `second` may be a part of larger volumes of shape `grid_shape` starting at voxel
    `origin` (e.g. one plane): the blocks are then the whole volumes' blocks."""
    if first.shape != second.shape:
        raise ValueError(f"checkerboard needs two arrays of one shape, got {first.shape} and {second.shape}")
    grid_shape = first.shape if grid_shape is None else tuple(grid_shape)
    origin = (0,) * first.ndim if origin is None else tuple(origin)
    block = [max(1, n // squares) for n in grid_shape]
    index = np.ogrid[tuple(slice(o, o + n) for o, n in zip(origin, first.shape))]
    parity = sum(index[axis] // block[axis] for axis in range(first.ndim)) % 2
    return np.where(parity == 0, first, second)


def central_planes(volume: np.ndarray) -> list:
    """``(origin, plane)`` of the three central planes (sagittal, coronal, axial) of a RAS volume:
    the planes as (1, Y, Z), (X, 1, Z), (X, Y, 1) views and the voxel each starts at."""
    centre = [n // 2 for n in volume.shape]
    planes = []
    for axis in range(3):
        origin = [0, 0, 0]
        origin[axis] = centre[axis]
        index = tuple(slice(c, c + 1) if a == axis else slice(None) for a, c in enumerate(centre))
        planes.append((tuple(origin), volume[index]))
    return planes


def central_slices(volume: np.ndarray, sizes: np.ndarray):
    """(image, aspect) of the three central planes, oriented for display (superior/anterior up)."""
    return display_planes([plane for _, plane in central_planes(volume)], sizes)


def display_planes(planes, sizes: np.ndarray):
    """(image, aspect) of `central_planes`' three planes, oriented for display."""
    sagittal, coronal, axial = (plane.squeeze(axis) for axis, plane in enumerate(planes))
    return [
        (np.flipud(sagittal.T), sizes[2] / sizes[1]),  # rows: S..I after flipud, columns: A..P
        (np.flipud(coronal.T), sizes[2] / sizes[0]),
        (np.flipud(axial.T), sizes[1] / sizes[0]),
    ]


def save_qc_png(path, fixed, moving, warped, jacobian, *, title: str | None = None) -> Path:
    """Write the QC figure to `path` (atomically). Each image is a nibabel image.

    fixed, warped and jacobian lie on the fixed grid; moving on its own grid.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # a bare Figure needs no pyplot state or display

    path = Path(os.fspath(path))
    fixed_data, fixed_sizes = canonical(np.asarray(fixed.dataobj, dtype=np.float32), fixed.affine)
    moving_data, moving_sizes = canonical(np.asarray(moving.dataobj, dtype=np.float32), moving.affine)
    warped_data, _ = canonical(np.asarray(warped.dataobj, dtype=np.float32), warped.affine)
    jacobian_data, _ = canonical(np.asarray(jacobian.dataobj, dtype=np.float32), jacobian.affine)
    # Only the three central planes of each volume are drawn: each is scaled by its whole
    # volume's display range, and nothing else of the size of a volume is made.
    fixed_range = display_range(fixed_data)

    def planes_of(data, value_range=None):
        return [(origin, display_scaled(plane, display_range(data) if value_range is None else value_range))
                for origin, plane in central_planes(data)]

    fixed_planes, warped_planes = planes_of(fixed_data, fixed_range), planes_of(warped_data)
    board = [(origin, checkerboard(f, w, grid_shape=fixed_data.shape, origin=origin))
             for (origin, f), (_, w) in zip(fixed_planes, warped_planes)]
    log_jacobian = [(origin, np.log2(np.clip(plane, 1e-3, None))) for origin, plane in central_planes(jacobian_data)]
    rows = [
        ("fixed", fixed_planes, fixed_sizes, dict(cmap="gray", vmin=0, vmax=1)),
        ("moving", planes_of(moving_data), moving_sizes, dict(cmap="gray", vmin=0, vmax=1)),
        ("warped", warped_planes, fixed_sizes, dict(cmap="gray", vmin=0, vmax=1)),
        ("checkerboard fixed/warped", board, fixed_sizes, dict(cmap="gray", vmin=0, vmax=1)),
        # log2 so that expansion x2 and shrinkage x0.5 look alike; folds (J <= 0) clip to the bottom.
        ("log2 Jacobian", log_jacobian, fixed_sizes, dict(cmap="RdBu_r", vmin=-1.5, vmax=1.5)),
    ]
    figure = Figure(figsize=(9, 14), dpi=80)
    axes = figure.subplots(len(rows), 3)
    for row, (label, planes, sizes, style) in enumerate(rows):
        for column, (plane, aspect) in enumerate(display_planes([plane for _, plane in planes], sizes)):
            ax = axes[row, column]
            shown = ax.imshow(plane, aspect=aspect, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(label)
        if label.startswith("log2"):
            figure.colorbar(shown, ax=list(axes[row]), shrink=0.8)
    for column, plane in enumerate(("sagittal", "coronal", "axial")):
        axes[0, column].set_title(plane)
    folding = float(np.mean(jacobian_data <= 0))
    figure.suptitle((title + "\n" if title else "") + f"folding fraction (J<=0): {folding:.5f}")
    with atomic.atomic_path(path) as temp:
        figure.savefig(str(temp), format="png")
    return path
