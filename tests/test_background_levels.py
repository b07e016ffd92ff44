"""Intensity scaling that does not assume a zero background (issue 36, defect 4).

On e7b1639 the moving image of a real pair minus 50 registered worse (the foreground was taken
as ``data > 0.1 * p99``, the -50 background padded with 0 outside the image), a z-scored brain
worse still, and a +5000 offset was flagged "fail" (mask Dice 0). The background level is now
read from the image's own histogram (`preprocess.background_level`) and registered as zero;
images whose background is zero are used exactly as before (level 0.0, nothing subtracted).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt.methods import preprocess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
real_pairs = pytest.importorskip("real_pairs")

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _variants(data: np.ndarray) -> dict:
    data = data.astype(np.float32)
    return {"minus 50": data - 50.0, "plus 5000": data + 5000.0,
            "z-scored": ((data - data.mean()) / data.std()).astype(np.float32)}


@pytest.fixture(scope="module")
def pair():
    fixed, fixed_labels = real_pairs.downsampled(*real_pairs.load_brain("mni152"), spacing=2.0)
    moving, moving_labels = real_pairs.downsampled(*real_pairs.load_brain("colin27"), spacing=2.0)
    shared = real_pairs.shared_structures("desikan_killiany", real_pairs.BRAINS["colin27"].atlas)
    return fixed, fixed_labels, moving, moving_labels, shared


def test_zero_background_images_keep_level_zero(pair):
    """Every image of the test and benchmark sets has a zero background: nothing changes for them."""
    from smgic_rt.demo import demo_pair

    images = [nib.load(str(ANATOMICAL)), pair[0], pair[2]]
    images += [nib.load(str(path)) for role, path in demo_pair().items() if role != "moving_labels"]
    images += [real_pairs.load_brain(name)[0] for name in real_pairs.BRAINS]
    for image in images:
        assert preprocess.background_level(np.asarray(image.dataobj, dtype=np.float32)) == 0.0


def test_shifted_backgrounds_are_found_exactly(pair):
    data = np.asarray(pair[2].dataobj, dtype=np.float32)
    for name, shifted in _variants(data).items():
        expected = float(shifted.reshape(-1)[np.argmin(data)])  # where the original is 0
        assert preprocess.background_level(shifted) == pytest.approx(expected, abs=1e-6), name
    noisy = data + np.random.default_rng(0).normal(-300.0, 5.0, data.shape).astype(np.float32)
    assert abs(preprocess.background_level(noisy) + 300.0) < 3.0  # Otsu's dark class: the noise's median


def _mean_dice(result, moving_labels, fixed_labels, shared):
    warped = np.asarray(result.apply(moving_labels, interpolation="label").dataobj)
    return float(np.mean(list(real_pairs.structure_dice(np.asarray(fixed_labels.dataobj), warped, shared).values())))


def test_shifted_and_zscored_moving_images_register_as_the_original(pair):
    from smgic_rt import Registrar

    fixed, fixed_labels, moving, moving_labels, shared = pair
    registrar = Registrar(threads=2)
    original = registrar.register(fixed, moving)
    dice = _mean_dice(original, moving_labels, fixed_labels, shared)
    assert original.stats["flag"] == "ok", original.stats["flag_reasons"]
    for name, data in _variants(np.asarray(moving.dataobj)).items():
        result = registrar.register(fixed, nib.Nifti1Image(data, moving.affine))
        assert abs(_mean_dice(result, moving_labels, fixed_labels, shared) - dice) <= 0.01, name
        assert result.stats["flag"] == "ok", (name, result.stats["flag_reasons"])
        # The warped image is the moving image's own values, its background outside it too.
        level = preprocess.background_level(data)
        warped = np.asarray(result.warped.dataobj)
        assert np.allclose(np.percentile(warped, 1), level, atol=abs(level) * 1e-5 + 1e-3), name
