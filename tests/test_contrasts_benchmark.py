"""benchmarks/contrasts.py's sets on real templates at 4 mm: the known map moves labels and image
alike, the cross-subject labels lie on their heads, the lesion is painted where it is said to be."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

contrasts = pytest.importorskip("contrasts")
accuracy = pytest.importorskip("accuracy")
peer_tools = pytest.importorskip("peer_tools")
real_pairs = pytest.importorskip("real_pairs")


def _require_data():
    from smgic_rt.demo import DemoDataError

    try:
        contrasts.spm_image("T1")
        for entry in (*contrasts.COLIN27_AAL, real_pairs.ATLASES["desikan_killiany"][0], real_pairs.BRAINS["mni152"].image):
            real_pairs.package_file(*entry)
    except (DemoDataError, KeyError) as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def known_pairs():
    _require_data()
    return contrasts.make_contrast_pairs(contrasts=("PD",), cross_subject=("T2",), spacing=4.0)


def _world(image):
    index = np.indices(image.shape[:3], dtype=np.float64).reshape(3, -1)
    return image.affine[:3, :3] @ index + image.affine[:3, 3:4]


def test_the_warp_inverse_is_an_inverse(known_pairs):
    warp = known_pairs[0].notes["warp"]
    world = _world(known_pairs[0].fixed)[:, ::7]
    points = warp.inverse_world(world)
    # the forward map written out here, from RandomWarp's docstring
    index = np.linalg.solve(warp.affine[:3, :3], points - warp.affine[:3, 3:4])
    displacement = np.stack([ndimage.map_coordinates(c, index, order=1, mode="nearest") for c in warp.nonlinear])
    forward = warp.linear @ (points - warp.centre[:, None]) + warp.centre[:, None] + warp.translation[:, None]
    assert np.abs(forward + displacement - world).max() < 0.05
    assert warp.nonlinear_max_mm > 2.0 and max(abs(a) for a in warp.rotation_deg) > 1.0  # not the identity


def test_known_map_moves_labels_and_image_alike(known_pairs):
    raw, misplaced = (p for p in known_pairs if p.notes["set"] == "known")
    assert (raw.header, misplaced.header) == ("raw", "misplaced")
    # the misplaced pair is the raw one under another header, labels included
    assert np.array_equal(np.asarray(raw.moving.dataobj), np.asarray(misplaced.moving.dataobj))
    assert np.allclose(misplaced.moving.affine, misplaced.misplacement.matrix @ raw.moving.affine)
    assert np.allclose(misplaced.moving_labels.affine, misplaced.moving.affine)
    source = np.asarray(real_pairs.downsampled(contrasts.spm_image("PD"), raw.fixed_labels, 4.0)[0].dataobj)
    brain = np.asarray(raw.fixed_labels.dataobj) > 0
    for pair in (raw, misplaced):
        index = contrasts.ground_truth_index(pair)
        truth = accuracy._score_labels(pair, contrasts.ground_truth_labels(pair, index))["dice"]
        as_they_lie = accuracy._score_none(pair)["dice"]
        assert truth > 0.85 and truth > as_they_lie + 0.4, (pair.name, truth, as_they_lie)
        # the image through the same known map comes back onto the PD template
        back = ndimage.map_coordinates(np.asarray(pair.moving.dataobj), index, order=1).reshape(brain.shape)
        # where the warp kept the head inside the field of view
        seen = np.all((index >= 0) & (index <= np.asarray(brain.shape)[:, None] - 1), axis=0).reshape(brain.shape)
        for region in (seen, seen & brain):
            assert np.corrcoef(back[region], source[region])[0, 1] > 0.97
            assert np.corrcoef(np.asarray(pair.moving.dataobj)[region], source[region])[0, 1] < 0.9


def test_cross_subject_labels_lie_on_their_heads(known_pairs):
    pair = next(p for p in known_pairs if p.notes["set"] == "colin27")
    assert {s.name for s in pair.structures} == {s.name for s in real_pairs.shared_structures("aal", "desikan_killiany")}
    assert "lateral_ventricle_left" not in {s.name for s in pair.structures}  # AAL does not label it
    # both label maps sit in MNI space on their own images: they overlap as they lie, not perfectly
    assert 0.35 < accuracy._score_none(pair)["dice"] < 0.9


def test_lesion_is_painted_where_claimed():
    _require_data()
    image, labels = real_pairs.downsampled(*real_pairs.load_brain("mni152"), spacing=3.0)
    ids = {s.name: s.common_id for s in real_pairs.read_structures()}
    label_data = np.asarray(labels.dataobj)
    centroids = [(labels.affine @ np.r_[np.argwhere(label_data == ids[n]).mean(axis=0), 1])[:3]
                 for n in ("putamen_left", "thalamus_left")]
    data = np.asarray(image.dataobj, dtype=np.float32)
    for kind in ("hypo", "hyper"):
        painted, mask, lesion = contrasts.paint_lesion(image, labels, radius_mm=12.0, kind=kind, edge_mm=3.0)
        assert np.allclose(lesion.centre_mm, (centroids[0] + centroids[1]) / 2) and lesion.centre_mm[0] < 0  # left
        distance = np.linalg.norm(_world(image) - np.asarray(lesion.centre_mm)[:, None], axis=0).reshape(image.shape)
        out = np.asarray(painted.dataobj)
        assert np.array_equal(out[distance >= 13.5], data[distance >= 13.5])  # untouched outside
        assert np.allclose(out[distance <= 10.5], lesion.intensity)  # the core is the lesion
        touched = np.asarray(mask.dataobj) > 0
        assert np.all(touched[out != data]) and not np.any(touched[distance >= 13.5])
        assert touched.sum() * 27.0 > 4 / 3 * np.pi * 10.5 ** 3
        median = np.median(data[data > 0])
        assert (lesion.intensity < 0.5 * median) if kind == "hypo" else (lesion.intensity > np.percentile(data[data > 0], 99))
    pair = real_pairs.RealPair("p", "a", "b", "raw", image, labels, image, labels, real_pairs.read_structures(), True)
    near = {s.name for s in contrasts.structures_near(pair, lesion, near_mm=5.0)}
    assert {"putamen_left", "thalamus_left"} <= near and not any(n.endswith("_right") for n in near)
    with pytest.raises(ValueError, match="kind"):
        contrasts.paint_lesion(image, labels, kind="bright")


def test_set_runner_scores_and_summarises(known_pairs):
    report = contrasts.run_contrast_set(known_pairs, metrics=[], peers=())
    summary = report["summary"]
    assert summary["ground_truth"]["pairs"] == 2 and summary["none"]["pairs"] == 3
    assert set(summary["ground_truth"]["groups"]) == {"known_raw", "known_misplaced"}
    assert summary["ground_truth"]["dice_mean"] > summary["none"]["dice_mean"]
    assert "speedup_over_faster_peer" not in summary["none"]  # no peer ran
    text = contrasts.markdown({"contrast": report, "date": "d", "cpu_count": 2, "load_average_start": [0],
                               "load_average_end": [0], "smgic_rt": {"path": "p", "commit": "c",
                                                                     "uncommitted_changes": False}}, "cmd")
    assert "| ground_truth |" in text and "PD_to_T1_known_misplaced" in text


def test_greedy_takes_the_metric_in_both_stages(tmp_path):
    affine, deformable, _ = peer_tools.greedy_commands("F.nii.gz", "M.nii.gz", tmp_path, "L.nii.gz", metric="NMI")
    assert " -m NMI -i F.nii.gz M.nii.gz" in affine and " -m NMI -i F.nii.gz M.nii.gz" in deformable
    assert "NCC" not in affine + deformable
