"""What the affine stage and the refinement compare: the metrics, MIND-SSC descriptors, and the
voxels that cost-function masks take out of the comparison.

- ``"ncc"``: (local) normalised cross-correlation of the intensities: for images of one contrast.
- ``"mind"``: the modality independent neighbourhood descriptor, self-similarity context
  (MIND-SSC, Heinrich et al. 2013): for each voxel, 12 channels of patch distances between the
  pairs of its six neighbours that are sqrt(2) apart, divided by their mean over the channels and
  mapped through ``1 - exp(-d / v)``. It describes local structure, not intensity, so a T2, PD or
  EPI image and a T1 image of one anatomy have similar descriptors; they are compared by the
  sum of squared differences over the channels.

Exclusion masks (a lesion, an artefact; nonzero = exclude) remove voxels from the similarity: a
voxel of the comparison counts only when nothing it reads lies in an excluded voxel, so the
excluded sets are grown by each metric's reach (`descriptor_reach`, the NCC window). Every
function is written once against the arrays' namespace (numpy or cupy) on `smgic_rt._C` kernels.
"""

from __future__ import annotations

import numpy as np

from ..geometry import ops
from ..geometry.filters import box_mean

__all__ = ["MIND_RADIUS", "MIND_DILATION", "mind_descriptors", "descriptor_reach", "excluded_voxels", "grow",
           "shrink_any", "contrast_check"]

# The patch (2 radius + 1)^3 and the neighbours' distance, in voxels of the grid the descriptors
# are made on.
MIND_RADIUS = 1
MIND_DILATION = 2

_SIX = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
# The 12 pairs of the six neighbours that are sqrt(2) apart (the self-similarity context).
_PAIRS = tuple((a, b) for i, a in enumerate(_SIX) for b in _SIX[i + 1:]
               if sum((p - q) ** 2 for p, q in zip(a, b)) == 2)


def descriptor_reach() -> int:
    """How far (voxels, along each axis) a descriptor reads the image around its voxel."""
    return MIND_RADIUS + MIND_DILATION


def excluded_voxels(mask, image, name: str, grid: str = "its image's"):
    """`mask` (nonzero: exclude) as a boolean array of `image`'s namespace, refused unless it has
    `image`'s shape (`grid` says whose shape that is, for the message); None stays None."""
    if mask is None:
        return None
    xp = ops.array_namespace(image)
    mask = xp.asarray(mask)
    if tuple(mask.shape) != tuple(image.shape):
        raise ValueError(f"{name} must have {grid} shape {tuple(image.shape)}, got {tuple(mask.shape)}")
    return mask != 0


def grow(excluded, radius: int):
    """The boolean set `excluded` (X, Y, Z) grown by a (2 radius + 1)^3 box."""
    xp = ops.array_namespace(excluded)
    excluded = xp.asarray(excluded, dtype=np.float32)
    if radius <= 0:
        return excluded > 0
    return box_mean(excluded[None], int(radius))[0] > 0


def shrink_any(excluded, times: int):
    """`excluded` on a grid `times` times halved (Haar): a coarse voxel is excluded when any of
    the fine voxels it averages is."""
    xp = ops.array_namespace(excluded)
    out = xp.ascontiguousarray(xp.asarray(excluded, dtype=np.float32)[None])
    for _ in range(times):
        out = ops.downsample_haar(xp.ascontiguousarray((out > 0).astype(np.float32)))
    return out[0] > 0


def _shifted(padded, offset, pad, shape):
    return padded[tuple(slice(pad + o, pad + o + n) for o, n in zip(offset, shape))]


def mind_descriptors(image, *, excluded=None):
    """MIND-SSC of `image` (X, Y, Z): float32 (12, X, Y, Z), each channel ``1 - exp(-d_c / v)`` of
    the patch distance ``d_c`` of one neighbour pair, less the voxel's smallest, ``v`` the mean of
    the ``d_c`` at that voxel, clipped to [1e-3, 1e3] times its mean over the image (over the
    voxels not `excluded`, so that excluded voxels change no descriptor outside their reach).
    A flat region gives zeros, as the zero padding of the warps does."""
    xp = ops.array_namespace(image)
    image = xp.asarray(image, dtype=np.float32)
    shape, radius, dilation = image.shape, MIND_RADIUS, MIND_DILATION
    padded = xp.pad(image, dilation, mode="edge")
    distances = xp.empty((len(_PAIRS), *shape), np.float32)
    for channel, (a, b) in enumerate(_PAIRS):
        difference = (_shifted(padded, [dilation * o for o in a], dilation, shape)
                      - _shifted(padded, [dilation * o for o in b], dilation, shape))
        distances[channel] = difference * difference
    distances = box_mean(distances, radius)
    distances -= distances.min(axis=0)
    variance = distances.mean(axis=0)
    counted = variance if excluded is None else variance[~grow(excluded, descriptor_reach())]
    scale = float(counted.mean(dtype=np.float64)) if counted.size else 0.0
    if not scale > 0:  # a flat image: nothing to describe
        return xp.zeros_like(distances)
    variance = xp.clip(variance, np.float32(1e-3 * scale), np.float32(1e3 * scale))
    return xp.ascontiguousarray(1.0 - xp.exp(-distances / variance[None]), dtype=np.float32)


def contrast_check(fixed, moving, threshold: float = 0.05) -> dict:
    """Do two aligned images (scaled to [0, 1]) show one contrast? ``{"quartile_means",
    "differ"}``: the moving image's mean over each quartile of the fixed image's intensities
    (where both are above `threshold`). For one contrast the means rise with the fixed image's
    intensity; where the fixed image is brightest (white matter in a T1) a T2, PD or EPI image is
    darker than one quartile below (grey matter), so a fall there says the contrasts differ."""
    xp = ops.array_namespace(fixed, moving)
    both = (fixed > threshold) & (moving > threshold)
    if int(xp.count_nonzero(both)) < 100:
        return {"quartile_means": None, "differ": False}
    f, m = fixed[both], moving[both]
    edges = xp.quantile(f.astype(np.float64), xp.asarray([0.25, 0.5, 0.75]))
    quartile = xp.searchsorted(edges, f.astype(np.float64), side="right")
    sums = xp.bincount(quartile, weights=m.astype(np.float64), minlength=4)
    counts = xp.bincount(quartile, minlength=4)
    means = [round(float(a) / max(int(n), 1), 4) for a, n in zip(ops.to_host(sums), ops.to_host(counts))]
    return {"quartile_means": means, "differ": bool(means[3] < means[2])}
