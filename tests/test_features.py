"""smgic_rt.methods.features (numpy, no torch): the Haar pyramid's levels, shapes and known values.
Its torch twin's parity is pinned in tests/test_training.py."""

import numpy as np
import pytest

from smgic_rt.methods import features
from smgic_rt.geometry import ops


def test_levels_shapes_and_channels():
    image = np.random.default_rng(0).random((32, 40, 24), dtype=np.float32)
    levels = features.pyramid_features(image)
    assert [lv.shape for lv in levels] == [(1, 4, 5, 3), (2, 8, 10, 6), (2, 16, 20, 12), (1, 32, 40, 24)]
    assert tuple(lv.shape[0] for lv in levels) == features.LEVEL_CHANNELS
    assert all(lv.dtype == np.float32 for lv in levels)
    assert np.array_equal(levels[3][0], image)


def test_approximations_are_the_runtime_haar_downsampling():
    image = np.random.default_rng(1).random((16, 16, 24), dtype=np.float32)
    levels = features.pyramid_features(image)
    half = ops.downsample_haar(image[None])
    quarter = ops.downsample_haar(half)
    assert np.abs(levels[2][0] - half[0]).max() < 1e-6
    assert np.abs(levels[1][0] - quarter[0]).max() < 1e-6
    assert np.abs(levels[0][0] - ops.downsample_haar(quarter)[0]).max() < 1e-6


def test_detail_energy_is_the_block_deviation():
    # Constant blocks carry no detail; a +-1 checkerboard in every block has unit energy.
    blocks = np.kron(np.arange(8, dtype=np.float32).reshape(2, 2, 2), np.ones((2, 2, 2), np.float32))
    approx, energy = features.haar_step(blocks)
    assert np.array_equal(approx, np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    assert np.array_equal(energy, np.zeros((2, 2, 2), np.float32))
    x, y, z = np.indices((4, 4, 4))
    checker = np.where((x + y + z) % 2 == 0, 1.0, -1.0).astype(np.float32)
    approx, energy = features.haar_step(checker + 5.0)
    assert np.allclose(approx, 5.0) and np.allclose(energy, 1.0)


def test_refuses_shapes_without_a_pyramid():
    with pytest.raises(ValueError, match=r"divisible by 8 .* got shape \(16, 12, 16\)"):
        features.pyramid_features(np.zeros((16, 12, 16), np.float32))
    with pytest.raises(ValueError, match="must be 3-D"):
        features.pyramid_features(np.zeros((1, 16, 16, 16), np.float32))
