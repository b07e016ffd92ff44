"""Amortised optimisation: the runtime's refinement as a teacher for the network.

For each training pair the per-pair refinement of the runtime (`smgic_rt.methods.refine`, from zero
velocity, its default options) is run once and its velocity kept as a target beside the paper's
losses: the network learns to predict, in one pass, what the optimiser would find for that pair.
Targets are cached on disk (one ``.npy`` per pair, keyed by the pair's images and the refinement's
options), so a resumed or repeated run pays for each pair once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from smgic_rt.io import atomic
from smgic_rt.methods.refine import RefineOptions, refine_velocity

__all__ = ["TeacherCache", "teacher_loss"]


class TeacherCache:
    """``target(fixed, moving) -> (3, X, Y, Z)`` float32: the refinement's velocity for the pair,
    in voxels of the model grid, computed once and cached in `folder`."""

    def __init__(self, folder, options: RefineOptions = RefineOptions()):
        self.folder = Path(folder)
        self.options = options
        self.computed = 0  # how many targets this cache had to compute (the rest came from disk)

    def _key(self, fixed: np.ndarray, moving: np.ndarray) -> str:
        digest = hashlib.sha256()
        for array in (fixed, moving):
            array = np.ascontiguousarray(array, dtype=np.float32)
            digest.update(repr(array.shape).encode())
            digest.update(array.tobytes())
        digest.update(json.dumps(dataclasses.asdict(self.options), sort_keys=True).encode())
        return digest.hexdigest()[:32]

    def target(self, fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
        path = self.folder / f"{self._key(fixed, moving)}.npy"
        if path.is_file():
            return np.load(path)
        velocity = refine_velocity(fixed, moving, None, options=self.options).velocity
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as temp, open(temp, "wb") as stream:
            np.save(stream, velocity)
        self.computed += 1
        return velocity


def _coarsen(target: torch.Tensor, shape) -> torch.Tensor:
    """The target velocity at a coarser level: Haar means, values in that level's voxels."""
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
