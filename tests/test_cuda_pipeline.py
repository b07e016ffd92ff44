"""The refinement on the GPU is the CPU's code with cupy arrays (issue 19). Marked `cuda`:
skipped by conftest.py unless `_C` has CUDA and a GPU answers; `.ci/device_check.py`
runs it. No nibabel or data packages (the GPU machine has numpy, cupy and torch only).

The pair is a smooth random image and the same image pushed through a smooth random field, so
the refinement has a real deformation to find. Float sums are reduced in other orders on the
GPU, so a line search could in principle take another branch; with these few iterations it
does not, and both runs must agree on every accepted step and on the result.
"""

import numpy as np
import pytest

from smgic_rt.geometry import ops
from smgic_rt.methods.refine import Level, RefineOptions, objective, refine_velocity

pytestmark = pytest.mark.cuda

SHAPE = (24, 28, 20)


def _smooth(rng, shape, amplitude, channels, coarse=(4, 5, 4)):
    noise = rng.standard_normal((channels, *coarse)).astype(np.float32)
    scale = [(c - 1) / max(n - 1, 1) for c, n in zip(coarse, shape)]
    field = ops.affine_resample(noise, np.diag(scale + [1.0]), shape, padding="border")
    return np.ascontiguousarray(amplitude * field / np.abs(field).max(), dtype=np.float32)


def _pair():
    rng = np.random.default_rng(3)
    fixed = np.clip(_smooth(rng, SHAPE, 0.5, 1, coarse=(7, 8, 6))[0] + 0.5, 0, 1)
    shift = _smooth(rng, SHAPE, 1.5, 3)
    moving = ops.warp(np.ascontiguousarray(fixed[None]), shift, padding="border")[0]
    return np.ascontiguousarray(fixed), np.ascontiguousarray(moving)


def test_refinement_on_cupy_arrays_matches_the_cpu():
    cupy = pytest.importorskip("cupy")
    fixed, moving = _pair()
    options = RefineOptions(levels=(Level(2, 6), Level(1, 4)))
    on_cpu = refine_velocity(fixed, moving, options=options)
    stream = cupy.cuda.Stream(non_blocking=True)  # not the default stream: ordering must be explicit
    with stream:
        on_gpu = refine_velocity(cupy.asarray(fixed), cupy.asarray(moving), options=options)
        velocity = cupy.asnumpy(on_gpu.velocity)
    assert isinstance(on_gpu.velocity, cupy.ndarray)
    assert on_cpu.stats["objective_after"] < on_cpu.stats["objective_before"]  # it found something
    for cpu_level, gpu_level in zip(on_cpu.stats["levels"], on_gpu.stats["levels"]):
        assert gpu_level["accepted"] == cpu_level["accepted"]
    assert on_gpu.stats["objective_after"] == pytest.approx(on_cpu.stats["objective_after"], abs=1e-4)
    assert np.abs(velocity - on_cpu.velocity).max() < 1e-2  # voxels
    assert objective(fixed, moving, velocity, options) == pytest.approx(on_cpu.stats["objective_after"], abs=1e-4)


def test_mixed_host_and_device_inputs_are_refused():
    cupy = pytest.importorskip("cupy")
    fixed, moving = _pair()
    with pytest.raises(TypeError, match="all numpy"):
        refine_velocity(cupy.asarray(fixed), moving)


def _head_pair():
    """A smooth 'head' (1.5 mm, oblique-free) and the same head moved by a rotation and a
    smooth deformation, each with an affine; labels are the fixed image's intensity bands."""
    rng = np.random.default_rng(5)
    shape = (44, 52, 40)
    body = _smooth(rng, shape, 0.5, 1, coarse=(9, 10, 8))[0] + 0.5
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = np.ascontiguousarray(np.where(x ** 2 + y ** 2 + z ** 2 < 0.8, body, 0.0), dtype=np.float32)
    shift = _smooth(rng, shape, 2.0, 3)
    moved = ops.warp(head[None], shift, padding="zeros")[0]
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = -1.5 * (np.asarray(shape) - 1) / 2
    moving_affine = affine.copy()
    moving_affine[:3, 3] += (3.0, -2.0, 1.5)
    return (head, affine), (np.ascontiguousarray(moved), moving_affine)


def test_the_whole_pair_on_the_gpu_matches_the_cpu():
    cupy = pytest.importorskip("cupy")
    from smgic_rt import Registrar

    fixed, moving = _head_pair()
    results = {}
    for device in ("cpu", "cuda"):
        registrar = Registrar(device=device, network="off", backend="onnxruntime")
        results[device] = registrar.register(fixed, moving)
    cpu, gpu = results["cpu"], results["cuda"]
    for name in ("warped", "jacobian"):
        a, b = (np.asarray(getattr(r, name).dataobj) for r in (cpu, gpu))
        assert np.abs(a - b).max() < 2e-2, name
    for name in ("forward_field", "inverse_field"):
        (a, affine_a), (b, affine_b) = getattr(cpu, name), getattr(gpu, name)
        assert isinstance(b, np.ndarray) and np.allclose(affine_a, affine_b)
        assert np.abs(a - b).max() < 0.05, name  # mm
    for key in ("folding_fraction", "inverse_consistency_voxels_mean"):
        assert gpu.stats[key] == pytest.approx(cpu.stats[key], abs=1e-3)
    refine_cpu, refine_gpu = (r.stats["stages"]["refine"]["stats"] for r in (cpu, gpu))
    assert refine_gpu["objective_after"] == pytest.approx(refine_cpu["objective_after"], abs=1e-4)
