"""The coarse-to-fine level loop of SM-GICNet (docs/architecture.md, "The network, level by level").

For each level k = 1..L (1 = coarsest, 1/2^(L-1) of the model grid):
``v_up = upsample_field(v_{k-1})``, ``u_up = upsample_field(u_{k-1})`` (zeros at level 1),
``moving_k = warp(moving_features_k, u_up)``, ``v_k = network_k(fixed_k, moving_k, v_up)``,
``u_k = integrate_velocity(v_k, steps)``. The result is ``v_L``.

The networks run in the backend; warps, upsampling and integration run in `smgic_rt.geometry.ops`
(`_C`). With a CUDA backend (``backend.device == "cuda"``: TensorRT with cupy arrays, or a backend
whose ``array_module`` is ``"torch"``) every array stays on the GPU between levels, and the whole
loop runs on ONE stream: the caller's current stream, or a new non-blocking stream when the
caller is on the default stream. The `_C` kernels read that stream from the arrays, the backend
enqueues on it, and the host waits once, at the end, when it copies the velocity back. Per-level
GPU times come from CUDA events on that stream (no synchronisation per level).
"""

from __future__ import annotations

import contextlib
import time
from typing import NamedTuple

import numpy as np

from ..models.bundle import Bundle
from ..options import is_int

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
                         f"(smgic_rt.methods.preprocess.prepare), got shape {array.shape}")
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
                             f"expects {declared}; the bundle and smgic_rt.methods.features disagree")
    return [np.ascontiguousarray(a, dtype=np.float32) for a in pyramid]


class _HostArrays:
    """numpy: the CPU loop."""

    @contextlib.contextmanager
    def stream(self):
        yield

    def upload(self, array):
        return array

    def zeros(self, shape):
        return np.zeros(shape, np.float32)

    def contiguous(self, array):
        return np.ascontiguousarray(array, dtype=np.float32)

    def mark(self):
        return time.perf_counter()

    def finish(self, velocity, marks):
        return np.asarray(velocity), [b - a for a, b in zip(marks[:-1], marks[1:])]


class _CupyArrays:
    """cupy on one stream: the caller's current one, else a new non-blocking stream."""

    def __init__(self):
        import cupy

        self.xp = cupy
        current = cupy.cuda.get_current_stream()
        # The default (null) stream synchronises with every other blocking stream; a registration
        # gets its own non-blocking stream instead.
        self._stream = current if current.ptr != 0 else cupy.cuda.Stream(non_blocking=True)

    def stream(self):
        return self._stream

    def upload(self, array):
        return self.xp.asarray(array)  # enqueued on the current (the registration's) stream

    def zeros(self, shape):
        return self.xp.zeros(shape, self.xp.float32)

    def contiguous(self, array):
        return self.xp.ascontiguousarray(array, dtype=self.xp.float32)

    def mark(self):
        event = self.xp.cuda.Event()
        event.record(self._stream)
        return event

    def finish(self, velocity, marks):
        host = self.xp.asnumpy(velocity, stream=self._stream)
        self._stream.synchronize()  # the one wait of the loop; also completes every event
        return host, [self.xp.cuda.get_elapsed_time(a, b) / 1e3 for a, b in zip(marks[:-1], marks[1:])]


class _TorchArrays:
    """torch CUDA tensors on one stream: the current one, else a new stream."""

    def __init__(self, device):
        import torch

        self.xp = torch
        self.device = torch.device(device)
        current = torch.cuda.current_stream(self.device)
        default = torch.cuda.default_stream(self.device)
        self._stream = current if current != default else torch.cuda.Stream(self.device)

    def stream(self):
        return self.xp.cuda.stream(self._stream)

    def upload(self, array):
        return self.xp.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def zeros(self, shape):
        return self.xp.zeros(shape, dtype=self.xp.float32, device=self.device)

    def contiguous(self, array):
        return array.contiguous()

    def mark(self):
        event = self.xp.cuda.Event(enable_timing=True)
        event.record(self._stream)
        return event

    def finish(self, velocity, marks):
        host = velocity.cpu().numpy()  # waits for the stream
        self._stream.synchronize()
        return host, [a.elapsed_time(b) / 1e3 for a, b in zip(marks[:-1], marks[1:])]


def _arrays_for(backend):
    if getattr(backend, "device", "cpu") != "cuda":
        return _HostArrays()
    if getattr(backend, "array_module", "cupy") == "torch":
        return _TorchArrays(getattr(backend, "torch_device", "cuda"))
    return _CupyArrays()


def predict_velocity(backend, bundle: Bundle, fixed, moving, levels: int | None = None) -> NetworkResult:
    """Run the level loop; returns ``(velocity (3, X, Y, Z) float32, timings)``.

    ``levels``: run levels 1..levels only (None: all); the last one's velocity is then upsampled
    to the model grid (`smgic_rt.geometry.ops.upsample_field`, level by level), which is what the finer
    levels would have received as their start.

    Parameters
    ----------
    backend : smgic_rt.backends.Backend
        From ``smgic_rt.backends.create(name, bundle)``.
    bundle : Bundle
    fixed, moving : ndarray, float32, shape ``bundle.grid_shape``
        Model-grid arrays from `smgic_rt.methods.preprocess.prepare`.
    """
    from ..geometry import ops

    if not isinstance(bundle, Bundle):
        raise TypeError(f"bundle must be a smgic_rt.models.bundle.Bundle, got {type(bundle).__name__}")
    backend_bundle_id = getattr(getattr(backend, "bundle", None), "id", None)
    if backend_bundle_id != bundle.id:
        raise ValueError(f"backend was created for bundle {backend_bundle_id!r}, not {bundle.id!r}; "
                         "create it with smgic_rt.backends.create(name, bundle)")
    fixed = _check_image("fixed", fixed, bundle.grid_shape)
    moving = _check_image("moving", moving, bundle.grid_shape)
    run_levels = bundle.num_levels if levels is None else levels
    if not is_int(run_levels) or not 1 <= run_levels <= bundle.num_levels:
        raise ValueError(f"levels must be an int in 1..{bundle.num_levels} or None, got {levels!r}")
    steps = bundle.steps
    arrays = _arrays_for(backend)
    on_gpu = not isinstance(arrays, _HostArrays)

    timings = {}
    start = time.perf_counter()
    fixed_levels = level_features(fixed, bundle)
    moving_levels = level_features(moving, bundle)
    with arrays.stream():
        if on_gpu:
            fixed_levels = [arrays.upload(a) for a in fixed_levels]
            moving_levels = [arrays.upload(a) for a in moving_levels]
        timings["features"] = time.perf_counter() - start

        # marks: before level 1's preparation, then after each preparation and each network run;
        # on the GPU they are events on the loop's stream, read after the final wait.
        marks = [arrays.mark()]
        velocity = displacement = None
        for level in range(1, run_levels + 1):
            shape = tuple(fixed_levels[level - 1].shape[1:])
            if velocity is None:
                velocity_up = arrays.zeros((3, *shape))
                moving_warped = moving_levels[level - 1]
            else:
                velocity_up = ops.upsample_field(velocity, shape)
                displacement_up = ops.upsample_field(displacement, shape)
                # Images pad with zeros outside the grid, as in training.
                moving_warped = ops.warp(moving_levels[level - 1], displacement_up, padding="zeros")
            marks.append(arrays.mark())
            out = backend.run_level(level, fixed_levels[level - 1][None], arrays.contiguous(moving_warped)[None],
                                    arrays.contiguous(velocity_up)[None])
            marks.append(arrays.mark())
            velocity = arrays.contiguous(out[0])
            if level < run_levels:
                displacement = ops.integrate_velocity(velocity, steps)
        for finer in range(run_levels + 1, bundle.num_levels + 1):
            velocity = ops.upsample_field(velocity, tuple(fixed_levels[finer - 1].shape[1:]))
        marks.append(arrays.mark())
        result, intervals = arrays.finish(velocity, marks)
    # intervals alternate: preparation of level 1, network 1, integration + preparation of 2, ...
    between = sum(intervals[0::2])
    for level in range(1, run_levels + 1):
        timings[f"level{level}"] = intervals[2 * level - 1]
    timings["between_levels"] = between
    timings["total"] = time.perf_counter() - start
    return NetworkResult(np.ascontiguousarray(result, dtype=np.float32), timings)
