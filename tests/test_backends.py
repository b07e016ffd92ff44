"""Backends and the level loop: names, validation, onnxruntime vs the torch model per level, and
the full network through the bundle (onnxruntime CPU + _C between levels) vs the torch model."""

import numpy as np
import pytest

from smgic_rt import backends


torch = pytest.importorskip("torch")

import export  # noqa: E402
from export.bundle_export import relative_error  # noqa: E402
from export.model_adapter import record_levels  # noqa: E402
from export.pair import load_parity_pair  # noqa: E402
from smgic_rt.models.bundle import load_bundle  # noqa: E402
from smgic_rt.methods.network import predict_velocity  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(export.write_random_bundle(tmp_path_factory.mktemp("backends") / "b", seed=5))


@pytest.fixture(scope="module")
def pair(bundle):
    fixed, moving, _ = load_parity_pair(bundle.grid_shape, bundle.spacing)
    return fixed, moving


@pytest.fixture(scope="module")
def ort(bundle):
    return backends.create("onnxruntime", bundle, providers=["CPUExecutionProvider"], threads=1)


@pytest.fixture(scope="module")
def reference(bundle):
    return backends.create("torch", bundle, threads=1)


def test_onnxruntime_provider_validation(bundle):
    with pytest.raises(ValueError, match="unknown onnxruntime providers.*CPUExecutionProvider"):
        backends.create("onnxruntime", bundle, providers=["FooExecutionProvider"])
    with pytest.raises(ValueError, match="list of provider names"):
        backends.create("onnxruntime", bundle, providers="CPUExecutionProvider")


def test_auto_picks_a_working_backend(bundle):
    backend = backends.create("auto", bundle)
    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except (ImportError, OSError):
        has_trt = False
    from smgic_rt.geometry import ops

    if not has_trt and ops.cuda_available() and _torch_cuda():
        assert backend.name == "torch" and backend.device == "cuda"  # a GPU machine without TensorRT
    elif not has_trt:
        assert backend.name == "onnxruntime"
        assert backend.active_providers[-1] == "CPUExecutionProvider"


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.cuda
@pytest.mark.skipif(not _torch_cuda(), reason="needs a CUDA build of PyTorch")
def test_torch_backend_on_cuda_matches_the_cpu_and_keeps_arrays_on_the_device(bundle, pair, reference):
    import torch

    gpu = backends.create("torch", bundle, device="cuda")
    assert gpu.device == "cuda" and gpu.array_module == "torch"
    velocity_gpu, timings = predict_velocity(gpu, bundle, *pair)
    velocity_cpu, _ = predict_velocity(reference, bundle, *pair)
    assert np.max(np.abs(velocity_gpu - velocity_cpu)) < 1e-3 * max(1.0, float(np.abs(velocity_cpu).max()))
    assert set(timings) >= {"level1", "level4", "between_levels"}
    shapes = [tuple(int(n) for n in bundle.level_entry(1)["inputs"][name][1:]) for name in ("fixed", "moving", "velocity")]
    tensors = [torch.zeros((1, *shape), device="cuda") for shape in shapes]
    assert gpu.run_level(1, *tensors).is_cuda  # the output stays on the GPU
    with pytest.raises(TypeError, match="torch CUDA tensors"):
        gpu.run_level(1, *(t.cpu().numpy() for t in tensors))


def test_run_level_validates_inputs(ort, bundle):
    entry = bundle.level_entry(2)
    shape = lambda name: tuple([1] + entry["inputs"][name][1:])  # noqa: E731
    good = [np.zeros(shape(n), np.float32) for n in ("fixed", "moving", "velocity")]
    with pytest.raises(ValueError, match="level 2 input 'moving' must have shape"):
        ort.run_level(2, good[0], good[0][:, :, :-1], good[2])
    with pytest.raises(ValueError, match="must be float32, got float64"):
        ort.run_level(2, good[0].astype(np.float64), good[1], good[2])
    with pytest.raises(ValueError, match="level must be an int in 1..4"):
        ort.run_level(5, *good)
    # Batch 2 works through the dynamic batch axis.
    batched = [np.concatenate([a, a]) for a in good]
    assert ort.run_level(2, *batched).shape == (2,) + shape("velocity")[1:]


def test_onnxruntime_matches_torch_per_level(ort, reference, bundle, pair):
    with torch.no_grad():
        records = record_levels(reference.model, *pair)
    for level, record in enumerate(records, start=1):
        ort_out = ort.run_level(level, *record["inputs"])
        torch_out = reference.run_level(level, *record["inputs"])
        assert relative_error(torch_out, record["output"]) < 1e-6
        assert relative_error(ort_out, record["output"]) < 1e-4, level


def test_full_network_matches_torch_displacement(ort, reference, bundle, pair):
    """End to end on a real pair: onnxruntime levels with _C between them vs the torch model."""
    from smgic_rt.geometry import ops

    from export.model_adapter import torch_final_displacement

    fixed, moving = pair
    velocity, timings = predict_velocity(ort, bundle, fixed, moving)
    assert velocity.shape == (3,) + bundle.grid_shape and velocity.dtype == np.float32
    assert set(timings) >= {"level1", "level2", "level3", "level4", "between_levels", "total"}
    displacement = ops.integrate_velocity(velocity, bundle.steps)
    with torch.no_grad():
        expected = torch_final_displacement(reference.model, fixed, moving)
    assert np.max(np.abs(expected)) > 0.05  # a real deformation, not the identity
    error = np.max(np.abs(displacement - expected))
    assert error < 0.05, error
    # The torch backend through the same numpy loop agrees too.
    velocity_torch, _ = predict_velocity(reference, bundle, fixed, moving)
    assert np.max(np.abs(velocity_torch - velocity)) < 1e-3


def test_predict_velocity_validates_images(ort, bundle, pair):
    fixed, moving = pair
    with pytest.raises(ValueError, match="moving must be a model-grid array of shape"):
        predict_velocity(ort, bundle, fixed, moving[:-1])
    with pytest.raises(ValueError, match="fixed must be float32"):
        predict_velocity(ort, bundle, fixed.astype(np.float64), moving)


def _have_tensorrt_gpu():
    try:
        from smgic_rt.backends.tensorrt import runtime_platform

        runtime_platform()
        return True
    except Exception:
        return False


@pytest.mark.cuda
@pytest.mark.skipif(not _have_tensorrt_gpu(), reason="needs TensorRT and a CUDA GPU")
def test_tensorrt_backend_matches_onnxruntime(bundle, pair, ort, tmp_path):
    trt_backend = backends.create("tensorrt", bundle, engine_dir=tmp_path)
    assert trt_backend.rebuilt_levels == [1, 2, 3, 4]
    velocity_trt, _ = predict_velocity(trt_backend, bundle, *pair)
    velocity_ort, _ = predict_velocity(ort, bundle, *pair)
    assert np.max(np.abs(velocity_trt - velocity_ort)) < 1e-2
    # Second start loads the cached engines (headers match) instead of rebuilding.
    again = backends.create("tensorrt", bundle, engine_dir=tmp_path)
    assert again.rebuilt_levels == []
