"""Voxel kernels: warping, scaling and squaring, composition, resizing, Jacobian (``smgic_rt._C``).

Arrays are float32, C-contiguous, shaped ``(C, X, Y, Z)`` or batched ``(N, C, X, Y, Z)``; numpy
arrays run on the CPU (OpenMP, ``OMP_NUM_THREADS`` respected), CUDA device arrays exposing
``__cuda_array_interface__`` (cupy, torch CUDA tensors) run on the GPU when ``_C`` was built with
CUDA, and the result is an array of the same kind. Conventions (``docs/architecture.md``):
displacement channel ``c`` is along voxel axis ``c`` in voxels, ``phi(x) = x + u(x)``, warping
pulls, voxel centres sit at integer coordinates.

CUDA arrays: every kernel is enqueued on the stream the arrays name, never on an implicit one,
and nothing here waits for the GPU. For a torch CUDA tensor that is torch's current stream on
the tensor's device (``torch.cuda.current_stream(device)``); for any other producer (cupy, numba,
...) the ``stream`` field of its ``__cuda_array_interface__`` (v3: 1 = legacy default stream, 2 =
per-thread default stream, any other value a ``cudaStream_t``, absent/None = no ordering needed).
The first input's stream runs the kernel; when another input names a different stream, the
kernel's stream first waits for it on the GPU (an event, as the interface asks of a consumer).
All arrays of one call must be on one device (``ValueError`` otherwise); that device is made
current for the launch and the caller's current device restored. Outputs are allocated by the
inputs' own library (cupy, torch) on its current stream. Device arrays are not checked for NaN
or infinity unless `check_device_finite` is on: that check is a reduction whose result the host
must wait for, i.e. a synchronisation in the hot path.

Example
-------
>>> import numpy as np
>>> from smgic_rt import ops
>>> image = np.random.rand(1, 8, 8, 8).astype(np.float32)
>>> shift = np.zeros((3, 8, 8, 8), np.float32); shift[0] = 1.0
>>> np.allclose(ops.warp(image, shift)[0, :7], image[0, 1:])
True
"""

import contextlib
import contextvars
from typing import NamedTuple

import numpy as np

from .. import _C
from ..options import is_int

__all__ = [
    "warp",
    "affine_resample",
    "affine_resample_field",
    "quasi_interpolant",
    "integrate_velocity",
    "squaring_steps",
    "SQUARING_FIRST_STEP_VOXELS",
    "compose",
    "invert_displacement",
    "InverseDisplacement",
    "upsample_field",
    "downsample_haar",
    "affine_field",
    "jacobian_determinant",
    "filter_axis",
    "lncc",
    "lncc_mean",
    "ncc_exact_derivatives",
    "image_gradient",
    "descent_direction",
    "gradient_energy",
    "affine_ncc_sums",
    "affine_ssd_sums",
    "build_info",
    "cpu_threads",
    "cuda_available",
    "inputs_known_finite",
    "check_device_finite",
    "launch_target",
    "array_namespace",
    "to_host",
    "contiguous_float32",
]

_INTERPOLATION = {"linear": 0, "nearest": 1, "label": 2}
_PADDING = {"zeros": 0, "border": 1}
_MAX_STEPS = 30


def build_info():
    """What the compiled module contains: ``{"cuda": bool, "openmp": bool, "compiler": str, ...}``."""
    return _C.build_info()


@contextlib.contextmanager
def cpu_threads(threads):
    """Inside the block, the CPU kernels that *this* Python thread calls use `threads` OpenMP
    threads (None: leave the count alone). OpenMP keeps the count per calling thread, so other
    threads, e.g. other pairs in a Dask worker, are unaffected; the old count is restored."""
    if threads is None:
        yield
        return
    if not is_int(threads) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    previous = _C.set_num_threads(threads)
    with _restoring(lambda: _C.set_num_threads(previous)):
        yield


def cuda_available():
    """True when ``_C`` was built with CUDA and a driver and a GPU are present."""
    return bool(_C.cuda_available())


# Off by default: see the module docstring. A ContextVar, so that one thread (or task) turning it
# on does not slow down registrations running in other threads.
_DEVICE_FINITE = contextvars.ContextVar("smgic_check_device_finite", default=False)


@contextlib.contextmanager
def check_device_finite(enabled=True):
    """Inside the block, CUDA inputs are checked for NaN/infinity as numpy inputs always are.

    Each check is a device reduction whose result the host waits for (one synchronisation of the
    array's stream per checked input), so it is meant for debugging, not for the hot path.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    token = _DEVICE_FINITE.set(enabled)
    with _restoring(lambda: _DEVICE_FINITE.reset(token)):
        yield


@contextlib.contextmanager
def _restoring(undo):
    """Run `undo` when the block ends, however it ends."""
    try:
        yield
    finally:
        undo()


# ---------------------------------------------------------------- validation helpers

_BUILT_WITH_CUDA = bool(_C.build_info()["cuda"])


def _is_device(array):
    return not isinstance(array, np.ndarray) and hasattr(array, "__cuda_array_interface__")


def array_namespace(*arrays):
    """The array library the stages do their whole-array arithmetic in: numpy for host arrays,
    cupy for CUDA ones (its API is numpy's, so one stage's code serves both). All arrays must
    be of one kind. A torch CUDA tensor is refused here, not copied: hand it over as
    ``cupy.from_dlpack(tensor)`` (no copy) -- the kernels above take torch tensors directly."""
    kinds = {_library(a) if _is_device(a) else "numpy" for a in arrays if a is not None}
    if kinds - {"numpy", "cupy"}:
        raise TypeError(f"the pipeline's arrays must be numpy or cupy, got {sorted(kinds)}; pass a torch CUDA "
                        "tensor as cupy.from_dlpack(tensor)")
    if len(kinds) > 1:
        raise TypeError("arrays of one call must all be numpy (host) or all cupy (device), got both")
    if kinds == {"cupy"}:
        import cupy

        return cupy
    return np


def contiguous_float32(array):
    """`array` as a C-contiguous float32 array of its own namespace (a copy only where needed)."""
    return array_namespace(array).ascontiguousarray(array, dtype=np.float32)


def to_host(array):
    """A numpy array of `array`: a copy from the GPU for cupy (on the array's stream, which the
    host then waits for: the deliberate synchronisation of a device run), numpy as it is."""
    if array is None or isinstance(array, np.ndarray):
        return array
    if array_namespace(array) is not np:
        return array.get()
    return np.asarray(array)


def _library(array):
    return type(array).__module__.split(".")[0]


def _shape_of(array):
    return tuple(int(s) for s in array.shape)


def _check_array(array, name, ranks):
    """Validate one input; return ``(shape, on_device)``. Raises TypeError/ValueError naming ``name``."""
    expected_rank = " or ".join(str(r) for r in ranks)
    if _is_device(array):
        interface = array.__cuda_array_interface__
        shape = tuple(int(s) for s in interface["shape"])
        if interface["typestr"] != "<f4":
            raise TypeError(f"{name} must be float32 (typestr '<f4'), got typestr {interface['typestr']!r}")
        strides = interface.get("strides")
        if strides is not None:
            if tuple(strides) != _contiguous_strides(shape, 4) and int(np.prod(shape)) > 1:
                raise ValueError(f"{name} must be C-contiguous, got strides {tuple(strides)} for shape {shape}")
        if not _BUILT_WITH_CUDA:
            raise ValueError(f"{name} is a CUDA array but smgic_rt._C was built without CUDA")
        on_device = True
    elif isinstance(array, np.ndarray):
        shape = array.shape
        if array.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {array.dtype}; pass {name}.astype(np.float32)")
        if not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
        on_device = False
    else:
        raise TypeError(f"{name} must be a float32 numpy array or a CUDA array, got {type(array).__name__}")
    if len(shape) not in ranks:
        raise ValueError(f"{name} must have {expected_rank} dimensions, got shape {shape}")
    if any(s == 0 for s in shape):
        raise ValueError(f"{name} must not be empty, got shape {shape}")
    return shape, on_device


_INPUTS_FINITE = contextvars.ContextVar("smgic_inputs_known_finite", default=False)


@contextlib.contextmanager
def inputs_known_finite():
    """Inside the block numpy inputs are not scanned for NaN/infinity.

    For inner loops whose arrays were checked once on entry and are changed only by these
    kernels, which keep finite values finite (the refinement's iterations: a scan per call was
    a tenth of its time). Everything else is still checked: shapes, dtypes, layout.
    """
    token = _INPUTS_FINITE.set(True)
    with _restoring(lambda: _INPUTS_FINITE.reset(token)):
        yield


def _check_finite(array, name, on_device):
    if not on_device and _INPUTS_FINITE.get():
        return
    if on_device:
        if not _DEVICE_FINITE.get():
            return  # opt-in (check_device_finite): a device check blocks the host on the stream
        module = _library(array)
        if module == "cupy":
            import cupy

            finite = bool(cupy.isfinite(array).all())
        elif module == "torch":
            import torch

            finite = bool(torch.isfinite(array).all())
        else:
            return  # no generic device reduction available; the kernels clamp non-finite coordinates
    else:
        finite = _C.all_finite(array)
    if not finite:
        raise ValueError(f"{name} must contain only finite values, got NaN or infinity")


# ---------------------------------------------------------------- device and stream of a call


def _device_index(array):
    """The CUDA device an array lives on: its library's attribute, else CUDA's pointer query."""
    module = _library(array)
    if module == "torch":
        return int(array.device.index)
    if module == "cupy":
        return int(array.device.id)
    return int(_C.cuda_pointer_device(_ptr(array)))


def _stream_handle(array, device):
    """The stream the producer of `array` says its data is ordered on (None: no ordering needed)."""
    if _library(array) == "torch":
        import torch

        return int(torch.cuda.current_stream(device).cuda_stream)
    stream = array.__cuda_array_interface__.get("stream")
    if stream is None:
        return None
    if not is_int(stream):
        raise TypeError(f"__cuda_array_interface__['stream'] must be an int or None, got {stream!r}")
    if int(stream) == 0:
        # The interface forbids 0 (it cannot tell the legacy from the per-thread default stream).
        raise ValueError("__cuda_array_interface__['stream'] is 0, which the CUDA Array Interface forbids "
                         "(1: legacy default stream, 2: per-thread default stream, else a cudaStream_t)")
    return int(stream)


def launch_target(*named_arrays):
    """``(device, stream)`` for a call on CUDA arrays, given ``(name, array)`` pairs.

    Checks that every array is on one device (``ValueError`` naming each otherwise). The stream
    is the first array's; any other stream named by an input is made to precede it on the GPU
    (event record + wait, no host blocking). The stream handle is what the kernels are
    enqueued on (0 = the default stream when no input names one).
    """
    devices = [(name, _device_index(array)) for name, array in named_arrays]
    if len({d for _, d in devices}) > 1:
        described = ", ".join(f"{name} on cuda:{d}" for name, d in devices)
        raise ValueError(f"arrays of one call must be on one CUDA device, got {described}")
    device = devices[0][1]
    streams = [_stream_handle(array, device) for _, array in named_arrays]
    named = [s for s in streams if s is not None]
    stream = named[0] if named else 0
    for other in dict.fromkeys(named[1:]):
        if other != stream:
            _C.cuda_stream_wait(device, stream, other)
    return device, stream


def _check_field(array, name):
    shape, on_device = _check_array(array, name, (4, 5))
    channels = shape[-4]
    if channels != 3:
        raise ValueError(f"{name} must have 3 channels (axis -4), got shape {shape}")
    _check_finite(array, name, on_device)
    return shape, on_device


def _check_same_kind(names_devices):
    kinds = {on_device for _, on_device in names_devices}
    if len(kinds) > 1:
        described = ", ".join(f"{n} on {'CUDA' if d else 'CPU'}" for n, d in names_devices)
        raise TypeError(f"arrays must all be numpy or all be CUDA arrays, got {described}")
    return kinds.pop()


def _check_same_rank(name_a, shape_a, name_b, shape_b):
    if len(shape_a) != len(shape_b):
        raise ValueError(f"{name_a} and {name_b} must both be batched or both unbatched, "
                         f"got shapes {shape_a} and {shape_b}")
    if len(shape_a) == 5 and shape_a[0] != shape_b[0]:
        raise ValueError(f"{name_a} and {name_b} must have the same batch size, got shapes {shape_a} and {shape_b}")


def _choice(value, name, table):
    if value not in table:
        raise ValueError(f"{name} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def _spatial_shape(shape, name):
    try:
        values = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of 3 positive ints, got {shape!r}") from None
    if len(values) != 3 or not all(is_int(s) for s in values):
        raise TypeError(f"{name} must be a sequence of 3 positive ints, got {shape!r}")
    if any(int(s) <= 0 for s in values):
        raise ValueError(f"{name} must hold 3 positive sizes, got {tuple(int(s) for s in values)}")
    return tuple(int(s) for s in values)


def _batched(shape):
    """(C, X, Y, Z) -> (1, C, X, Y, Z); batched shapes pass through."""
    return tuple(shape) if len(shape) == 5 else (1,) + tuple(shape)


# ---------------------------------------------------------------- array plumbing


def _empty(like, shape, on_device, dtype="float32"):
    """An uninitialised output shaped `shape`: numpy, or of `like`'s library ON `like`'s device
    (cupy would otherwise allocate on its current device), on that library's current stream."""
    if not on_device:
        return np.empty(shape, dtype)
    module = _library(like)
    if module == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype)
    if module == "torch":
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    raise TypeError(f"CUDA arrays of type {type(like).__name__} are not supported for outputs; use cupy or torch")


def _ptr(array):
    return int(array.__cuda_array_interface__["data"][0])


def _view5(array, on_device):
    """A 5-D view (no copy) of a 4-D or 5-D contiguous array."""
    if array.ndim == 5:
        return array
    return array.reshape((1,) + _shape_of(array))


def _unbatch(out, batched_input):
    return out if batched_input else out[0]


# ---------------------------------------------------------------- public functions


def warp(image, displacement, *, interpolation="linear", padding="zeros", displacement_map=None):
    """Pull-warp ``image`` through ``displacement``: ``out[:, x] = image[:, x + u(x)]``.

    Parameters
    ----------
    image : float32 array, (C, Xi, Yi, Zi) or (N, C, Xi, Yi, Zi)
    displacement : float32 array, (3, X, Y, Z) or (N, 3, X, Y, Z), in voxels of ``image``'s grid
        (``x + u(x)`` is read as an index of the image, so the two grids may differ in size).
    interpolation : "linear" (trilinear), "nearest" (round half to even) or "label" (label maps:
        the label whose indicator interpolates highest, ANTs' "generic label"; ties go to the
        smaller label)
    padding : "zeros" or "border" (clamp to the edge)
    displacement_map : optional ``(matrix, linear)`` (3x4 or 4x4, and 3x3): ``u`` is then the
        stored field read through :func:`affine_field`'s change of units,
        ``u(x) = matrix @ [x, 1] + linear @ displacement(x)`` (e.g. a RAS-mm field of the
        output grid -> voxels of the image), with that function's very arithmetic, so the
        result equals warping with ``affine_field(displacement, matrix, linear)`` without
        making that array.

    Returns
    -------
    float32 array (C, X, Y, Z) or (N, C, X, Y, Z), same kind (numpy/CUDA) as the inputs.
    """
    interp_code = _choice(interpolation, "interpolation", _INTERPOLATION)
    pad_code = _choice(padding, "padding", _PADDING)
    image_shape, image_dev = _check_array(image, "image", (4, 5))
    return _pull("image", image, image_shape, image_dev, displacement, (interp_code, pad_code), "float32", "warp",
                 displacement_map)


def _displacement_map_values(displacement_map):
    """``{"field_matrix": 12 values, "field_linear": 9}`` of a `displacement_map`, or {} for None."""
    if displacement_map is None:
        return {}
    try:
        matrix, linear = displacement_map
    except (TypeError, ValueError):
        raise TypeError("displacement_map must be a (matrix, linear) pair or None, got "
                        f"{type(displacement_map).__name__}") from None
    lin = np.asarray(linear, dtype=np.float64)
    if lin.shape != (3, 3) or not np.all(np.isfinite(lin)):
        raise ValueError(f"displacement_map's linear part must be a finite 3x3 matrix, got shape {lin.shape}")
    return {"field_matrix": _affine_values(matrix, "displacement_map's matrix"),
            "field_linear": [float(v) for v in lin.reshape(-1)]}


def _pull(name, image, image_shape, image_dev, displacement, modes, dtype, kernel, displacement_map=None):
    """The shared body of `warp` and `warp_labels`: checks the field, allocates the output of
    `dtype` and runs ``_C.<kernel>`` (or ``_C.<kernel>_cuda`` on CUDA arrays)."""
    field_shape, field_dev = _check_field(displacement, "displacement")
    on_device = _check_same_kind([(name, image_dev), ("displacement", field_dev)])
    _check_same_rank(name, image_shape, "displacement", field_shape)
    mapping = _displacement_map_values(displacement_map)
    image5, field5 = _batched(image_shape), _batched(field_shape)
    out_shape = (image5[0], image5[1]) + field5[2:]
    out = _empty(image, out_shape, on_device, dtype=dtype)
    if on_device:
        device, stream = launch_target((name, image), ("displacement", displacement))
        extra = (dtype,) if kernel == "warp_labels" else ()
        getattr(_C, f"{kernel}_cuda")(_ptr(image), image5, _ptr(displacement), _ptr(out), out_shape, *modes, *extra,
                                      device, stream, **mapping)
        return out if len(image_shape) == 5 else out[0]
    getattr(_C, kernel)(_view5(image, False), _view5(displacement, False), out, *modes, **mapping)
    return _unbatch(out, len(image_shape) == 5)


# The integer types label maps are warped in as they are (csrc SMGIC_LABEL_TYPES); others are
# widened to int64 by the caller (`smgic_rt.geometry.transforms`).
LABEL_DTYPES = ("uint8", "int16", "uint16", "int32", "int64")


def warp_labels(labels, displacement, *, interpolation="label", padding="zeros", displacement_map=None):
    """Pull-warp an integer label map: :func:`warp`'s geometry on integer values, which are only
    compared and copied (never converted to float, nor widened), so every label survives exactly.

    Parameters
    ----------
    labels : integer array of a type in `LABEL_DTYPES` (uint8, int16, uint16, int32, int64),
        (C, Xi, Yi, Zi) or (N, C, Xi, Yi, Zi), C-contiguous, numpy or CUDA
    displacement : float32 array, (3, X, Y, Z) or (N, 3, X, Y, Z), as in :func:`warp`
    interpolation : "label" (generic label, as in :func:`warp`) or "nearest"
    padding : "zeros" or "border"
    displacement_map : as in :func:`warp`

    Returns
    -------
    array of ``labels``' type, (C, X, Y, Z) or (N, C, X, Y, Z), same kind (numpy/CUDA) as the inputs.
    """
    interp_code = _choice(interpolation, "interpolation", {k: v for k, v in _INTERPOLATION.items() if k != "linear"})
    pad_code = _choice(padding, "padding", _PADDING)
    wanted = " or ".join(LABEL_DTYPES)
    if _is_device(labels):
        interface = labels.__cuda_array_interface__
        dtype = np.dtype(interface["typestr"])
        if dtype.name not in LABEL_DTYPES or interface.get("strides") not in (
                None, _contiguous_strides(interface["shape"], dtype.itemsize)):
            raise TypeError(f"labels must be a C-contiguous {wanted} array, got typestr {interface['typestr']!r}")
        labels_shape = tuple(int(s) for s in interface["shape"])
        labels_on_device = True
    elif isinstance(labels, np.ndarray):
        dtype = labels.dtype
        if dtype.name not in LABEL_DTYPES or not labels.flags.c_contiguous:
            raise TypeError(f"labels must be a C-contiguous {wanted} array, got {labels.dtype}; "
                            "pass np.ascontiguousarray(labels, dtype=np.int64)")
        labels_shape, labels_on_device = labels.shape, False
    else:
        raise TypeError(f"labels must be an integer numpy array or a CUDA array, got {type(labels).__name__}")
    if len(labels_shape) not in (4, 5):
        raise ValueError(f"labels must have 4 or 5 dimensions, got shape {labels_shape}")
    return _pull("labels", labels, labels_shape, labels_on_device, displacement, (interp_code, pad_code), dtype.name,
                 "warp_labels", displacement_map)


def _contiguous_strides(shape, itemsize):
    return tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) * itemsize for i in range(len(shape)))


def _affine_values(matrix, name):
    """The 12 row-major values of a 3x4 (or affine 4x4) matrix, checked."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 3x4 or 4x4 array of numbers, got {type(matrix).__name__}") from None
    if m.shape not in ((3, 4), (4, 4)):
        raise ValueError(f"{name} must be 3x4 or 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} must contain only finite values, got NaN or infinity")
    if m.shape == (4, 4) and not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{name} must be affine (last row [0, 0, 0, 1]), got last row {m[3].tolist()}")
    return [float(v) for v in m[:3].reshape(-1)]


def affine_resample(image, matrix, shape, *, interpolation="linear", padding="zeros"):
    """Resample through a voxel-to-voxel affine map: ``out[:, x] = image[:, M @ [x, 1]]``.

    Parameters
    ----------
    image : float32 array, (C, Xi, Yi, Zi) or (N, C, Xi, Yi, Zi)
    matrix : array-like 3x4 or 4x4 (last row [0, 0, 0, 1]), output voxel index -> input voxel index
    shape : 3 ints, the output grid (X, Y, Z)
    interpolation, padding : as in :func:`warp`

    Returns
    -------
    float32 array (C, X, Y, Z) or (N, C, X, Y, Z).
    """
    interp_code = _choice(interpolation, "interpolation", _INTERPOLATION)
    pad_code = _choice(padding, "padding", _PADDING)
    image_shape, on_device = _check_array(image, "image", (4, 5))
    out_spatial = _spatial_shape(shape, "shape")
    values = _affine_values(matrix, "matrix")
    image5 = _batched(image_shape)
    out_shape = (image5[0], image5[1]) + out_spatial
    out = _empty(image, out_shape, on_device)
    if on_device:
        device, stream = launch_target(("image", image))
        _C.affine_resample_cuda(_ptr(image), image5, values, _ptr(out), out_shape, interp_code, pad_code,
                                device, stream)
    else:
        _C.affine_resample(_view5(image, False), values, out, interp_code, pad_code)
    return _unbatch(out, len(image_shape) == 5)


def affine_resample_field(field, matrix, shape, out_matrix, out_linear, *, padding="border"):
    """A field resampled through a voxel-to-voxel affine map and moved by `affine_field`'s map:
    ``out[:, x] = out_matrix @ [x, 1] + out_linear @ field[:, matrix @ [x, 1]]`` (trilinear).

    The values of ``affine_field(affine_resample(field, matrix, shape, padding=padding),
    out_matrix, out_linear)``, bit for bit; on the CPU in one pass, without the intermediate
    array (e.g. a model-grid displacement read on a native grid and turned into RAS mm).

    Parameters
    ----------
    field : float32 array (3, Xi, Yi, Zi) or (N, 3, Xi, Yi, Zi)
    matrix : array-like 3x4 or 4x4, output voxel index -> input voxel index
    shape : 3 ints, the output grid
    out_matrix : array-like 3x4 or 4x4, output voxel index -> vector; out_linear : array-like 3x3
    padding : "zeros" or "border"

    Returns
    -------
    float32 array (3, X, Y, Z) or (N, 3, X, Y, Z).
    """
    field_shape, on_device = _check_field(field, "field")
    out_values, lin_values = _affine_values(out_matrix, "out_matrix"), _linear_values(out_linear, "out_linear")
    if on_device:
        resampled = affine_resample(field, matrix, shape, padding=padding)
        return affine_field(resampled, out_matrix, out_linear, out=resampled)
    pad_code = _choice(padding, "padding", _PADDING)
    values = _affine_values(matrix, "matrix")
    field5 = _batched(field_shape)
    out = _empty(field, field5[:2] + _spatial_shape(shape, "shape"), False)
    _C.affine_resample_field(_view5(field, False), values, out, pad_code, out_values, lin_values)
    return _unbatch(out, len(field_shape) == 5)


def integrate_velocity(velocity, steps=7):
    """Scaling and squaring: ``u = v / 2**steps``, then ``steps`` times ``u <- u + u o (id + u)``.

    Sampling uses trilinear interpolation with border padding. ``exp(-v)`` is the inverse.

    Parameters
    ----------
    velocity : float32 array (3, X, Y, Z) or (N, 3, X, Y, Z), in voxels
    steps : int in [0, 30]; 0 returns a copy of ``velocity``

    Returns
    -------
    float32 displacement, same shape and kind as ``velocity``.
    """
    if not is_int(steps):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if not 0 <= int(steps) <= _MAX_STEPS:
        raise ValueError(f"steps must be in [0, {_MAX_STEPS}], got {steps}")
    shape, on_device = _check_field(velocity, "velocity")
    shape5 = _batched(shape)
    out = _empty(velocity, shape5, on_device)
    if on_device:
        scratch = _empty(velocity, shape5, on_device)
        device, stream = launch_target(("velocity", velocity))
        _C.integrate_velocity_cuda(_ptr(velocity), _ptr(out), _ptr(scratch), shape5, int(steps), device, stream)
    else:
        _C.integrate_velocity(_view5(velocity, False), out, int(steps))
    return _unbatch(out, len(shape) == 5)


# The largest first step, v / 2^n, of an integration whose step count `squaring_steps` chooses.
SQUARING_FIRST_STEP_VOXELS = 1.0 / 8.0


def squaring_steps(velocity, max_steps, first_step=SQUARING_FIRST_STEP_VOXELS):
    """The fewest scaling-and-squaring steps ``n <= max_steps`` whose first step ``v / 2^n`` moves
    no voxel more than `first_step` voxels along any axis (``max |v_c(x)| / 2^n <= first_step``).

    The bound: with ``L`` the velocity's largest partial derivative ``max |d v_c / d x_a|`` (voxels
    per voxel), ``integrate_velocity(v, n)`` differs from ``integrate_velocity(v, max_steps)`` by
    at most ``first_step * L`` voxels at any voxel (the first-order term left out by a first step
    of length ``h`` is ``h/2 (Dv) v / |v|``, carried through the squarings), and not at all
    when ``n == max_steps``. tests/test_integration_steps.py holds the bound on random smooth
    velocities and on a real refinement's. Small velocities (early iterations, coarse levels)
    take fewer steps; large ones keep ``max_steps``, so no integration is less exact than
    ``first_step`` allows nor more costly than ``max_steps``.

    One pass over `velocity` (its largest and smallest value); a host read on the GPU.
    """
    if not is_int(max_steps) or not 0 <= int(max_steps) <= _MAX_STEPS:
        raise ValueError(f"max_steps must be an int in [0, {_MAX_STEPS}], got {max_steps!r}")
    if not first_step > 0:
        raise ValueError(f"first_step must be a positive number of voxels, got {first_step!r}")
    xp = array_namespace(velocity)
    largest = max(float(xp.max(velocity)), -float(xp.min(velocity)))
    steps = 0
    while steps < int(max_steps) and largest / 2.0 ** steps > first_step:
        steps += 1
    return steps


def compose(u_outer, u_inner):
    """Displacement of ``phi_outer o phi_inner``: ``u_inner(x) + u_outer(x + u_inner(x))``.

    Trilinear, border padding. The result lives on ``u_inner``'s grid; ``u_outer`` may have a
    different spatial size (``x + u_inner(x)`` is read as an index of its grid).

    Parameters
    ----------
    u_outer, u_inner : float32 arrays (3, X, Y, Z) or (N, 3, X, Y, Z), both batched or both not

    Returns
    -------
    float32 array with the shape of ``u_inner``.
    """
    outer_shape, outer_dev = _check_field(u_outer, "u_outer")
    inner_shape, inner_dev = _check_field(u_inner, "u_inner")
    on_device = _check_same_kind([("u_outer", outer_dev), ("u_inner", inner_dev)])
    _check_same_rank("u_outer", outer_shape, "u_inner", inner_shape)
    inner5, outer5 = _batched(inner_shape), _batched(outer_shape)
    out = _empty(u_inner, inner5, on_device)
    if on_device:
        device, stream = launch_target(("u_outer", u_outer), ("u_inner", u_inner))
        _C.compose_cuda(_ptr(u_outer), outer5, _ptr(u_inner), _ptr(out), inner5, device, stream)
    else:
        _C.compose(_view5(u_outer, False), _view5(u_inner, False), out)
    return _unbatch(out, len(inner_shape) == 5)


class InverseDisplacement(NamedTuple):
    """What `invert_displacement` returns."""

    displacement: object
    iterations: int
    residual_p999: float
    residual_max: float


def invert_displacement(u, initial, lattice=None, *, spacing=(1.0, 1.0, 1.0), tolerance=0.01, max_iterations=10):
    """Polish `initial`, an approximate inverse of ``phi = id + u``, into its numerical inverse
    at the nodes of a lattice: ``phi(psi(m)) = m`` there, ``psi(m) = m + w``.

    Node ``k`` of the lattice sits at ``m(k) = lattice @ [k, 1]`` in voxels of ``u``'s grid
    (default: ``u``'s own grid). Each step is Newton's with the Jacobian of ``phi`` at
    ``psi(m)`` taken as the inverse of ``psi``'s own (finite differences along the lattice):
    ``w <- w - (I + dw/dm) r``, ``r = w + u(m + w) = phi(psi(m)) - m``. A node whose ``|r|`` a
    step would raise keeps its value (near folds and the grid's border Newton may not
    converge). Steps stop once at most one node in a thousand has ``|r|`` above `tolerance`
    (each axis scaled by `spacing`), or after `max_iterations`. ``u`` is read trilinearly with
    border padding, as in `compose`.

    Parameters
    ----------
    u : float32 array (3, X, Y, Z), the forward displacement in voxels
    initial : float32 array (3, *lattice shape), e.g. ``exp(-v)`` read at the nodes, in voxels
        of ``u``'s grid; polished in place when C-contiguous (no second lattice-sized copy)
    lattice : 3x4 (or 4x4) array-like, lattice index -> voxel of ``u``; None: the identity
    spacing : 3 positive numbers, the unit of ``|r|`` per axis (voxel size in mm: mm)
    tolerance : in those units
    max_iterations : int >= 0

    Returns
    -------
    InverseDisplacement: ``displacement`` (the polished ``w``, of `initial`'s shape),
    ``iterations`` (steps taken),
    ``residual_p999`` and ``residual_max`` (99.9th percentile and largest ``|r|``).
    """
    for name, field in (("u", u), ("initial", initial)):
        if len(_check_field(field, name)[0]) != 4:
            raise ValueError(f"{name} must have shape (3, X, Y, Z), got {tuple(field.shape)}")
    if not is_int(max_iterations) or max_iterations < 0:
        raise ValueError(f"max_iterations must be an int >= 0, got {max_iterations!r}")
    xp = array_namespace(u, initial)
    to_u = np.eye(4)[:3] if lattice is None else np.asarray(lattice, dtype=np.float64)[:3]
    to_lattice = xp.asarray(np.linalg.inv(to_u[:, :3]), dtype=np.float32)  # dw/dm = dw/dk (dm/dk)^-1
    scale = xp.asarray(np.asarray(spacing, dtype=np.float32).reshape(3, 1))
    shape = tuple(int(n) for n in initial.shape[1:])
    w = xp.ascontiguousarray(initial, dtype=np.float32).reshape(3, -1)  # updated node by node

    def norm(r):  # |r| in the units of `spacing`: ((r0 s0)^2 + (r1 s1)^2) + (r2 s2)^2, in place
        squares = r * scale
        squares *= squares
        length = squares[0] + squares[1]
        length += squares[2]
        return xp.sqrt(length, out=length)

    def mismatch(at, w_at):  # r and |r| at the nodes `at`
        index = xp.stack(xp.unravel_index(at, shape)).astype(np.float32)
        position = xp.asarray(to_u[:, :3], dtype=np.float32) @ index + xp.asarray(to_u[:, 3:], dtype=np.float32)
        r = _read_at(u, position + w_at) + w_at
        return r, norm(r)

    # At every node first: one pass over the lattice, u read at m(k) + w (m(k) - k is affine in k).
    shift = to_u - np.hstack([np.eye(3), np.zeros((3, 1))])
    r = warp(u, w.reshape(initial.shape), padding="border", displacement_map=(shift, np.eye(3))).reshape(3, -1)
    r += w
    length = norm(r)
    active = xp.flatnonzero(length > tolerance)
    iterations = 0
    # Only nodes still off by more than `tolerance` take a step: after the first few, a handful.
    while len(active) * 1000 > w.shape[1] and iterations < max_iterations:
        r_at, w_at = r[:, active], w[:, active]
        step = to_lattice @ r_at  # r in lattice steps
        moved = w_at - r_at
        for axis, slope in enumerate(_lattice_slopes(w, active, shape)):
            moved -= slope * step[axis]
        new_r, new_length = mismatch(active, moved)
        better = new_length <= length[active]
        kept = active[better]
        w[:, kept], r[:, kept], length[kept] = moved[:, better], new_r[:, better], new_length[better]
        active = active[length[active] > tolerance]
        iterations += 1
    return InverseDisplacement(w.reshape(initial.shape), iterations, float(xp.percentile(length, 99.9)),
                               float(length.max()))


def _read_at(field, points):
    """`field` (C, X, Y, Z) read at `points` (3, n), voxel coordinates of its grid (trilinear,
    border padding): `warp` over a small cube of the points, whose own indices stay small so
    that float32 keeps the coordinates exact to ~1e-5 voxels."""
    xp = array_namespace(field, points)
    count = points.shape[1]
    side = max(1, int(np.ceil(count ** (1 / 3))))
    cube = xp.zeros((3, side ** 3), np.float32)
    cube[:, :count] = points
    cube -= xp.indices((side,) * 3, dtype=np.float32).reshape(3, -1)
    return warp(field, cube.reshape(3, side, side, side), padding="border").reshape(field.shape[0], -1)[:, :count]


def _lattice_slopes(w, at, shape):
    """d w / d k_axis at the flat nodes `at` of a (3, prod(shape)) field, for each axis: central
    differences, one-sided at the lattice's faces (as numpy.gradient)."""
    xp = array_namespace(w, at)
    index = xp.unravel_index(at, shape)
    strides = np.cumprod((1,) + tuple(shape[::-1]))[:-1][::-1]
    slopes = []
    for axis, size in enumerate(shape):
        up = xp.where(index[axis] < size - 1, at + int(strides[axis]), at)
        down = xp.where(index[axis] > 0, at - int(strides[axis]), at)
        span = xp.maximum((up - down) // int(strides[axis]), 1).astype(np.float32)
        slopes.append((w[:, up] - w[:, down]) / span)
    return slopes


def upsample_field(u, shape=None):
    """Upsample a displacement to the next finer pyramid level.

    Fine voxel ``x`` reads coarse coordinate ``(x - 0.5) / 2`` (coarse voxel ``i`` is centred at
    fine ``2i + 0.5``), trilinear with border padding, and the values are doubled (voxels of the
    finer grid).

    Parameters
    ----------
    u : float32 array (3, X, Y, Z) or (N, 3, X, Y, Z)
    shape : 3 ints, the fine grid; default twice each size of ``u``

    Returns
    -------
    float32 array (3, *shape) or (N, 3, *shape).
    """
    in_shape, on_device = _check_field(u, "u")
    spatial = tuple(2 * s for s in in_shape[-3:]) if shape is None else _spatial_shape(shape, "shape")
    in5 = _batched(in_shape)
    out_shape = in5[:2] + spatial
    out = _empty(u, out_shape, on_device)
    if on_device:
        device, stream = launch_target(("u", u))
        _C.upsample_field_cuda(_ptr(u), in5, _ptr(out), out_shape, device, stream)
    else:
        _C.upsample_field(_view5(u, False), out)
    return _unbatch(out, len(in_shape) == 5)


def downsample_haar(image):
    """Haar approximation band: the mean of each 2x2x2 block (every spatial size must be even).

    Parameters
    ----------
    image : float32 array (C, X, Y, Z) or (N, C, X, Y, Z), X, Y, Z even

    Returns
    -------
    float32 array (C, X/2, Y/2, Z/2) or (N, C, X/2, Y/2, Z/2).
    """
    shape, on_device = _check_array(image, "image", (4, 5))
    if any(s % 2 for s in shape[-3:]):
        raise ValueError(f"image spatial sizes must be even, got shape {shape}")
    in5 = _batched(shape)
    out_shape = in5[:2] + tuple(s // 2 for s in in5[2:])
    out = _empty(image, out_shape, on_device)
    _run_on_one_array("downsample_haar", ("image", image), out, out_shape, on_device)
    return _unbatch(out, len(shape) == 5)


def _linear_values(linear, name):
    """The 9 row-major values of a 3x3 matrix, checked."""
    try:
        lin = np.asarray(linear, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 3x3 array of numbers, got {type(linear).__name__}") from None
    if lin.shape != (3, 3) or not np.all(np.isfinite(lin)):
        raise ValueError(f"{name} must be a finite 3x3 matrix, got shape {lin.shape}")
    return [float(v) for v in lin.reshape(-1)]


def affine_field(field, matrix, linear, *, out=None):
    """Per voxel ``out[:, x] = matrix @ [x, 1] + linear @ field[:, x]``.

    Moves a vector field between unit systems and adds an affine function of the voxel index in
    one pass, e.g. a displacement in model voxels read on a native grid -> RAS mm
    (``linear`` = the model grid's 3x3), or RAS mm -> voxel coordinates of another image.

    Parameters
    ----------
    field : float32 array (3, X, Y, Z) or (N, 3, X, Y, Z)
    matrix : array-like 3x4 or 4x4 (last row [0, 0, 0, 1]), voxel index -> vector
    linear : array-like 3x3
    out : optional array of ``field``'s shape and kind to write into; may be ``field`` itself
        (each voxel reads its three values before writing), which saves allocating a large
        array.

    Returns
    -------
    float32 array of ``field``'s shape, same kind (numpy/CUDA) as ``field`` (``out`` if given).
    """
    shape, on_device = _check_field(field, "field")
    values = _affine_values(matrix, "matrix")
    lin_values = _linear_values(linear, "linear")
    in5 = _batched(shape)
    given_out = out is not None
    if not given_out:
        out = _empty(field, shape, on_device)
    else:
        out_shape, out_on_device = _check_array(out, "out", (4, 5))
        _check_same_kind([("field", on_device), ("out", out_on_device)])
        if tuple(out_shape) != tuple(shape):
            raise ValueError(f"out must have the shape of field {tuple(shape)}, got {tuple(out_shape)}")
    if on_device:
        named = [("field", field)] + ([("out", out)] if given_out else [])
        device, stream = launch_target(*named)
        _C.affine_field_cuda(_ptr(field), values, lin_values, _ptr(out), in5, device, stream)
        return out
    _C.affine_field(_view5(field, False), values, lin_values, _view5(out, False))
    return out


def quasi_interpolant(samples):
    """``f - (1/12) sum_axis (f[i-1] - 2 f[i] + f[i+1])`` of every volume: the lattice values of
    `smgic_rt.geometry.transforms.linear_quasi_interpolant` (which says why); along each axis its
    first and last points take no term from that axis. Products are rounded on their own on
    every device, the axes taken in the order x, y, z.

    Parameters
    ----------
    samples : float32 array (C, X, Y, Z) or (N, C, X, Y, Z)

    Returns
    -------
    float32 array of `samples`' shape and kind.
    """
    shape, on_device = _check_array(samples, "samples", (4, 5))
    shape5 = _batched(shape)
    out = _empty(samples, shape5, on_device)
    _run_on_one_array("quasi_interpolant", ("samples", samples), out, shape5, on_device)
    return _unbatch(out, len(shape) == 5)


def jacobian_determinant(u, *, linear=None):
    """``det(I + grad u)`` by central differences (one-sided at the border; 0 derivative on an axis of size 1).

    Parameters
    ----------
    u : float32 displacement (3, X, Y, Z) or (N, 3, X, Y, Z), in voxels; with `linear`, any
        displacement whose voxel-unit form is ``linear @ u``
    linear : optional array-like 3x3: differentiate ``linear @ u``, each value rounded as
        ``affine_field(u, zeros((3, 4)), linear)`` stores it, without that copy of the field

    Returns
    -------
    float32 array (X, Y, Z) or (N, X, Y, Z).
    """
    shape, on_device = _check_field(u, "u")
    lin_values = [] if linear is None else _linear_values(linear, "linear")
    in5 = _batched(shape)
    out_shape = (in5[0],) + in5[2:]
    out = _empty(u, out_shape, on_device)
    if on_device:
        device, stream = launch_target(("u", u))
        _C.jacobian_determinant_cuda(_ptr(u), _ptr(out), in5, lin_values, device, stream)
    else:
        _C.jacobian_determinant(_view5(u, False), out, lin_values)
    return out if len(shape) == 5 else out[0]


def _run_on_one_array(kernel: str, named, out, shape, on_device: bool):
    """``_C.<kernel>`` (host) or ``_C.<kernel>_cuda`` (device, with `shape`) from one input array
    ``named = (name, array)`` into `out`."""
    _, array = named
    if on_device:
        device, stream = launch_target(named)
        getattr(_C, f"{kernel}_cuda")(_ptr(array), _ptr(out), shape, device, stream)
    else:
        getattr(_C, kernel)(_view5(array, False), out)


# ---------------------------------------------------------------- registration kernels
# The per-voxel work of the affine stage and the refinement (csrc/registration), with the same
# numpy/CUDA dispatch as the kernels above.


def _check_volumes(array, name, rank):
    shape, on_device = _check_array(array, name, (rank,))
    _check_finite(array, name, on_device)
    return shape, on_device


def _check_taps(taps):
    try:
        values = [float(t) for t in taps]
    except (TypeError, ValueError):
        raise TypeError(f"taps must be a sequence of numbers, got {type(taps).__name__}") from None
    if not values or len(values) % 2 == 0:
        raise ValueError(f"taps must be an odd, non-empty sequence, got {len(values)} values")
    if not all(np.isfinite(values)):
        raise ValueError("taps must be finite")
    return values


def filter_axis(volumes, axis, taps, normalise_inside=False):
    """One separable filter pass along voxel axis `axis` of ``(C, X, Y, Z)`` volumes.

    ``out = sum_k taps[k] * in[i + k - radius]`` with edge replication; ``normalise_inside``
    divides by the sum of the taps that fall inside the volume instead (box means without edge
    bias). Returns a new array of the same shape and kind.
    """
    shape, on_device = _check_volumes(volumes, "volumes", 4)
    if not is_int(axis) or axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    values = _check_taps(taps)
    if not on_device:
        return _C.filter_axis(volumes, int(axis), values, bool(normalise_inside))
    out = _empty(volumes, shape, True)
    device, stream = launch_target(("volumes", volumes))
    _C.filter_axis_cuda(_ptr(volumes), _ptr(out), shape[0], shape[1:], int(axis), values, bool(normalise_inside),
                        device, stream)
    return out


def _check_pair_and_means(named_a, named_b, means):
    """(grid, on_device) of two volumes (X, Y, Z) on one grid and their five box means (5, X, Y, Z)."""
    (name_a, a), (name_b, b) = named_a, named_b
    shape_a, dev_a = _check_volumes(a, name_a, 3)
    shape_b, dev_b = _check_volumes(b, name_b, 3)
    shape_m, dev_m = _check_volumes(means, "means", 4)
    on_device = _check_same_kind([(name_a, dev_a), (name_b, dev_b), ("means", dev_m)])
    if shape_b != shape_a or shape_m != (5,) + tuple(shape_a):
        raise ValueError(f"{name_a} and {name_b} must share one grid and means must be (5, *grid), got shapes "
                         f"{tuple(shape_a)}, {tuple(shape_b)} and {tuple(shape_m)}")
    return shape_a, on_device


def lncc(i, j, means, eps):
    """Per-voxel local NCC of `i` and `j` (X, Y, Z) and its derivatives by `i` and `j`, from the
    five box means ``(5, X, Y, Z)`` = mean i, j, i*i, j*j, i*j. Returns ``(cc, d_i, d_j)``."""
    shape_i, on_device = _check_pair_and_means(("i", i), ("j", j), means)
    if not on_device:
        return _C.lncc(i, j, means, float(eps))
    outs = [_empty(i, shape_i, True) for _ in range(3)]
    device, stream = launch_target(("i", i), ("j", j), ("means", means))
    _C.lncc_cuda(_ptr(i), _ptr(j), _ptr(means), *[_ptr(o) for o in outs], shape_i, float(eps), device, stream)
    return tuple(outs)


def lncc_mean(i, j, means, eps) -> float:
    """``lncc(i, j, means, eps)[0].mean(dtype=float64)`` without the per-voxel volumes: for an
    objective that needs only the mean. On the CPU one pass that rounds the float64 sums as
    numpy's mean does (its conversion buffers of 8192 values, pairwise sums), so the value is the
    same bits; on a GPU `lncc` and its library's mean."""
    shape_i, on_device = _check_pair_and_means(("i", i), ("j", j), means)
    if not on_device:
        return float(_C.lncc_mean(i, j, means, float(eps)))
    return float(lncc(i, j, means, eps)[0].mean(dtype=np.float64))


def ncc_exact_derivatives(fixed, moving, means, eps, radius, both=True):
    """The exact derivatives of ``mean_x cc(x)`` (the local NCC of `ops.lncc`, windows of
    ``2 radius + 1`` voxels) by each voxel of `moving` and, with `both`, of `fixed` (X, Y, Z),
    from their five box means ``(5, X, Y, Z)`` (as for `lncc`): every window that holds a voxel
    contributes (smgic_rt.refine, ``gradient="exact"``). Returns ``(d_fixed or None, d_moving)``."""
    shape_f, on_device = _check_pair_and_means(("fixed", fixed), ("moving", moving), means)
    if not is_int(radius) or radius < 1:
        raise ValueError(f"radius must be an int >= 1, got {radius!r}")
    if not on_device:
        return _C.ncc_exact_derivatives(fixed, moving, means, float(eps), int(radius), bool(both))
    channels = int(_C.NCC_TERMS_BOTH if both else _C.NCC_TERMS_MOVING)
    terms, scratch = (_empty(fixed, (channels,) + tuple(shape_f), True) for _ in range(2))
    d_moving = _empty(fixed, shape_f, True)
    d_fixed = _empty(fixed, shape_f, True) if both else None
    device, stream = launch_target(("fixed", fixed), ("moving", moving), ("means", means))
    _C.ncc_exact_derivatives_cuda(_ptr(fixed), _ptr(moving), _ptr(means), _ptr(terms), _ptr(scratch),
                                  _ptr(d_fixed) if both else 0, _ptr(d_moving), shape_f, float(eps), int(radius),
                                  device, stream)
    return d_fixed, d_moving


def image_gradient(volume):
    """Central differences (one-sided at the border) of a volume (X, Y, Z): ``(3, X, Y, Z)``."""
    shape, on_device = _check_volumes(volume, "volume", 3)
    if not on_device:
        return _C.image_gradient(volume)
    out = _empty(volume, (3,) + tuple(shape), True)
    device, stream = launch_target(("volume", volume))
    _C.image_gradient_cuda(_ptr(volume), _ptr(out), shape, device, stream)
    return out


def descent_direction(force, velocity, reg2, weight=None) -> float:
    """The refinement's descent direction, in place in `force` (3, X, Y, Z: the smoothed
    similarity force on entry): ``(force + reg2 * laplacian(velocity)) * weight``, the Laplacian
    of each channel with edge-replicated borders, `weight` (X, Y, Z) or None (1). Returns the
    largest length of the result's vectors (a host read on the GPU). One pass instead of numpy's
    dozen; every value rounded as the numpy formulation rounds it (csrc: descent_voxel)."""
    shape, on_device = _check_array(force, "force", (4,))
    velocity_shape, velocity_on_device = _check_array(velocity, "velocity", (4,))
    if shape[0] != 3 or velocity_shape != shape or velocity_on_device != on_device:
        raise ValueError(f"force and velocity must both be (3, X, Y, Z) arrays on one device, got {shape} and "
                         f"{velocity_shape}")
    if weight is not None:
        weight_shape, weight_on_device = _check_array(weight, "weight", (3,))
        if weight_shape != shape[1:] or weight_on_device != on_device:
            raise ValueError(f"weight must be {shape[1:]} on the force's device, got {weight_shape}")
    reg2 = np.float32(reg2)
    if not on_device:
        return _C.descent_direction(force, velocity, weight, reg2)
    device, stream = launch_target(("force", force), ("velocity", velocity))
    _C.descent_direction_cuda(_ptr(force), _ptr(velocity), 0 if weight is None else _ptr(weight), shape[1:],
                              reg2, device, stream)
    xp = array_namespace(force)
    return float(xp.sqrt(xp.square(force).sum(axis=0)).max())


def gradient_energy(velocity) -> float:
    """``sum over the axes a of mean(square(diff(velocity, axis=a)))`` of a (C, X, Y, Z) field:
    the refinement's regulariser |grad v|^2 (forward differences, per voxel and channel). On the
    CPU one `_C` pass that rounds every difference, square and pairwise sum as numpy's float32
    ``np.mean`` does, so the value is numpy's bit for bit; on a GPU that formula in its library."""
    shape, on_device = _check_array(velocity, "velocity", (4,))
    if not on_device:
        return float(_C.gradient_energy(velocity))
    xp = array_namespace(velocity)
    return float(sum(xp.mean(xp.square(xp.diff(velocity, axis=a))) for a in (1, 2, 3)))


AFFINE_SUMS = int(_C.AFFINE_SUMS)
AFFINE_SSD_SUMS = int(_C.AFFINE_SSD_SUMS)


def affine_ncc_sums(fixed, mask, moving, matrix, *, workspace=None, out=None):
    """The sums of the masked NCC of `fixed` and `moving` read through a voxel map, and their
    derivatives by the 12 entries of the 3x4 matrix (``AFFINE_SUMS`` float64 values; layout in
    csrc/registration/registration_math.h).

    The CPU sums are reduced in a fixed order, so they do not depend on the thread count.
    For CUDA arrays nothing is copied to the host: the sums are written, asynchronously, into
    `out` (a device float64 array of ``AFFINE_SUMS`` values, allocated when None), using
    `workspace` (float64 device array of ``_C.affine_ncc_workspace_size(fixed voxels)`` values,
    allocated when None); pass both to reuse them across the evaluations of an optimiser and
    read `out` once per evaluation. Returns a float64 numpy array (CPU) or `out` (CUDA).
    """
    return _affine_sums("ncc", fixed, mask, moving, matrix, workspace, out)


def affine_ssd_sums(fixed, mask, moving, matrix, *, workspace=None, out=None):
    """The sums of the masked sum of squared differences over the channels of `fixed`
    ``(C, X, Y, Z)`` and `moving` ``(C, Xm, Ym, Zm)`` read through a voxel map (the MIND
    descriptors of the affine stage), and their derivatives by the 12 entries of the 3x4 matrix:
    ``AFFINE_SSD_SUMS`` float64 values ``S = sum w``, ``E = sum w sum_c (m_c - f_c)^2``, then
    ``D_k`` with ``dE/dM_k = 2 D_k`` (layout in csrc/registration/registration_math.h). Every
    channel is read in one trilinear cell per fixed voxel; a voxel whose point falls outside the
    moving grid adds nothing. Reduction order, `workspace` (of
    ``_C.affine_ssd_workspace_size(fixed voxels)`` values) and `out` as in `affine_ncc_sums`.
    """
    return _affine_sums("ssd", fixed, mask, moving, matrix, workspace, out)


def _affine_sums(kind, fixed, mask, moving, matrix, workspace, out):
    """`affine_ncc_sums` (`kind` "ncc": 3-D volumes) or `affine_ssd_sums` ("ssd": 4-D, channels
    first): the inputs checked once, then the CPU or the CUDA kernel."""
    rank = 3 if kind == "ncc" else 4
    fixed_shape, fixed_dev = _check_volumes(fixed, "fixed", rank)
    moving_shape, moving_dev = _check_volumes(moving, "moving", rank)
    channels = 1
    if kind == "ssd":
        if fixed_shape[0] != moving_shape[0]:
            raise ValueError(f"fixed and moving must have the same number of channels, got {fixed_shape[0]} and "
                             f"{moving_shape[0]}")
        channels, fixed_shape, moving_shape = int(fixed_shape[0]), tuple(fixed_shape[1:]), tuple(moving_shape[1:])
    kinds = [("fixed", fixed_dev), ("moving", moving_dev)]
    if mask is not None:
        mask_shape, mask_dev = _check_volumes(mask, "mask", 3)
        if tuple(mask_shape) != tuple(fixed_shape):
            raise ValueError(f"mask must have the fixed grid's shape {tuple(fixed_shape)}, got {tuple(mask_shape)}")
        kinds.append(("mask", mask_dev))
    on_device = _check_same_kind(kinds)
    if any(n < 2 for n in moving_shape):
        raise ValueError(f"moving must have at least 2 voxels per axis, got shape {tuple(moving_shape)}")
    if np.shape(matrix) == (12,):  # the 3x4 row-major values, as the _C function takes them
        matrix = np.reshape(np.asarray(matrix, dtype=np.float64), (3, 4))
    values = _affine_values(matrix, "matrix")
    if not on_device:
        sums = _C.affine_ncc_sums if kind == "ncc" else _C.affine_ssd_sums
        return np.asarray(sums(fixed, mask, moving, values), dtype=np.float64)
    voxels = int(np.prod(fixed_shape))
    if kind == "ncc":
        size, count = int(_C.affine_ncc_workspace_size(voxels)), AFFINE_SUMS
    else:
        size, count = int(_C.affine_ssd_workspace_size(voxels)), AFFINE_SSD_SUMS
    named = [("fixed", fixed), ("moving", moving)] + ([("mask", mask)] if mask is not None else [])
    buffers = {}
    for name, given, length in (("workspace", workspace, size), ("out", out, count)):
        if given is None:
            given = _empty(fixed, (length,), True, "float64")
        else:
            interface = getattr(given, "__cuda_array_interface__", None)
            if interface is None or interface["typestr"] != "<f8" or int(np.prod(interface["shape"])) < length:
                raise ValueError(f"{name} must be a CUDA float64 array of at least {length} values")
            named.append((name, given))
        buffers[name] = given
    device, stream = launch_target(*named)
    pointers = (_ptr(fixed), _ptr(mask) if mask is not None else 0, fixed_shape)
    rest = (_ptr(moving), moving_shape, values, _ptr(buffers["workspace"]), _ptr(buffers["out"]), device, stream)
    if kind == "ncc":
        _C.affine_ncc_sums_cuda(*pointers, *rest)
    else:
        _C.affine_ssd_sums_cuda(*pointers, channels, *rest)
    return buffers["out"]
