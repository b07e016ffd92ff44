"""Per-level network inputs from a 3-D Haar wavelet pyramid (numpy; the torch twin is
`smgic_rt.backends.torch_model.pyramid_features`, pinned to this one by tests/test_training.py).

One Haar analysis step splits each 2x2x2 block into its approximation (the block mean, the
low-pass band) and seven detail bands. By Parseval the detail bands' energy equals the block's
sum of squared deviations from its mean, so the "energy image" of the paper's Figure 1 is computed
here as the block standard deviation ``sqrt(mean((x - mean)^2))``: the same quantity, without
forming the seven bands, and numerically stable (no ``E[x^2] - E[x]^2`` cancellation).

Level 4 (full model grid) sees the image; level 3 (1/2) and level 2 (1/4) see the approximation
and the detail energy of the step that produced them; level 1 (1/8) sees the approximation only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LEVEL_CHANNELS", "NUM_LEVELS", "haar_step", "pyramid_features"]

NUM_LEVELS = 4
# Input channels per level, level 1 (coarsest) first: approximation (+ detail energy).
LEVEL_CHANNELS = (1, 2, 2, 1)


def haar_step(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(approximation, detail_energy)`` of one Haar step of a 3-D array with even sizes."""
    x, y, z = image.shape
    blocks = image.reshape(x // 2, 2, y // 2, 2, z // 2, 2)
    mean = blocks.mean(axis=(1, 3, 5), dtype=np.float32)
    deviation = blocks - mean[:, None, :, None, :, None]
    energy = np.sqrt(np.square(deviation).mean(axis=(1, 3, 5), dtype=np.float32))
    return mean.astype(np.float32), energy.astype(np.float32)


def pyramid_features(image: np.ndarray) -> list[np.ndarray]:
    """Input channels per level, level 1 (coarsest) first: arrays ``(C_k, X/2^(4-k), ...)``.

    `image` is a model-grid volume ``(X, Y, Z)`` (from `smgic_rt.methods.preprocess.prepare`) whose sizes
    are divisible by 8.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be 3-D (X, Y, Z), got shape {image.shape}")
    if any(n % 2 ** (NUM_LEVELS - 1) for n in image.shape):
        raise ValueError(f"image sizes must be divisible by {2 ** (NUM_LEVELS - 1)} for a {NUM_LEVELS}-level "
                         f"pyramid, got shape {image.shape}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    approx1, energy1 = haar_step(image)
    approx2, energy2 = haar_step(approx1)
    approx3, _ = haar_step(approx2)
    return [approx3[None], np.stack([approx2, energy2]), np.stack([approx1, energy1]), image[None]]
