"""The coarse-to-fine level loop of SM-GICNet (docs/architecture.md, "The network, level by level").

For each level k = 1..L (1 = coarsest, 1/2^(L-1) of the model grid):
``v_up = upsample_field(v_{k-1})``, ``u_up = upsample_field(u_{k-1})`` (zeros at level 1),
``moving_k = warp(moving_features_k, u_up)``, ``v_k = network_k(fixed_k, moving_k, v_up)``,
``u_k = integrate_velocity(v_k, steps)``. The result is ``v_L``.

The networks run in the backend; warps, upsampling and integration run in `smgic_rt.ops`
(`_C`). With a CUDA backend (TensorRT) every array stays on the GPU between levels.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from .bundle import Bundle

__all__ = ["predict_velocity", "NetworkResult", "level_features"]


class NetworkResult(NamedTuple):
    """``velocity``: ``(3, X, Y, Z)`` float32 on the model grid (numpy);
    ``timings``: seconds per stage (``features``, ``level1``..``levelL`` for the network,
    ``between_levels`` for warps/upsampling/integration, ``total``)."""

    velocity: np.ndarray
    timings: dict


def _check_image(name: str, image, grid_shape) -> np.ndarray:
    array = np.asarray(image)
    if array.shape != tuple(grid_shape):
        raise ValueError(f"{name} must be a model-grid array of shape {tuple(grid_shape)} "
                         f"(smgic_rt.preprocess.prepare), got shape {array.shape}")
    if array.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {array.dtype}; convert with .astype(np.float32)")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return np.ascontiguousarray(array)


def level_features(image: np.ndarray, bundle: Bundle) -> list[np.ndarray]:
    """Per-level input channels ``(C_k, X_k, Y_k, Z_k)`` of `image`, level 1 (coarsest) first,
    checked against the shapes the bundle's graphs declare."""
    from . import features

    pyramid = list(features.pyramid_features(image))
    if len(pyramid) != bundle.num_levels:
        raise ValueError(f"pyramid_features returned {len(pyramid)} levels, the bundle has {bundle.num_levels}")
    for level, array in enumerate(pyramid, start=1):
        declared = tuple(int(n) for n in bundle.level_entry(level)["inputs"]["fixed"][1:])
        if tuple(array.shape) != declared:
            raise ValueError(f"level {level} features have shape {tuple(array.shape)}, the bundle's graph "
                             f"expects {declared}; the bundle and smgic_rt.features disagree")
    return [np.ascontiguousarray(a, dtype=np.float32) for a in pyramid]


def predict_velocity(backend, bundle: Bundle, fixed, moving) -> NetworkResult:
    """Run the level loop; returns ``(velocity (3, X, Y, Z) float32, timings)``.

    Parameters
    ----------
    backend : smgic_rt.backends.Backend
        From ``smgic_rt.backends.create(name, bundle)``.
    bundle : Bundle
    fixed, moving : ndarray, float32, shape ``bundle.grid_shape``
        Model-grid arrays from `smgic_rt.preprocess.prepare`.
    """
    from . import ops

    if not isinstance(bundle, Bundle):
        raise TypeError(f"bundle must be a smgic_rt.bundle.Bundle, got {type(bundle).__name__}")
    backend_bundle_id = getattr(getattr(backend, "bundle", None), "id", None)
    if backend_bundle_id != bundle.id:
        raise ValueError(f"backend was created for bundle {backend_bundle_id!r}, not {bundle.id!r}; "
                         "create it with smgic_rt.backends.create(name, bundle)")
    fixed = _check_image("fixed", fixed, bundle.grid_shape)
    moving = _check_image("moving", moving, bundle.grid_shape)
    steps = bundle.steps
    on_gpu = getattr(backend, "device", "cpu") == "cuda"
    if on_gpu:
        import cupy as xp  # the TensorRT backend already required it
    else:
        xp = np

    timings = {}
    start = time.perf_counter()
    fixed_levels = level_features(fixed, bundle)
    moving_levels = level_features(moving, bundle)
    if on_gpu:
        fixed_levels = [xp.asarray(a) for a in fixed_levels]
        moving_levels = [xp.asarray(a) for a in moving_levels]
    timings["features"] = time.perf_counter() - start

    between = 0.0
    velocity = displacement = None
    for level in range(1, bundle.num_levels + 1):
        tick = time.perf_counter()
        shape = tuple(fixed_levels[level - 1].shape[1:])
        if velocity is None:
            velocity_up = xp.zeros((3, *shape), dtype=np.float32)
            moving_warped = moving_levels[level - 1]
        else:
            velocity_up = ops.upsample_field(velocity, shape)
            displacement_up = ops.upsample_field(displacement, shape)
            # Images pad with zeros outside the grid, as in training.
            moving_warped = ops.warp(moving_levels[level - 1], displacement_up, padding="zeros")
        between += time.perf_counter() - tick

        tick = time.perf_counter()
        out = backend.run_level(level, fixed_levels[level - 1][None], xp.ascontiguousarray(moving_warped)[None],
                                xp.ascontiguousarray(velocity_up)[None])
        if on_gpu:
            xp.cuda.get_current_stream().synchronize()
        timings[f"level{level}"] = time.perf_counter() - tick

        tick = time.perf_counter()
        velocity = xp.ascontiguousarray(out[0], dtype=np.float32)
        if level < bundle.num_levels:
            displacement = ops.integrate_velocity(velocity, steps)
        between += time.perf_counter() - tick
    timings["between_levels"] = between
    result = xp.asnumpy(velocity) if on_gpu else np.asarray(velocity)
    timings["total"] = time.perf_counter() - start
    return NetworkResult(np.ascontiguousarray(result, dtype=np.float32), timings)
