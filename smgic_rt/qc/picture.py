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

__all__ = ["save_qc_png", "checkerboard", "canonical", "display_scaled", "central_slices"]


def canonical(data: np.ndarray, affine: np.ndarray):
    """Data reoriented to RAS voxel axes (no resampling) and its voxel sizes."""
    ornt = nib.orientations.io_orientation(affine)
    oriented = nib.orientations.apply_orientation(data, ornt)
    sizes = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))[ornt[:, 0].astype(int)]
    return oriented, sizes


def display_scaled(data: np.ndarray) -> np.ndarray:
    """Intensities mapped to [0, 1] by the 1st/99th percentiles of the nonzero voxels."""
    values = data[data != 0]
    if values.size == 0:
        return np.zeros_like(data, dtype=np.float32)
    low, high = np.percentile(values, [1, 99])
    if high <= low:
        high = low + 1.0
    return np.clip((data - low) / (high - low), 0, 1).astype(np.float32)


def checkerboard(first: np.ndarray, second: np.ndarray, squares: int = 8) -> np.ndarray:
    """Alternate blocks of `first` and `second` (same shape), about `squares` per axis."""
    if first.shape != second.shape:
        raise ValueError(f"checkerboard needs two arrays of one shape, got {first.shape} and {second.shape}")
    index = np.indices(first.shape)
    block = [max(1, n // squares) for n in first.shape]
    parity = sum(index[axis] // block[axis] for axis in range(first.ndim)) % 2
    return np.where(parity == 0, first, second)


def central_slices(volume: np.ndarray, sizes: np.ndarray):
    """(image, aspect) of the three central planes, oriented for display (superior/anterior up)."""
    cx, cy, cz = (n // 2 for n in volume.shape)
    sagittal = volume[cx, :, :].T  # rows: S..I after flipud, columns: A..P
    coronal = volume[:, cy, :].T
    axial = volume[:, :, cz].T
    return [
        (np.flipud(sagittal), sizes[2] / sizes[1]),
        (np.flipud(coronal), sizes[2] / sizes[0]),
        (np.flipud(axial), sizes[1] / sizes[0]),
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
    fixed_scaled, moving_scaled, warped_scaled = display_scaled(fixed_data), display_scaled(moving_data), display_scaled(warped_data)
    rows = [
        ("fixed", fixed_scaled, fixed_sizes, dict(cmap="gray", vmin=0, vmax=1)),
        ("moving", moving_scaled, moving_sizes, dict(cmap="gray", vmin=0, vmax=1)),
        ("warped", warped_scaled, fixed_sizes, dict(cmap="gray", vmin=0, vmax=1)),
        ("checkerboard fixed/warped", checkerboard(fixed_scaled, warped_scaled), fixed_sizes, dict(cmap="gray", vmin=0, vmax=1)),
        # log2 so that expansion x2 and shrinkage x0.5 look alike; folds (J <= 0) clip to the bottom.
        ("log2 Jacobian", np.log2(np.clip(jacobian_data, 1e-3, None)), fixed_sizes, dict(cmap="RdBu_r", vmin=-1.5, vmax=1.5)),
    ]
    figure = Figure(figsize=(9, 14), dpi=80)
    axes = figure.subplots(len(rows), 3)
    for row, (label, volume, sizes, style) in enumerate(rows):
        for column, (plane, aspect) in enumerate(central_slices(volume, sizes)):
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
