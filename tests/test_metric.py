"""The metrics (`smgic_rt.methods.similarity`: "ncc", "mind") and the cost-function masks, in the
affine stage and the refinement, on a real brain: gradients against finite differences,
invariance of MIND to intensity remappings where NCC is not, excluded voxels without influence on
either objective, and the plumbing (Registrar, CLI) with its refusals."""

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import nilearn_brain, package_file
from smgic_rt import Registrar, cli
from smgic_rt.geometry import ops
from smgic_rt.methods import affine, refine, similarity
from smgic_rt.methods.affine import AffineOptions
from smgic_rt.methods.refine import Level, RefineOptions, objective

SHAPE = (40, 48, 40)


@pytest.fixture(scope="module")
def brain():
    return nilearn_brain(SHAPE, 4.0)


def _smooth_field(seed, peak, shape=SHAPE):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((3, shape[0] // 8, shape[1] // 8, shape[2] // 8)).astype(np.float32)
    for _ in range(3):
        v = ops.upsample_field(v)
    return np.ascontiguousarray(v * np.float32(peak / np.abs(v).max()))


def _options(metric, symmetric=False, radius=1):
    # One level, no regulariser: the objective is minus the similarity alone.
    return RefineOptions(levels=(Level(1, 1, radius=radius, reg=0.0, fluid_sigma=0.0, symmetric=symmetric),),
                         metric=metric)


def _shift(volume, voxels):
    """`volume` read `voxels` further along axis 0 (a translation through a constant field)."""
    field = np.zeros((3, *volume.shape), np.float32)
    field[0] = voxels
    return ops.warp(volume[None], field)[0]


def _remaps(image):
    """A monotone (gamma) and a non-monotone remapping (the darkest third made the brightest,
    as fluid is in a T2 image and dark in a T1) of an image in [0, 1]."""
    monotone = image ** 2.0
    foreground = image > 0.05
    dark = np.percentile(image[foreground], 33)
    non_monotone = np.where(foreground & (image < dark), 1.0 - image, 0.6 * image).astype(np.float32)
    return {"monotone": monotone.astype(np.float32), "non-monotone": non_monotone}


# ------------------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("symmetric", [False, True])
def test_mind_force_matches_finite_differences(brain, symmetric):
    """The refinement's MIND force is d(similarity)/dv: along a smooth direction it matches the
    central difference of the objective (which is minus the similarity here). With both images
    moving half-way the force, as the NCC one, leaves out the factor 1/2 of exp(+-v/2) (its
    scale is normalised away by the step)."""
    moving = ops.warp(brain[None], ops.integrate_velocity(_smooth_field(1, 2.0)))[0]
    options = _options("mind", symmetric)
    level = options.levels[0]
    v = _smooth_field(2, 0.5)
    pair = refine._make_pair(brain, moving, "mind")
    _, _, (fixed_w, moving_w, _, d_fixed, d_moving, _) = refine._evaluate(pair, v, level, options)
    force = refine._force(fixed_w, moving_w, d_fixed, d_moving, symmetric)
    direction = _smooth_field(3, 1.0)
    h = 0.05
    plus = objective(brain, moving, v + np.float32(h) * direction, options)
    minus = objective(brain, moving, v - np.float32(h) * direction, options)
    numeric = (plus - minus) / (2 * h)
    # the force is per voxel (the similarity's derivative times the voxel count)
    analytic = -float(np.sum(force.astype(np.float64) * direction)) / brain.size * (0.5 if symmetric else 1.0)
    # central differences of warped images stand for the derivative of the interpolation
    assert analytic == pytest.approx(numeric, rel=0.25 if symmetric else 0.1)


@pytest.mark.parametrize("metric", ["ncc", "mind"])
def test_affine_gradient_matches_finite_differences(brain, metric):
    grid = np.diag([4.0, 4.0, 4.0, 1.0])
    moving_image = np.ascontiguousarray(ops.warp(brain[None], _smooth_field(4, 1.5))[0])
    fixed = affine._make_level(np.ascontiguousarray(brain), grid, True, metric)
    moving = affine._make_level(moving_image, grid, False, metric)
    world = np.eye(4)
    world[:3, :3] = affine.rotation_matrix(np.radians([3.0, -2.0, 4.0]))
    world[:3, 3] = [1.5, -2.0, 1.0]
    value, gradient = affine.similarity_and_gradient(fixed, moving, world, metric)
    scale = np.array([0.01] * 3 + [1.0])  # a step of ~1 mm at the brain's extent, and 1 mm
    numeric = np.zeros((3, 4))
    for i in range(3):
        for j in range(4):
            step = np.zeros((4, 4))
            step[i, j] = 0.2 * scale[j]
            plus = affine.similarity_and_gradient(fixed, moving, world + step, metric)[0]
            minus = affine.similarity_and_gradient(fixed, moving, world - step, metric)[0]
            numeric[i, j] = (plus - minus) / (2 * step[i, j])
    np.testing.assert_allclose(gradient[:3] * scale, numeric * scale, rtol=0.1, atol=0.02 * np.abs(numeric * scale).max())


# ------------------------------------------------------------------------------------ invariance

@pytest.mark.parametrize("remap", ["monotone", "non-monotone"])
def test_mind_is_invariant_to_intensity_remapping_where_ncc_is_not(brain, remap):
    """How much a remapping of the moving image's intensities changes the objective at the true
    alignment, and how much of the truth's lead over a 1.5-voxel shift it keeps, in units of
    that lead. Local NCC is itself nearly invariant to a smooth monotone map (linear in each
    window); a non-monotone one (dark made bright, as fluid from T1 to T2) costs NCC more than
    the shift does and most of its lead, while MIND keeps the truth clearly ahead."""
    remapped = _remaps(brain)[remap]
    change, lead_kept = {}, {}
    for metric in ("ncc", "mind"):
        options = _options(metric, radius=2)
        aligned = objective(brain, brain, None, options)
        lead = objective(brain, _shift(brain, 1.5), None, options) - aligned
        aligned_remapped = objective(brain, remapped, None, options)
        lead_remapped = objective(brain, _shift(remapped, 1.5), None, options) - aligned_remapped
        assert lead > 0
        change[metric] = abs(aligned_remapped - aligned) / lead
        lead_kept[metric] = lead_remapped / lead
    assert change["mind"] < 0.7 and lead_kept["mind"] > 0.7
    if remap == "monotone":
        assert change["ncc"] < 0.5 and lead_kept["ncc"] > 0.7
    else:
        assert change["ncc"] > 1.0 and lead_kept["ncc"] < 0.5


def test_mind_descriptors_are_invariant_to_linear_intensity_maps(brain):
    d = similarity.mind_descriptors(brain)
    np.testing.assert_allclose(similarity.mind_descriptors(np.float32(3.0) * brain + np.float32(0.5)), d, atol=2e-4)
    np.testing.assert_allclose(similarity.mind_descriptors(np.float32(1.0) - brain), d, atol=2e-4)
    assert d.shape == (12, *brain.shape) and float(d.min()) >= 0 and float(d.max()) <= 1


# ------------------------------------------------------------------------------------ exclusions

def _lesion(shape, centre, radius):
    index = np.indices(shape)
    return sum((index[a] - centre[a]) ** 2 for a in range(3)) <= radius ** 2


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("metric", ["ncc", "mind"])
def test_excluded_voxels_do_not_move_the_refinement_objective(brain, metric, symmetric):
    moving = ops.warp(brain[None], ops.integrate_velocity(_smooth_field(5, 2.0)))[0]
    v = _smooth_field(6, 1.0)
    fixed_lesion = _lesion(SHAPE, (14, 30, 22), 4)
    moving_lesion = _lesion(SHAPE, (26, 20, 18), 4)
    options = _options(metric, symmetric, radius=2)
    rng = np.random.default_rng(7)
    fixed_changed, moving_changed = brain.copy(), moving.copy()
    fixed_changed[fixed_lesion] = rng.random(int(fixed_lesion.sum()))
    moving_changed[moving_lesion] = rng.random(int(moving_lesion.sum()))
    masks = dict(fixed_exclude=fixed_lesion, moving_exclude=moving_lesion)
    reference = objective(brain, moving, v, options, **masks)
    assert objective(fixed_changed, moving_changed, v, options, **masks) == reference
    # without the masks the same change moves it: the test can fail
    assert objective(fixed_changed, moving_changed, v, options) != objective(brain, moving, v, options)


@pytest.mark.parametrize("metric", ["ncc", "mind"])
def test_excluded_voxels_do_not_move_the_affine_similarity(brain, metric):
    grid = np.diag([4.0, 4.0, 4.0, 1.0])
    moving_image = np.ascontiguousarray(ops.warp(brain[None], _smooth_field(8, 1.5))[0])
    fixed_lesion, moving_lesion = _lesion(SHAPE, (14, 30, 22), 4), _lesion(SHAPE, (26, 20, 18), 4)
    world = np.eye(4)
    world[:3, 3] = [2.0, -1.0, 1.5]
    rng = np.random.default_rng(9)

    def value(fixed_image, moving_image):
        fixed = affine._make_level(fixed_image, grid, True, metric, fixed_lesion)
        moving = affine._make_level(moving_image, grid, False, metric, moving_lesion)
        return affine.similarity_and_gradient(fixed, moving, world, metric)

    fixed_changed, moving_changed = brain.copy(), moving_image.copy()
    fixed_changed[fixed_lesion] = rng.random(int(fixed_lesion.sum()))
    moving_changed[moving_lesion] = rng.random(int(moving_lesion.sum()))
    before, after = value(brain, moving_image), value(fixed_changed, moving_changed)
    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1], before[1])


def test_exclusion_masks_are_refused_when_they_leave_nothing(brain):
    with pytest.raises(ValueError, match="moving_exclude must have the images' shape"):
        refine.refine_velocity(brain, brain, moving_exclude=np.ones((4, 4, 4)), options=_options("ncc"))
    with pytest.raises(ValueError, match="fixed_exclude leaves no voxel"):
        affine.register_affine(brain, np.diag([4.0, 4, 4, 1]), brain, np.diag([4.0, 4, 4, 1]),
                               fixed_exclude=np.ones(SHAPE))


# --------------------------------------------------------------------------------------- plumbing

def test_registrar_metric_reaches_both_stages_and_merges_with_presets():
    registrar = Registrar(metric="mind", quality="accurate", refine_options=RefineOptions(max_seconds=30.0))
    assert registrar.metric == {"affine": "mind", "refine": "mind"}
    refine_options = registrar.stage("refine").options
    assert refine_options.max_seconds == 30.0 and len(refine_options.levels) == 4  # the preset's levels kept
    assert Registrar().metric == {"affine": "ncc", "refine": "ncc"}
    mixed = Registrar(affine_options=AffineOptions(metric="mind"))
    assert mixed.metric == {"affine": "mind", "refine": "ncc"}
    with pytest.raises(ValueError, match=r"metric must be one of \['ncc', 'mind'\], got 'nmi'"):
        Registrar(metric="nmi")
    with pytest.raises(ValueError, match="disagree"):
        Registrar(metric="mind", refine_options=RefineOptions(metric="ncc"))
    with pytest.raises(ValueError, match="refine metric must be one of"):
        RefineOptions(metric="ssd")


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def test_cli_metric_and_exclusions(tmp_path, capsys):
    anatomical = nib.load(package_file("nibabel", "tests/data/anatomical.nii"))
    data = np.asarray(anatomical.dataobj, np.float32)
    moving = _save(tmp_path / "moving.nii.gz", data, anatomical.affine)
    lesion = np.zeros(data.shape, np.uint8)
    lesion[10:14, 15:20, 8:12] = 1
    exclude = _save(tmp_path / "lesion.nii.gz", lesion, anatomical.affine)
    args = [str(package_file("nibabel", "tests/data/anatomical.nii")), moving, "--network", "off", "-q"]
    assert cli.register_main([*args, "-o", str(tmp_path / "out"), "--metric", "mind", "--moving-exclude", exclude,
                              "--fixed-exclude", exclude]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metric"] == {"affine": "mind", "refine": "mind"}
    assert report["stages"]["load"]["stats"]["moving_exclude"] is True
    assert "mind_after" in report["stages"]["refine"]["stats"]
    # bad values: an unknown metric (usage), a mask on another grid, a mask that excludes all
    with pytest.raises(SystemExit) as usage:
        cli.register_main([*args, "-o", str(tmp_path / "a"), "--metric", "nmi"])
    assert usage.value.code == 2
    other = _save(tmp_path / "other.nii.gz", lesion[:-1], anatomical.affine)
    assert cli.register_main([*args, "-o", str(tmp_path / "b"), "--moving-exclude", other]) == 1
    assert "moving exclusion mask must have the shape" in capsys.readouterr().err
    everything = _save(tmp_path / "all.nii.gz", np.ones(data.shape, np.uint8), anatomical.affine)
    assert cli.register_main([*args, "-o", str(tmp_path / "c"), "--fixed-exclude", everything]) == 1
    assert "excludes every voxel" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_default_metric_output_equals_explicit_ncc(brain):
    """metric=None (the default) and metric="ncc" are one registration, byte for byte."""
    image = (brain, np.diag([4.0, 4.0, 4.0, 1.0]))
    moving = (np.ascontiguousarray(ops.warp(brain[None], _smooth_field(10, 1.5))[0]), image[1])
    default = Registrar(network="off").register(image, moving)
    explicit = Registrar(network="off", metric="ncc").register(image, moving)
    for name in ("warped", "jacobian"):
        np.testing.assert_array_equal(np.asarray(getattr(default, name).dataobj),
                                      np.asarray(getattr(explicit, name).dataobj))
    np.testing.assert_array_equal(default.forward_field[0], explicit.forward_field[0])
    assert default.stats["metric"] == {"affine": "ncc", "refine": "ncc"}
    assert "ncc_after" in default.stats["stages"]["refine"]["stats"]


# -------------------------------------------------------------------------------- real contrasts

def _spm(member):
    from training.data import SPM_ARCHIVE, load_image

    try:
        return load_image((*SPM_ARCHIVE, f"fsroot/_spm/cleaned/spm/{member}"))
    except Exception as error:  # the data package is missing
        pytest.skip(f"spm-runtime is needed: {error}")


def test_mind_registers_t2_onto_t1_where_ncc_fails_and_ncc_warns():
    """SPM's avg152T2 under a known rigid misplacement onto avg152T1 (one grid, so the truth is
    known): registered with MIND, the map is within ~1 mm of the truth in the brain; with NCC
    far off, and that registration warns that the contrasts differ."""
    fixed, moving = _spm("canonical/avg152T1.nii"), _spm("canonical/avg152T2.nii")
    truth = np.eye(4)
    truth[:3, :3] = affine.rotation_matrix(np.radians([12.0, -10.0, 11.0]))
    centre = fixed.affine[:3, :3] @ ((np.array(fixed.shape) - 1) / 2) + fixed.affine[:3, 3]
    truth[:3, 3] = centre + np.array([12.0, -11.0, 13.0]) - truth[:3, :3] @ centre
    moved = nib.Nifti1Image(np.asarray(moving.dataobj), truth @ moving.affine)
    data = np.asarray(fixed.dataobj, np.float32)
    brain = data > np.percentile(data, 70)
    points = np.argwhere(brain) @ fixed.affine[:3, :3].T + fixed.affine[:3, 3]
    errors = {}
    for metric in ("ncc", "mind"):
        result = Registrar(metric=metric).register(fixed, moved)
        mapped = points + np.moveaxis(result.forward_ras, 0, -1)[brain]
        errors[metric] = float(np.linalg.norm(mapped - (points @ truth[:3, :3].T + truth[:3, 3]), axis=1).mean())
        assert bool(result.stats.get("warnings")) == (metric == "ncc")
        assert result.stats["contrast_check"]["differ"]
        # local NCC of a T2 and a T1 says nothing of their alignment: the flag does not judge it
        assert not any("local NCC" in reason for reason in result.stats["flag_reasons"])
    assert errors["mind"] < 2.0 and errors["ncc"] > 3 * errors["mind"]


def test_batch_takes_the_metric_and_refuses_unknown_ones(tmp_path):
    from smgic_rt.batch import register_many
    from smgic_rt.batch.cli import main as batch_main

    anatomical = str(package_file("nibabel", "tests/data/anatomical.nii"))
    with pytest.raises(ValueError, match=r"metric must be one of \['ncc', 'mind'\], got 'nmi'"):
        register_many([(anatomical, anatomical)], tmp_path / "out", metric="nmi")
    assert not (tmp_path / "out").exists()  # refused before any work
    table = tmp_path / "pairs.csv"
    table.write_text(f"fixed,moving,moving_exclude\n{anatomical},{anatomical},\n")
    with pytest.raises(SystemExit) as usage:
        batch_main([str(table), "-o", str(tmp_path / "out"), "--metric", "nmi"])
    assert usage.value.code == 2
