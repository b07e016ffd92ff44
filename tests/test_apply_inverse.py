"""``[F,1]`` in smgic-apply for a displacement field F: the inverse of F itself, solved by Newton
at each point or voxel mapped (`smgic_rt.apply.InverseFieldStep`).

Fields are analytic (a smooth sine displacement with |grad d| < 0.5, an affine displacement,
a folded one), written as ITK displacement NIfTI files through nibabel on an oblique 2 mm grid;
images are nibabel's real T1 (anatomical.nii). References are independent: the affine's
analytic inverse, and scipy's root finder on scipy's own trilinear interpolation of the file.
"""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import apply, cli, io
from smgic_rt.geometry import transforms
from smgic_rt.methods.affine import rotation_matrix

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
SHAPE = (24, 26, 22)


def _grid_affine():
    affine = np.eye(4)
    affine[:3, :3] = rotation_matrix(np.radians([10.0, -5.0, 20.0])) @ np.diag([2.0, 1.8, 2.2])
    affine[:3, 3] = [-20.0, -25.0, -22.0]
    return affine


def _write_field(path, displacement_of, affine=None, shape=SHAPE):
    """The field ``d(x)`` (a function of RAS points (3, ...)) sampled on a grid, as an ITK file."""
    affine = _grid_affine() if affine is None else affine
    world = transforms.world_points(shape, affine)
    transforms.displacement_to_itk_image(displacement_of(world).astype(np.float32), affine).to_filename(str(path))
    return Path(path)


def _sine(x, amplitude=1.0):
    """Smooth, invertible for amplitude 1: its largest derivative is 1.2/7 + 1.2/10 < 0.5."""
    return amplitude * np.stack([1.5 * np.sin(x[1] / 8.0), 2.0 * np.cos(x[2] / 9.0),
                                 1.2 * np.sin(x[0] / 7.0 + x[1] / 10.0)])


def _inside_points(count, seed=0, margin=2.0, shape=SHAPE, affine=None):
    """Random RAS points at least `margin` voxels inside the grid."""
    affine = _grid_affine() if affine is None else affine
    index = np.random.default_rng(seed).uniform(margin, np.array(shape)[:, None] - 1 - margin, (3, count))
    return affine[:3, :3] @ index + affine[:3, 3:]


def test_a_field_then_its_inverse_returns_every_point(tmp_path):
    field = _write_field(tmp_path / "field.nii.gz", _sine)  # no sibling: [F,1] starts from q - d(q)
    points = _inside_points(2000)
    forward = apply.load_chain([str(field)]).map_points(points)
    assert np.linalg.norm(forward - points, axis=0).mean() > 1.0  # the field moves the points
    back = apply.load_chain([f"[{field},1]"]).map_points(forward)
    assert np.linalg.norm(back - points, axis=0).max() < 1e-3
    # and the other way: [F,1] then F
    inverse_first = apply.load_chain([f"[{field},1]", str(field)]).map_points(points)
    assert np.linalg.norm(inverse_first - points, axis=0).max() < 1e-3


def test_inverse_of_a_trilinear_field_file_is_not_exact_but_newton_is(tmp_path):
    """The exact inverse sampled on F's own grid and written as a file (what inverse_warp.nii.gz
    is) misses by far more than 1e-3 mm between its nodes: the tolerance above tells them apart."""
    field = _write_field(tmp_path / "field.nii.gz", lambda x: _sine(x, 2.0))
    step = apply.load_chain([f"[{field},1]"]).steps[0]
    nodes = transforms.world_points(SHAPE, _grid_affine()).reshape(3, -1)
    solved, residual = step.solve(nodes)
    index = np.stack(np.unravel_index(np.arange(nodes.shape[1]), SHAPE))
    border = np.any((index == 0) | (index == np.array(SHAPE)[:, None] - 1), axis=0)  # d ramps to 0 there: folds
    assert residual[~border].max() < apply.INVERSE_TOLERANCE_MM
    sampled = tmp_path / "sampled_inverse.nii.gz"
    transforms.displacement_to_itk_image((solved - nodes).reshape(3, *SHAPE).astype(np.float32),
                                         _grid_affine()).to_filename(str(sampled))
    points = _inside_points(2000, seed=1, margin=4.0)
    forward = apply.load_chain([str(field)]).map_points(points)
    through_file = apply.load_chain([str(sampled)]).map_points(forward)
    through_newton = apply.load_chain([f"[{field},1]"]).map_points(forward)
    assert np.linalg.norm(through_file - points, axis=0).max() > 5e-3
    assert np.linalg.norm(through_newton - points, axis=0).max() < 1e-3


def test_inverse_of_an_affine_displacement_is_the_inverse_matrix(tmp_path):
    """d(x) = (A - I) x + t is trilinear itself: [F,1] must give A^-1 (q - t) inside the grid."""
    matrix = rotation_matrix(np.radians([6.0, -4.0, 9.0])) @ np.diag([1.08, 0.95, 1.03])
    shift = np.array([3.0, -2.0, 1.5])
    field = _write_field(tmp_path / "affine_field.nii.gz",
                         lambda x: np.einsum("ij,j...->i...", matrix - np.eye(3), x) + shift.reshape(3, 1, 1, 1))
    targets = _inside_points(500, seed=2, margin=6.0)
    expected = np.linalg.solve(matrix, targets - shift[:, None])
    mapped = apply.load_chain([f"[{field},1]"]).map_points(targets)
    assert np.abs(mapped - expected).max() < 1e-3


def test_inverse_agrees_with_scipy_root_finding_on_scipy_interpolation(tmp_path):
    scipy_interpolate = pytest.importorskip("scipy.interpolate")
    scipy_optimize = pytest.importorskip("scipy.optimize")
    field = _write_field(tmp_path / "field.nii.gz", _sine)
    displacement, affine = transforms.itk_image_to_displacement(field)
    axes = [np.arange(n, dtype=np.float64) for n in SHAPE]
    interpolators = [scipy_interpolate.RegularGridInterpolator(axes, displacement[c].astype(np.float64))
                     for c in range(3)]
    to_voxels = np.linalg.inv(affine)

    def residual(p, q):
        index = to_voxels[:3, :3] @ p + to_voxels[:3, 3]
        return p + np.array([f(index)[0] for f in interpolators]) - q

    targets = _inside_points(40, seed=3, margin=4.0)
    expected = np.stack([scipy_optimize.fsolve(residual, q, args=(q,), xtol=1e-12) for q in targets.T], axis=1)
    assert np.abs([residual(p, q) for p, q in zip(expected.T, targets.T)]).max() < 1e-6  # scipy converged
    mapped = apply.load_chain([f"[{field},1]"]).map_points(targets)
    assert np.abs(mapped - expected).max() < 1e-3
    assert np.abs(targets - expected).max() > 1.0  # the inverse is far from the identity


def test_the_sibling_file_only_changes_where_newton_starts(tmp_path):
    """warp.nii.gz with an approximate inverse_warp.nii.gz beside it, and the same field alone:
    [F,1] answers alike; the sibling is read as the start (and its start is nearer)."""
    ours, alone = tmp_path / "ours", tmp_path / "alone"
    ours.mkdir()
    alone.mkdir()
    warp = _write_field(ours / "warp.nii.gz", _sine)
    _write_field(ours / "inverse_warp.nii.gz", lambda x: -_sine(x - _sine(x)))  # d^-1 to first order
    shutil.copy(warp, alone / "field.nii.gz")
    with_sibling = apply.load_chain([f"[{warp},1]"]).steps[0]
    without = apply.load_chain([f"[{alone / 'field.nii.gz'},1]"]).steps[0]
    assert with_sibling.start is not None and with_sibling.start.source == str(ours / "inverse_warp.nii.gz")
    assert without.start is None
    targets = _inside_points(1000, seed=4)
    starts = [np.percentile(step.__class__(step.field, step.start, max_steps=0).solve(targets)[1], 50)
              for step in (with_sibling, without)]
    assert starts[0] < starts[1] / 2
    np.testing.assert_allclose(with_sibling.map(targets), without.map(targets), rtol=0, atol=1e-3)
    # inverse_warp.nii.gz's own sibling is warp.nii.gz
    assert apply.load_chain([f"[{ours / 'inverse_warp.nii.gz'},1]"]).steps[0].start.source == str(warp)


def test_image_through_the_inverse_is_read_at_the_newton_points(tmp_path):
    brain = io.load_volume(ANATOMICAL, name="input image")
    field = _write_field(tmp_path / "field.nii.gz", _sine, affine=brain.affine, shape=brain.shape)
    output = tmp_path / "out.nii.gz"
    assert cli.apply_main(["-t", f"[{field},1]", "-r", str(ANATOMICAL), "-i", str(ANATOMICAL), "-o", str(output),
                           "-q"]) == 0
    warped = np.asarray(nib.load(str(output)).dataobj)
    step = apply.load_chain([f"[{field},1]"]).steps[0]
    world = transforms.world_points(brain.shape, brain.affine)
    solved, residual = step.solve(world.reshape(3, -1))
    assert residual.max() < apply.INVERSE_TOLERANCE_MM
    coordinates = np.linalg.inv(brain.affine)[:3, :3] @ solved + np.linalg.inv(brain.affine)[:3, 3:]
    expected = transforms.sample_image(brain.data, coordinates.reshape(3, *brain.shape).astype(np.float32))
    assert np.abs(warped - expected).max() < 1e-3 * np.abs(brain.data).max()
    forward = tmp_path / "forward.nii.gz"
    assert cli.apply_main(["-t", str(field), "-r", str(ANATOMICAL), "-i", str(ANATOMICAL), "-o", str(forward),
                           "-q"]) == 0
    assert np.abs(np.asarray(nib.load(str(forward)).dataobj) - warped).max() > 0.1 * np.abs(brain.data).max()


def test_points_newton_cannot_solve_are_counted_and_reported(tmp_path, capfd):
    """A folded field (|grad d| up to 3.6): the CLI warns with the number of CSV points whose
    residual stays above the tolerance, as InverseFieldStep.solve counts them."""
    field = _write_field(tmp_path / "folded.nii.gz", lambda x: _sine(x, 12.0))
    targets = _inside_points(400, seed=5)
    _, residual = apply.load_chain([f"[{field},1]"]).steps[0].solve(targets)
    missed = int(np.count_nonzero(residual > apply.INVERSE_TOLERANCE_MM))
    assert 0 < missed < len(residual)
    points = tmp_path / "points.csv"
    lines = ["x,y,z"] + [",".join(repr(float(v)) for v in point) for point in targets.T]
    points.write_text("\n".join(lines) + "\n")
    capfd.readouterr()
    assert cli.apply_main(["-t", f"[{field},1]", "-i", str(points), "-o", str(tmp_path / "out.csv"),
                           "--points-space", "ras"]) == 0
    err = capfd.readouterr().err
    assert f"left {missed} point(s)" in err, err
