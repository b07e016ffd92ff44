"""torch backend: the PyTorch model itself, on the CPU (reference, tests) or on a CUDA GPU.

On a GPU (``device="cuda"``) it is the first-class GPU backend wherever TensorRT is not
installed: the level loop (`smgic_rt.methods.network`) keeps every array a torch CUDA tensor on one
stream, and the model runs on that stream (torch's current stream, which the loop sets).

With `torch_model` (the model definition, which the runtime owns and `training/` trains), the
only modules of `smgic_rt` that import torch. It rebuilds the model from the bundle's
``model_config`` and loads the bundle's ``weights.pt``; it works from an installed wheel, with no
source checkout.
"""

from __future__ import annotations

import numpy as np

from ..models.bundle import Bundle, BundleError
from ._base import Backend

__all__ = ["TorchBackend"]


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"the torch backend needs PyTorch (pip install torch): {error}") from error
    return torch


class TorchBackend(Backend):
    """Runs each level with the PyTorch model (float32).

    Parameters
    ----------
    bundle : Bundle
        Must contain ``weights.pt`` (``python -m export bundle`` writes it unless --no-weights).
    threads : int, optional
        ``torch.set_num_threads`` value (CPU).
    device : "cpu" or "cuda" (or "cuda:N")
        Where the model runs. On "cuda" `run_level` takes and returns torch CUDA tensors
        (``array_module = "torch"``); numpy inputs are refused there.
    """

    name = "torch"
    array_module = "torch"

    def __init__(self, bundle: Bundle, *, threads: int | None = None, device: str = "cpu"):
        super().__init__(bundle)
        torch = _import_torch()
        target = torch.device(device)
        if target.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if target.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the torch backend was asked for CUDA, but torch sees no CUDA device")
        self.device = target.type
        self.torch_device = str(target)
        from .torch_model import ModelConfig, SMGICNet

        self._torch = torch
        weights_path = bundle.file_path("weights.pt")
        if weights_path is None:
            raise ValueError(f"bundle {bundle.source} has no weights.pt; re-export without --no-weights "
                             "to use the torch backend")
        if threads is not None:
            torch.set_num_threads(int(threads))
        model = SMGICNet(ModelConfig.from_dict(bundle.config["model_config"]))
        try:
            state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as error:  # torch's own text advises weights_only=False: running arbitrary code
            raise BundleError(f"bundle {bundle.source}: weights.pt holds no weights for this model "
                              f"({type(error).__name__}); re-export the bundle") from None
        self.model = model.eval().to(target)
        self._levels = list(self.model.levels)
        if len(self._levels) != bundle.num_levels:
            raise ValueError(f"model has {len(self._levels)} levels, the bundle {bundle.num_levels}")

    def _run_level_impl(self, level, fixed, moving, velocity):
        torch = self._torch
        with torch.no_grad():
            if self.device == "cuda":
                inputs = tuple(a if isinstance(a, torch.Tensor) and a.is_cuda else _refuse_host(a)
                               for a in (fixed, moving, velocity))
                return self._levels[level - 1](*inputs)  # stays on the GPU, on the current stream
            out = self._levels[level - 1](*(torch.from_numpy(np.ascontiguousarray(a)) for a in (fixed, moving, velocity)))
        return out.numpy().astype(np.float32, copy=False)


def _refuse_host(array):
    raise TypeError(f"the torch backend on CUDA takes torch CUDA tensors, got {type(array).__name__}; "
                    "smgic_rt.methods.network.predict_velocity uploads them")
