"""Amortised optimisation: the runtime's refinement as a teacher for the network.

For each training pair the per-pair refinement of the runtime (`smgic_rt.methods.refine`, from zero
velocity) is run once and its velocity kept as a target beside the paper's losses: the network
learns to predict, in one pass, what the optimiser would find for that pair. `coarse_options`
is the fast preset's refinement without its model-grid level: the work that the network's
levels 1-3 take over on a CPU. Targets are cached on disk (one ``.npy`` per pair, keyed by the
pair's images and the refinement's options), so a resumed or repeated run pays for each pair once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from smgic_rt.geometry import ops
from smgic_rt.io import atomic
from smgic_rt.methods.refine import RefineOptions, refine_velocity
from smgic_rt.presets import PRESETS

__all__ = ["TeacherCache", "teacher_loss", "coarse_options"]


def coarse_options(options: RefineOptions | None = None) -> RefineOptions:
    """`options` (default: the fast preset's refinement) keeping only its levels coarser than
    the model grid (`RefineOptions.coarse`)."""
    return (PRESETS["fast"]["refine_options"] if options is None else options).coarse()


class TeacherCache:
    """``target(fixed, moving) -> (3, X, Y, Z)`` float32: the refinement's velocity for the pair,
    computed once and cached in `folder`; with `halvings` > 0 it is kept that many times coarser
    (Haar means, in that grid's voxels, as `teacher_loss` coarsens it), which is all a network
    trained up to a coarser level compares with, in an eighth of the disk per halving."""

    def __init__(self, folder, options: RefineOptions = RefineOptions(), halvings: int = 0):
        if not isinstance(halvings, int) or halvings < 0:
            raise ValueError(f"halvings must be an int >= 0, got {halvings!r}")
        self.folder = Path(folder)
        self.options = options
        self.halvings = halvings
        self.computed = 0  # how many targets this cache had to compute (the rest came from disk)

    def _key(self, fixed: np.ndarray, moving: np.ndarray) -> str:
        digest = hashlib.sha256()
        for array in (fixed, moving):
            array = np.ascontiguousarray(array, dtype=np.float32)
            digest.update(repr(array.shape).encode())
            digest.update(array.tobytes())
        digest.update(json.dumps(dataclasses.asdict(self.options), sort_keys=True).encode())
        if self.halvings:
            digest.update(f"halvings={self.halvings}".encode())
        return digest.hexdigest()[:32]

    def target(self, fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
        path = self.folder / f"{self._key(fixed, moving)}.npy"
        if path.is_file():
            return np.load(path)
        velocity = refine_velocity(fixed, moving, None, options=self.options).velocity
        for _ in range(self.halvings):
            velocity = ops.downsample_haar(velocity) / np.float32(2)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as temp, open(temp, "wb") as stream:
            np.save(stream, velocity)
        self.computed += 1
        return velocity


def _coarsen(target: torch.Tensor, shape) -> torch.Tensor:
    """The target velocity at a coarser level: Haar means, values in that level's voxels."""
    if any(t < n for t, n in zip(target.shape[2:], shape)):
        raise ValueError(f"teacher target of shape {tuple(target.shape[2:])} is coarser than a level of shape "
                         f"{tuple(shape)}: keep targets at least as fine as the finest level trained")
    while tuple(target.shape[2:]) != tuple(shape):
        target = torch.nn.functional.avg_pool3d(target, 2) / 2.0
    return target


def teacher_loss(velocities, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of every level's predicted velocity and the teacher's, in voxels
    of each level; with a symmetric batch (forward, backward) the backward half is compared with
    ``-target``, since ``exp(-v)`` is the inverse transform.

    `velocities`: the model's per-level ``(N, 3, ...)`` velocities; `target`: ``(1, 3, X, Y, Z)``.
    """
    total = target.new_zeros(())
    for v in velocities:
        t = _coarsen(target, v.shape[2:])
        half = v.shape[0] // 2
        if half:
            total = total + 0.5 * (torch.mean((v[:half] - t) ** 2) + torch.mean((v[half:] + t) ** 2))
        else:
            total = total + torch.mean((v - t) ** 2)
    return total / len(velocities)
