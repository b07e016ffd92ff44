"""Inference backends for the per-level networks of a model bundle.

Every backend has ``run_level(k, fixed, moving, velocity) -> velocity`` on ``(N, C, X, Y, Z)``
float32 arrays (see docs/architecture.md). `create` builds one by name:

- ``"onnxruntime"``: onnxruntime with an explicit ordered provider list (CUDA first when
  available, CPU last).
- ``"tensorrt"``: TensorRT engines built per GPU from the bundle, device buffers throughout.
- ``"torch"``: the PyTorch model itself (`smgic_rt.backends.torch_model`; needs PyTorch):
  CPU by default (reference, tests), ``device="cuda"`` on a GPU.
- ``"auto"``: the fastest that starts here: TensorRT; else, on a GPU, torch on CUDA (what a
  GPU machine without TensorRT has; device arrays throughout, where onnxruntime's CUDA provider
  copies through the host at every level); else onnxruntime (CUDA provider first when it has
  one, then CPU).
"""

from __future__ import annotations

import logging

from ..models.bundle import Bundle
from ._base import Backend

__all__ = ["Backend", "create", "BACKEND_NAMES"]

BACKEND_NAMES = ("auto", "onnxruntime", "tensorrt", "torch")

log = logging.getLogger(__name__)


def _create_onnxruntime(bundle, **options):
    from .onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(bundle, **options)


def _create_tensorrt(bundle, **options):
    from .tensorrt import TensorRTBackend

    return TensorRTBackend(bundle, **options)


def _create_torch(bundle, **options):
    from .torch import TorchBackend

    return TorchBackend(bundle, **options)


def _create_auto(bundle, threads=None, **options):
    if options:
        raise ValueError(f"backend 'auto' takes no options but threads, got {sorted(options)}")
    reasons = []
    try:
        return _create_tensorrt(bundle)  # on the GPU: CPU threads do not apply
    except Exception as error:  # any failure (no package, no GPU, no driver) means "not here"
        reasons.append(f"tensorrt: {error}")
    from ..geometry import ops

    if ops.cuda_available():
        try:
            return _create_torch(bundle, device="cuda")
        except Exception as error:  # no torch, a CPU-only torch, no weights.pt
            reasons.append(f"torch cuda: {error}")
    # onnxruntime is a hard dependency, so this cannot fail for lack of a package; without a
    # working CUDA provider onnxruntime itself falls back to CPU.
    from .onnxruntime import default_providers

    backend = _create_onnxruntime(bundle, providers=default_providers(), threads=threads)
    log.info("backend auto -> onnxruntime %s (skipped: %s)", backend.active_providers, "; ".join(reasons))
    return backend


_FACTORIES = {
    "auto": _create_auto,
    "onnxruntime": _create_onnxruntime,
    "tensorrt": _create_tensorrt,
    "torch": _create_torch,
}


def create(name: str, bundle: Bundle, **options) -> Backend:
    """Build the backend `name` for `bundle`.

    Parameters
    ----------
    name : {"auto", "onnxruntime", "tensorrt", "torch"}
    bundle : Bundle
        From `smgic_rt.models.bundle.load_bundle`.
    **options
        Passed to the backend class (e.g. ``providers=[...]``, ``threads=2`` for onnxruntime;
        ``fp16=True`` for tensorrt).

    Raises
    ------
    ValueError
        Unknown `name` (the message lists the valid names).
    ImportError
        The backend's package (tensorrt, cupy, torch/training) is missing.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown backend {name!r}; valid names: {list(BACKEND_NAMES)}")
    if not isinstance(bundle, Bundle):
        raise TypeError(f"bundle must be a smgic_rt.models.bundle.Bundle (load_bundle(path)), got {type(bundle).__name__}")
    return _FACTORIES[name](bundle, **options)
