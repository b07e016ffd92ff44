"""smgic_rt.methods.preprocess, the one preprocessing shared by training and the runtime: the model grid is
RAS+ and centred on the brain, the result does not depend on how the file orders its axes,
resampling is exact where it should be, intensities land in [0, 1], bad input is refused."""

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt.methods import preprocess


@pytest.fixture(scope="module")
def anatomical():
    """nibabel's tiny real T1 (33x41x25 at 2 mm, LAS)."""
    folder = importlib.util.find_spec("nibabel").submodule_search_locations[0]
    image = nib.load(str(Path(folder) / "tests" / "data" / "anatomical.nii"))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def test_model_grid_is_ras_with_the_spacing_and_centred_on_the_foreground(anatomical):
    data, affine = anatomical
    shape, spacing = (24, 32, 16), (3.0, 2.5, 2.0)
    grid = preprocess.model_grid(data, affine, shape, spacing)
    assert np.allclose(grid[:3, :3], np.diag(spacing)) and np.allclose(grid[3], [0, 0, 0, 1])
    centre_voxel = (np.asarray(shape) - 1) / 2.0
    assert np.allclose(grid[:3, :3] @ centre_voxel + grid[:3, 3], preprocess.foreground_centre(data, affine))
    # The foreground centre lies inside the head, not at the field of view's centre by accident.
    inside = np.linalg.solve(affine, [*preprocess.foreground_centre(data, affine), 1.0])[:3]
    assert np.all(inside > 0) and np.all(inside < np.asarray(data.shape) - 1)


def test_prepare_does_not_depend_on_the_file_axis_order(anatomical):
    """The same head stored LAS and reoriented to PIR must give the same model-grid volume."""
    data, affine = anatomical
    image = nib.Nifti1Image(data, affine)
    reoriented = image.as_reoriented(nib.orientations.ornt_transform(
        nib.io_orientation(affine), nib.orientations.axcodes2ornt(("P", "I", "R"))))
    assert nib.aff2axcodes(reoriented.affine) == ("P", "I", "R")
    first, grid_a = preprocess.prepare(data, affine, (32, 40, 24), 2.0)
    second, grid_b = preprocess.prepare(np.asarray(reoriented.dataobj, np.float32), reoriented.affine,
                                        (32, 40, 24), 2.0)
    assert np.allclose(grid_a, grid_b, atol=1e-4)
    assert np.abs(first - second).max() < 1e-5


def test_resample_onto_its_own_grid_is_the_identity_and_a_voxel_shift_shifts(anatomical):
    data, affine = anatomical
    same = preprocess.resample(data, affine, affine, data.shape)
    assert np.array_equal(same, data)
    shifted_grid = affine.copy()
    shifted_grid[:3, 3] += affine[:3, :3] @ [1.0, 0.0, 0.0]  # grid voxel i sits on data voxel i + 1
    shifted = preprocess.resample(data, affine, shifted_grid, data.shape)
    assert np.array_equal(shifted[:-1], data[1:]) and np.all(shifted[-1] == 0)


def test_antialias_smooths_only_when_the_voxels_grow(anatomical):
    data, affine = anatomical
    assert np.array_equal(preprocess.antialias(data, affine, 2.0), data)
    smoothed = preprocess.antialias(data, affine, 6.0)
    assert smoothed.shape == data.shape
    # Low-pass: less high-frequency energy, the same mean (edge-replicated, normalised taps).
    assert np.abs(np.diff(smoothed, axis=0)).mean() < 0.6 * np.abs(np.diff(data, axis=0)).mean()
    assert smoothed.mean() == pytest.approx(data.mean(), rel=0.02)


def test_antialias_strength_scales_the_gaussian_width(anatomical):
    from smgic_rt.geometry.filters import smooth

    data, affine = anatomical  # 2 mm voxels: onto 6 mm, sigma = sqrt(3^2 - 1) / (2 sqrt(2 ln 2)) voxels
    full_sigma = np.sqrt(8.0) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    for strength in (1.0, 0.5):
        expected = smooth(data[None], [strength * full_sigma] * 3)[0]
        assert np.array_equal(preprocess.antialias(data, affine, 6.0, strength), expected)
    assert np.array_equal(preprocess.antialias(data, affine, 6.0, 0.0), data)
    # resample and prepare pass it on: sharper (more high-frequency energy) at a lower strength
    grid = preprocess.grid_around(preprocess.foreground_centre(data, affine), (12, 14, 9), 6.0)
    roughness = [np.abs(np.diff(preprocess.resample(data, affine, grid, (12, 14, 9), antialias_strength=s),
                                axis=0)).mean() for s in (1.0, 0.5, 0.0)]
    assert roughness[0] < roughness[1] < roughness[2]
    sharp, _ = preprocess.prepare(data, affine, (12, 14, 9), 6.0, grid_affine=grid, antialias_strength=0.5)
    expected = preprocess.normalize_intensity(preprocess.resample(data, affine, grid, (12, 14, 9),
                                                                  antialias_strength=0.5))
    assert np.array_equal(sharp, expected)
    with pytest.raises(ValueError, match="antialias strength"):
        preprocess.antialias(data, affine, 6.0, 1.5)


def test_normalize_intensity_is_robust_and_scale_free(anatomical):
    data, _ = anatomical
    out = preprocess.normalize_intensity(data)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.abs(preprocess.normalize_intensity(7.5 * data) - out).max() < 1e-5
    # One hot voxel (a vessel, an artefact) does not squash the rest of the range.
    spiked = data.copy()
    spiked[10, 10, 10] = 100 * data.max()
    assert np.abs(preprocess.normalize_intensity(spiked) - out).mean() < 1e-3


def test_prepare_puts_a_moving_image_on_the_given_grid(anatomical):
    data, affine = anatomical
    volume, grid = preprocess.prepare(data, affine, (16, 24, 16), 3.0)
    assert volume.shape == (16, 24, 16) and volume.dtype == np.float32
    assert 0.0 <= volume.min() and volume.max() <= 1.0 and volume.max() > 0.9
    other = grid.copy()
    other[:3, 3] += 5.0
    _, used = preprocess.prepare(data, affine, (16, 24, 16), 3.0, grid_affine=other)
    assert np.array_equal(used, other)


def test_bad_input_is_refused_with_what_came(anatomical):
    data, affine = anatomical
    with pytest.raises(ValueError, match=r"must be 3-D, got shape \(33, 41, 25, 2\)"):
        preprocess.prepare(np.stack([data, data], -1), affine, (16, 16, 16), 2.0)
    with pytest.raises(ValueError, match="singular"):
        preprocess.model_grid(data, np.diag([2.0, 0.0, 2.0, 1.0]), (16, 16, 16), 2.0)
    with pytest.raises(ValueError, match="shape must have 3 entries"):
        preprocess.model_grid(data, affine, (16, 16), 2.0)
    with pytest.raises(ValueError, match="positive"):
        preprocess.model_grid(data, affine, (16, 16, 16), -1.0)
    with pytest.raises(ValueError, match="constant"):
        preprocess.normalize_intensity(np.zeros((8, 8, 8)))
    bad = data.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        preprocess.normalize_intensity(bad)
