"""Separable filters on the kernels of `smgic_rt._C` (Gaussian smoothing, box means), shared by
the affine stage and the refinement. numpy arrays run on the CPU, CUDA arrays (cupy, torch) on
the GPU on their stream (`smgic_rt.geometry.ops.filter_axis`)."""

from __future__ import annotations

import numpy as np

from . import ops

__all__ = ["gaussian_taps", "smooth", "box_mean"]


def gaussian_taps(sigma: float) -> list[float]:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32).tolist()


def _contiguous(volumes):
    """numpy: a C-contiguous float32 copy only where needed; CUDA arrays pass as they are
    (ops.filter_axis checks their dtype and layout)."""
    if hasattr(volumes, "__cuda_array_interface__") and not isinstance(volumes, np.ndarray):
        return volumes
    return np.ascontiguousarray(volumes, dtype=np.float32)


def smooth(volumes: np.ndarray, sigma) -> np.ndarray:
    """Gaussian smoothing (edge replication) of ``(C, X, Y, Z)`` volumes; `sigma` in voxels, one
    value or one per axis; 0 leaves an axis alone."""
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (3,))
    out = _contiguous(volumes)
    for axis, s in enumerate(sigmas):
        if s > 0:
            out = ops.filter_axis(out, axis, gaussian_taps(float(s)), False)
    return out


def box_mean(volumes: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2 radius + 1)^3 box around each voxel, counting only voxels inside."""
    taps = [1.0] * (2 * radius + 1)
    out = _contiguous(volumes)
    for axis in range(3):
        out = ops.filter_axis(out, axis, taps, True)
    return out
