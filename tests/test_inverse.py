"""The written inverse as the numerical inverse of the forward map (`ops.invert_displacement`):
an analytic smooth field whose inverse is checked by composition, on its own lattice and on a
rotated, shifted, finer one (as the inverse field's lattice lies in the moving image's world)."""

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from smgic_rt.geometry import ops
from smgic_rt.pipeline import FieldsOptions

SHAPE = (30, 34, 26)
WAVELENGTH = 16.0  # voxels
AMPLITUDE = 1.6  # voxels: the largest slope is 2 pi 1.6 / 16 = 0.63, invertible


def sinusoid(points):
    """A smooth displacement (3, ...) at voxel `points` (3, ...): each component a product of
    sines of the other two coordinates."""
    x, y, z = points
    k = 2 * np.pi / WAVELENGTH
    return AMPLITUDE * np.stack([np.sin(k * y + 0.3) * np.cos(k * z), np.sin(k * z + 1.1) * np.cos(k * x),
                                 np.sin(k * x + 2.0) * np.cos(k * y)])


@pytest.fixture(scope="module")
def forward():
    return np.ascontiguousarray(sinusoid(np.indices(SHAPE).astype(np.float64)), dtype=np.float32)


def trilinear(field, points):
    """`field` (3, X, Y, Z) read at `points` (3, n) with scipy: border padding, as ops does."""
    return np.stack([map_coordinates(channel.astype(np.float64), points, order=1, mode="nearest")
                     for channel in field])


def test_polish_inverts_an_analytic_field_on_its_own_lattice(forward):
    crude = np.ascontiguousarray(-forward)  # the first-order inverse, off by up to ~AMPLITUDE * slope
    polished = ops.invert_displacement(forward, crude.copy(), tolerance=1e-4, max_iterations=20)
    assert 1 <= polished.iterations <= 20
    assert polished.residual_p999 <= 1e-4
    w = polished.displacement
    assert w.shape == forward.shape and w.dtype == np.float32
    # phi(psi(x)) - x by the composition kernel, i.e. independently of the polish's own sums
    before = np.sqrt((ops.compose(forward, crude) ** 2).sum(axis=0))
    after = np.sqrt((ops.compose(forward, w) ** 2).sum(axis=0))
    assert before.max() > 0.3
    assert np.percentile(after, 99.9) <= 1.1e-4 and after.max() <= polished.residual_max + 1e-6
    # psi(phi(x)) - x between the nodes, at random points away from the border: what remains is
    # the trilinear reading of a curved inverse between exact nodes, a fraction of the start's
    rng = np.random.default_rng(0)
    points = rng.uniform(4, np.array(SHAPE) - 5, (4000, 3)).T
    mapped = points + trilinear(forward, points)
    error = np.linalg.norm(mapped + trilinear(w, mapped) - points, axis=0)
    crude_error = np.linalg.norm(mapped + trilinear(crude, mapped) - points, axis=0)
    assert np.median(error) < 0.1 * np.median(crude_error) and error.max() < 0.2 * crude_error.max(), \
        (np.percentile(error, [50, 100]), np.percentile(crude_error, [50, 100]))


def test_polish_on_another_lattice_inverts_at_its_nodes(forward):
    # A lattice rotated by 20 degrees about z, at 0.7 of u's voxel, shifted into u's grid.
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    lattice = np.hstack([0.7 * rotation, [[12.0], [3.0], [4.0]]])
    shape = (20, 24, 22)
    nodes = lattice[:, :3] @ np.indices(shape).reshape(3, -1) + lattice[:, 3:]
    initial = np.ascontiguousarray((-trilinear(forward, nodes)).reshape(3, *shape), dtype=np.float32)
    polished = ops.invert_displacement(forward, initial, lattice, spacing=(2.0, 2.0, 2.0), tolerance=1e-3,
                                       max_iterations=20)
    w = polished.displacement.reshape(3, -1).astype(np.float64)
    residual_mm = 2.0 * np.linalg.norm(w + trilinear(forward, nodes + w), axis=0)
    assert polished.iterations >= 1 and polished.residual_p999 <= 1e-3
    assert np.percentile(residual_mm, 99.9) <= 1e-3 + 1e-5
    assert abs(residual_mm.max() - polished.residual_max) < 1e-4


def test_no_iterations_returns_the_start_with_its_residual(forward):
    start = np.ascontiguousarray(-forward)
    result = ops.invert_displacement(forward, start.copy(), max_iterations=0)
    np.testing.assert_array_equal(result.displacement, start)
    assert result.iterations == 0
    assert result.residual_max == pytest.approx(float(np.sqrt((ops.compose(forward, start) ** 2).sum(axis=0)).max()),
                                                rel=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda u: ops.invert_displacement(u, u[:2]), "initial must have 3 channels"),
    (lambda u: ops.invert_displacement(u[None], u), r"u must have shape \(3, X, Y, Z\)"),
    (lambda u: ops.invert_displacement(u, u, max_iterations=-1), "max_iterations must be an int >= 0"),
    (lambda u: FieldsOptions(inverse_iterations=1.5), "inverse_iterations must be an int"),
    (lambda u: FieldsOptions(inverse_tolerance_mm=-0.1), "inverse_tolerance_mm must be"),
])
def test_bad_arguments_are_refused_by_name(forward, call, match):
    with pytest.raises(ValueError, match=match):
        call(forward)
