"""torch backend: the training model itself, for reference and tests.

The only module of `smgic_rt` that imports torch. It rebuilds the model from the bundle's
``model_config`` with `training.model` (from a source checkout, not part of the wheel) and
loads ``weights.pt`` from the bundle.
"""

from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ._base import Backend

__all__ = ["TorchBackend"]


def _import_torch_and_model_builder():
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"the torch backend needs PyTorch (pip install torch): {error}") from error
    try:
        from export.model_adapter import build_model, level_modules
    except ImportError as error:
        raise ImportError(
            "the torch backend is the training model: it needs the `training` and `export` "
            "packages of a smgic_rt source checkout on sys.path (run from the repository root); "
            f"import failed: {error}"
        ) from error
    return torch, build_model, level_modules


class TorchBackend(Backend):
    """Runs each level with the PyTorch training model (CPU, float32).

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
        torch, build_model, level_modules = _import_torch_and_model_builder()
        self._torch = torch
        weights_path = bundle.file_path("weights.pt")
        if weights_path is None:
            raise ValueError(f"bundle {bundle.source} has no weights.pt; re-export without --no-weights "
                             "to use the torch backend")
        if threads is not None:
            torch.set_num_threads(int(threads))
        model = build_model(bundle.config["model_config"])
        state = torch.load(str(weights_path), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self.model = model.eval()
        self._levels = level_modules(self.model)
        if len(self._levels) != bundle.num_levels:
            raise ValueError(f"model has {len(self._levels)} levels, the bundle {bundle.num_levels}")

    def _run_level_impl(self, level, fixed, moving, velocity):
        torch = self._torch
        with torch.no_grad():
            out = self._levels[level - 1](*(torch.from_numpy(np.ascontiguousarray(a)) for a in (fixed, moving, velocity)))
        return out.numpy().astype(np.float32, copy=False)
