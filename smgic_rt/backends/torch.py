"""torch backend: the PyTorch model itself, for reference and tests.

With `torch_model` (the model definition, which the runtime owns and `training/` trains), the
only modules of `smgic_rt` that import torch. It rebuilds the model from the bundle's
``model_config`` and loads the bundle's ``weights.pt``; it works from an installed wheel, with no
source checkout.
"""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle, BundleError
from ._base import Backend

__all__ = ["TorchBackend"]


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"the torch backend needs PyTorch (pip install torch): {error}") from error
    return torch


class TorchBackend(Backend):
    """Runs each level with the PyTorch model (CPU, float32).

    Parameters
    ----------
    bundle : Bundle
        Must contain ``weights.pt`` (``python -m export bundle`` writes it unless --no-weights).
    threads : int, optional
        ``torch.set_num_threads`` value.
    """

    name = "torch"

    def __init__(self, bundle: Bundle, *, threads: int | None = None):
        super().__init__(bundle)
        torch = _import_torch()
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
        self.model = model.eval()
        self._levels = list(self.model.levels)
        if len(self._levels) != bundle.num_levels:
            raise ValueError(f"model has {len(self._levels)} levels, the bundle {bundle.num_levels}")

    def _run_level_impl(self, level, fixed, moving, velocity):
        torch = self._torch
        with torch.no_grad():
            out = self._levels[level - 1](*(torch.from_numpy(np.ascontiguousarray(a)) for a in (fixed, moving, velocity)))
        return out.numpy().astype(np.float32, copy=False)
