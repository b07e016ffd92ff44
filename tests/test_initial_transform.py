"""Registrations that start from a transform made elsewhere (`--initial-transform`,
`Registrar.register(initial=...)`), on a real pair of different brains (3 mm) whose moving image
is misplaced in its header by a known rigid motion."""

import nibabel as nib
import numpy as np
import pytest

from smgic_rt.methods.affine import rotation_matrix

nitransforms = pytest.importorskip("nitransforms")
try:
    from toolkit_support import brain_pair, correlation, register
except ImportError:  # tests/ turned into a package
    from tests.toolkit_support import brain_pair, correlation, register

# The misplacement: world points of the moving image move by this rigid map (fixed -> moving).
MISPLACEMENT = np.eye(4)
MISPLACEMENT[:3, :3] = rotation_matrix(np.radians([12.0, -8.0, 15.0]))
MISPLACEMENT[:3, 3] = [14.0, -9.0, 11.0]


@pytest.fixture(scope="module")
def misplaced(tmp_path_factory):
    folder = tmp_path_factory.mktemp("misplaced")
    pair = brain_pair(folder, 3, moving_affine=lambda affine: MISPLACEMENT @ affine)
    # The same start in three formats, each written by nitransforms from the known matrix.
    start = nitransforms.linear.Affine(MISPLACEMENT, reference=str(pair["fixed"]))
    pair["itk"] = start.to_filename(str(folder / "start.mat"), fmt="itk")
    pair["fsl"] = start.to_filename(str(folder / "start_flirt.mat"), fmt="fsl", moving=str(pair["moving"]))
    pair["lta"] = start.to_filename(str(folder / "start.lta"), fmt="fs", moving=str(pair["moving"]))
    return pair


@pytest.fixture(scope="module")
def runs(misplaced, tmp_path_factory):
    folder, bundle = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("bundle")
    done = {}
    for name, extra in {
        "own_affine": [],
        "none_affine_off": ["--affine", "off"],
        **{f"{fmt}_off": ["--initial-transform", misplaced[fmt], "--affine", "off"] for fmt in ("itk", "fsl", "lta")},
        **{f"{fmt}_auto": ["--initial-transform", misplaced[fmt]] for fmt in ("itk", "fsl", "lta")},
    }.items():
        done[name] = register(misplaced, folder / name, bundle, *extra)
    return done


def _warp(run):
    return np.asarray(nib.load(str(run / "warp.nii.gz")).dataobj)


def _quality(misplaced, run) -> float:
    fixed = nib.load(str(misplaced["fixed"])).get_fdata()
    return correlation(nib.load(str(run / "warped.nii.gz")).get_fdata(), fixed, fixed > 0.1 * fixed.max())


@pytest.mark.parametrize("mode", ["off", "auto"])
@pytest.mark.parametrize("fmt", ["fsl", "lta"])
def test_flirt_and_lta_starts_end_where_the_itk_start_ends(runs, fmt, mode):
    difference = np.abs(_warp(runs[f"{fmt}_{mode}"]) - _warp(runs[f"itk_{mode}"])).max()
    assert difference < 0.01, difference


def test_affine_off_keeps_the_initial_transform(misplaced, runs):
    import json

    report = json.loads((runs["itk_off"] / "report.json").read_text())
    assert report["stages"]["affine"]["ran"] is False
    np.testing.assert_allclose(report["affine_matrix"], MISPLACEMENT, atol=1e-9)
    assert report["stages"]["load"]["stats"]["initial_transform"] is True


def test_right_start_with_affine_off_registers_as_well_as_our_affine_stage(misplaced, runs):
    own, started, without = (_quality(misplaced, runs[name]) for name in ("own_affine", "itk_off", "none_affine_off"))
    assert started > own - 0.005, (started, own)
    assert started > without + 0.05, (started, without)  # the start is what brings it there


def test_registrar_takes_a_matrix_or_a_file(misplaced, runs, tmp_path):
    from smgic_rt import Registrar

    try:
        from test_registrar_support import make_tiny_bundle
    except ImportError:
        from tests.test_registrar_support import make_tiny_bundle
    registrar = Registrar(make_tiny_bundle(tmp_path), backend="onnxruntime", affine="off")
    from_matrix = registrar.register(str(misplaced["fixed"]), str(misplaced["moving"]), initial=MISPLACEMENT)
    from_file = registrar.register(str(misplaced["fixed"]), str(misplaced["moving"]), initial=str(misplaced["fsl"]))
    from_pair = registrar.register(str(misplaced["fixed"]), str(misplaced["moving"]), initial=(str(misplaced["fsl"]), "fsl"))
    for result in (from_file, from_pair):
        assert np.abs(result.forward_field[0] - from_matrix.forward_field[0]).max() < 0.01
    cli_field = _warp(runs["itk_off"])
    ours = np.asarray(from_matrix.forward_transform.dataobj)
    assert np.abs(ours - cli_field).max() < 0.01


def test_a_broken_initial_transform_fails_before_any_work(misplaced, tmp_path, capfd):
    from smgic_rt import cli

    broken = tmp_path / "start.txt"
    broken.write_text("1 0 0\n0 1 0\n")
    status = cli.register_main([str(misplaced["fixed"]), str(misplaced["moving"]), "-o", str(tmp_path / "out"),
                                "--initial-transform", str(broken)])
    assert status == 1
    assert "start.txt" in capfd.readouterr().err
    assert not (tmp_path / "out").exists()
