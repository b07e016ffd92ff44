"""The CUDA path on explicit streams, against its CPU twins (issue 19). Marked `cuda`: skipped by
conftest.py unless `_C` has CUDA and a GPU answers; `.ci/device_check.py` runs them.

No nibabel, no data packages: the GPU machine has numpy, cupy and torch only. Volumes are smooth
random fields (coarse noise upsampled by our own CPU kernel), so every kernel sees realistic,
non-trivial input.

What would catch a launch on the wrong stream: every kernel is captured into a CUDA graph on a
non-blocking cupy stream. A launch on any other stream would run at once during the capture (or
break it) instead of being recorded, so the output would be complete before the graph is
launched and missing after; the test checks both.
"""

import threading

import numpy as np
import pytest

from smgic_rt import _C
from smgic_rt.geometry import ops
from smgic_rt.geometry.filters import box_mean, gaussian_taps

pytestmark = pytest.mark.cuda

TOL = 1e-4


def _cupy():
    return pytest.importorskip("cupy")


def _smooth(rng, shape, amplitude, channels=3, coarse=(4, 5, 4)):
    """A smooth random field: coarse noise resampled trilinearly (CPU kernel) onto `shape`."""
    noise = rng.standard_normal((channels, *coarse)).astype(np.float32)
    scale = [(c - 1) / max(n - 1, 1) for c, n in zip(coarse, shape)]
    field = ops.affine_resample(noise, np.diag(scale + [1.0]), shape, padding="border")
    return np.ascontiguousarray(amplitude * field / np.abs(field).max(), dtype=np.float32)


SHAPE = (21, 26, 19)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    image = _smooth(rng, SHAPE, 1.0, channels=2) + 1.0
    velocity = _smooth(rng, SHAPE, 3.0)
    other = _smooth(rng, SHAPE, 2.0)
    labels = np.round(_smooth(rng, SHAPE, 3.0, channels=1) + 3.0).astype(np.float32)
    return image, velocity, other, labels


def _kernel_cases(xp, to_device):
    """name -> (function of device arrays, same function of numpy arrays); one per kernel."""
    image, velocity, other, labels = _inputs()
    volume = np.ascontiguousarray(image[0])
    means = box_mean(np.stack([volume, volume * 0.5 + 0.2, volume ** 2, (volume * 0.5 + 0.2) ** 2,
                               volume * (volume * 0.5 + 0.2)]), 1)
    matrix = np.array([[0.95, 0.05, 0.0, 1.0], [-0.05, 1.05, 0.02, -0.5], [0.0, 0.01, 1.0, 0.25]])
    d = {name: to_device(a) for name, a in dict(image=image, velocity=velocity, other=other, labels=labels,
                                                  volume=volume, means=means).items()}
    moving = np.ascontiguousarray(volume * 0.5 + 0.2)
    d["moving"] = to_device(moving)
    h = dict(image=image, velocity=velocity, other=other, labels=labels, volume=volume, means=means, moving=moving)
    even = (slice(None), slice(0, SHAPE[0] // 2 * 2), slice(0, SHAPE[1] // 2 * 2), slice(0, SHAPE[2] // 2 * 2))
    d["even"] = to_device(np.ascontiguousarray(image[even]))
    h["even"] = np.ascontiguousarray(image[even])

    def both(function):
        return function(d), function(h)

    return {
        "warp linear zeros": both(lambda a: ops.warp(a["image"], a["velocity"])),
        "warp linear border": both(lambda a: ops.warp(a["image"], a["velocity"], padding="border")),
        "warp nearest": both(lambda a: ops.warp(a["image"], a["velocity"], interpolation="nearest")),
        "warp label": both(lambda a: ops.warp(a["labels"], a["velocity"], interpolation="label")),
        "affine_resample": both(lambda a: ops.affine_resample(a["image"], matrix, (17, 22, 20))),
        "integrate_velocity": both(lambda a: ops.integrate_velocity(a["velocity"])),
        "integrate_velocity 0 steps": both(lambda a: ops.integrate_velocity(a["velocity"], steps=0)),
        "compose": both(lambda a: ops.compose(a["velocity"], a["other"])),
        "upsample_field": both(lambda a: ops.upsample_field(a["velocity"], (40, 50, 37))),
        "downsample_haar": both(lambda a: ops.downsample_haar(a["even"])),
        "affine_field": both(lambda a: ops.affine_field(a["velocity"], matrix, np.eye(3) * 0.5)),
        "jacobian_determinant": both(lambda a: ops.jacobian_determinant(a["velocity"])),
        "filter_axis gaussian": both(lambda a: ops.filter_axis(a["image"], 1, gaussian_taps(1.5), False)),
        "filter_axis box": both(lambda a: ops.filter_axis(a["image"], 2, [1.0] * 5, True)),
        "lncc": both(lambda a: ops.lncc(a["volume"], a["moving"], a["means"], 1e-3)),
        "image_gradient": both(lambda a: ops.image_gradient(a["volume"])),
    }


def _compare(name, got, expected, to_host):
    if isinstance(expected, tuple):
        for g, e in zip(got, expected):
            _compare(name, g, e, to_host)
        return
    got = to_host(got)
    assert got.shape == expected.shape, name
    if "nearest" in name or "label" in name:
        # Exact but for rare ties that device FMA rounds the other way.
        assert np.mean(got != expected) < 1e-3, name
    else:
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=TOL, err_msg=name)


def test_every_kernel_on_a_non_blocking_cupy_stream_matches_cpu():
    cupy = _cupy()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        cases = _kernel_cases(cupy, cupy.asarray)
    stream.synchronize()
    for name, (got, expected) in cases.items():
        _compare(name, got, expected, cupy.asnumpy)


def test_every_kernel_launches_on_the_callers_stream_graph_capture():
    cupy = _cupy()
    stream = cupy.cuda.Stream(non_blocking=True)
    image, velocity, other, _ = _inputs(1)
    with stream:
        a = {"image": cupy.asarray(image), "velocity": cupy.asarray(velocity), "other": cupy.asarray(other)}
        calls = {
            "warp": lambda: ops.warp(a["image"], a["velocity"]),
            "integrate_velocity": lambda: ops.integrate_velocity(a["velocity"]),
            "compose": lambda: ops.compose(a["velocity"], a["other"]),
            "jacobian_determinant": lambda: ops.jacobian_determinant(a["velocity"]),
            "filter_axis": lambda: ops.filter_axis(a["image"], 0, gaussian_taps(1.0), False),
            "image_gradient": lambda: ops.image_gradient(a["image"][0]),
        }
        warm = {name: call() for name, call in calls.items()}  # kept alive: their blocks are not reused
        expected = {name: cupy.asnumpy(value) for name, value in warm.items()}
        # Free blocks of every output size, filled with a poison value, for the captured calls'
        # allocations to come from (so no block still holding a result can be handed out).
        for value in warm.values():
            spares = [cupy.empty_like(value) for _ in range(3)]
            for spare in spares:
                spare.fill(-7.0)
            del spares
        stream.synchronize()
        mode = getattr(cupy.cuda.runtime, "streamCaptureModeRelaxed", None)
        for name, call in calls.items():
            if mode is None:
                stream.begin_capture()
            else:
                stream.begin_capture(mode=mode)
            out = call()
            graph = stream.end_capture()
            cupy.cuda.Device().synchronize()
            before = cupy.asnumpy(out)
            assert not np.allclose(before, expected[name]), f"{name} ran outside the captured stream"
            graph.launch(stream)
            stream.synchronize()
            np.testing.assert_allclose(cupy.asnumpy(out), expected[name], atol=0, rtol=0, err_msg=name)


def test_every_kernel_on_a_torch_side_stream_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        cases = _kernel_cases(torch, lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda())
    side.synchronize()
    for name, (got, expected) in cases.items():
        _compare(name, got, expected, lambda t: t.cpu().numpy())


def test_torch_graph_capture_records_the_kernels():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    _, velocity, other, _ = _inputs(2)
    v = torch.from_numpy(velocity).cuda()
    w = torch.from_numpy(other).cuda()
    expected = ops.compose(velocity, other)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ops.compose(v, w)  # warm-up outside the capture, as torch asks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.compose(v, w)
    graph.replay()
    torch.cuda.synchronize()
    np.testing.assert_allclose(out.cpu().numpy(), expected, atol=TOL)


def test_registration_kernels_match_cpu_affine_sums_both_modes():
    cupy = _cupy()
    image, _, _, _ = _inputs(3)
    fixed = np.ascontiguousarray(image[0] / image[0].max())
    moving = np.ascontiguousarray(ops.filter_axis(fixed[None], 0, gaussian_taps(1.0), False)[0])
    mask = (fixed > 0.5 * fixed.mean()).astype(np.float32)
    matrix = np.array([[0.98, 0.03, 0.0, 0.7], [-0.03, 1.02, 0.01, -0.4], [0.0, 0.02, 1.0, 0.2]])
    cpu = ops.affine_ncc_sums(fixed, mask, moving, matrix)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        f, m, mv = cupy.asarray(fixed), cupy.asarray(mask), cupy.asarray(moving)
        workspace = cupy.empty(_C.affine_ncc_workspace_size(fixed.size), cupy.float64)
        out = cupy.empty(ops.AFFINE_SUMS, cupy.float64)
        first = ops.affine_ncc_sums(f, m, mv, matrix, workspace=workspace, out=out)
        assert first is out
        device_sums = cupy.asnumpy(out)
        host_list = np.asarray(_C.affine_ncc_sums_cuda(f.data.ptr, m.data.ptr, fixed.shape, mv.data.ptr,
                                                       moving.shape, matrix.ravel().tolist(),
                                                       stream=stream.ptr))
        again = cupy.asnumpy(ops.affine_ncc_sums(f, m, mv, matrix, workspace=workspace, out=out))
    np.testing.assert_allclose(device_sums, cpu, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(host_list, device_sums, rtol=1e-12, atol=0)
    assert np.array_equal(again, device_sums)  # fixed-order block sums: same every run


def test_two_streams_in_two_threads_get_their_own_filter_taps():
    """The old `__constant__ c_taps` was shared by every host thread: one thread's taps could be
    read by the other's kernel. Taps are now kernel arguments."""
    cupy = _cupy()
    image, _, _, _ = _inputs(4)
    sigmas = {0: 0.7, 1: 2.5}
    expected = {k: ops.filter_axis(image, 0, gaussian_taps(s), False) for k, s in sigmas.items()}
    errors, barrier = [], threading.Barrier(2)

    def worker(index):
        try:
            stream = cupy.cuda.Stream(non_blocking=True)
            with stream:
                source = cupy.asarray(image)
                barrier.wait()
                outs = [ops.filter_axis(source, 0, gaussian_taps(sigmas[index]), False) for _ in range(50)]
                stream.synchronize()
            for out in outs:
                np.testing.assert_allclose(cupy.asnumpy(out), expected[index], atol=TOL)
        except Exception as error:  # handed to the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_a_kernel_waits_for_an_input_queued_on_another_stream():
    """A torch image on a torch side stream and a cupy field still being written on a cupy
    stream: the warp runs on torch's stream after an event wait on the cupy stream."""
    cupy = _cupy()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    spin = cupy.RawKernel(r"""
    extern "C" __global__ void spin_then_copy(const float* src, float* dst, long long n, long long cycles) {
        long long start = clock64();
        while (clock64() - start < cycles) {}
        for (long long i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
    }""", "spin_then_copy")
    image, velocity, _, _ = _inputs(5)
    expected = ops.warp(image, velocity)
    producer = cupy.cuda.Stream(non_blocking=True)
    with producer:
        source = cupy.asarray(velocity)
        field = cupy.zeros_like(source)
        producer.synchronize()
        spin((1,), (256,), (source, field, np.int64(source.size), np.int64(200_000_000)))  # ~0.1 s
        consumer = torch.cuda.Stream()
        with torch.cuda.stream(consumer):
            timage = torch.from_numpy(image).cuda()
            consumer.synchronize()
            out = ops.warp(timage, field)
        consumer.synchronize()
    np.testing.assert_allclose(out.cpu().numpy(), expected, atol=TOL)


def test_arrays_on_two_devices_are_refused():
    cupy = _cupy()
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    with cupy.cuda.Device(0):
        image = cupy.zeros((1, 4, 4, 4), cupy.float32)
    with cupy.cuda.Device(1):
        field = cupy.zeros((3, 4, 4, 4), cupy.float32)
    with pytest.raises(ValueError, match="one CUDA device.*cuda:0.*cuda:1"):
        ops.warp(image, field)


def test_kernels_on_a_non_current_device_run_there():
    cupy = _cupy()
    count = cupy.cuda.runtime.getDeviceCount()
    if count < 2:
        pytest.skip("needs two GPUs")
    _, velocity, _, _ = _inputs(6)
    with cupy.cuda.Device(1):
        v = cupy.asarray(velocity)
    with cupy.cuda.Device(0):
        out = ops.integrate_velocity(v)
        assert out.device.id == 1
        assert cupy.cuda.runtime.getDevice() == 0  # the guard restored the caller's device
    np.testing.assert_allclose(cupy.asnumpy(out), ops.integrate_velocity(velocity), atol=TOL)


def test_device_finite_check_is_opt_in():
    cupy = _cupy()
    bad = cupy.full((3, 4, 4, 4), cupy.nan, cupy.float32)
    ops.integrate_velocity(bad)  # no reduction, no host wait in the hot path
    with ops.check_device_finite():
        with pytest.raises(ValueError, match="finite"):
            ops.integrate_velocity(bad)


class _HostMemoryPosingAsDevice:
    """A CUDA Array Interface that points at host memory: what a buggy producer might hand us."""

    def __init__(self, array):
        self._array = array
        self.__cuda_array_interface__ = {"shape": array.shape, "typestr": "<f4", "data": (array.ctypes.data, False),
                                         "strides": None, "version": 3, "stream": None}


def test_errors_name_what_failed():
    _cupy()
    host = np.zeros((3, 4, 4, 4), np.float32)
    with pytest.raises(RuntimeError, match="not device memory"):
        _C.cuda_pointer_device(host.ctypes.data)
    with pytest.raises(TypeError, match="not supported for outputs"):
        ops.integrate_velocity(_HostMemoryPosingAsDevice(host))
