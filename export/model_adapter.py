"""What export needs of the torch model, whose definition the runtime owns
(`smgic_rt.backends.torch_model`: the torch backend runs it, training trains it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from smgic_rt.backends.torch_model import ModelConfig, SMGICNet, integrate_velocity

__all__ = ["build_model", "level_modules", "record_levels", "load_checkpoint_model",
           "random_model_from_config_file", "torch_final_displacement"]


def build_model(config_dict: dict) -> SMGICNet:
    return SMGICNet(ModelConfig.from_dict(config_dict))


def level_modules(model: SMGICNet) -> list:
    """Per-level networks, level 1 (coarsest) first: ``forward(fixed, moving, velocity) -> velocity``."""
    return list(model.levels)


def record_levels(model: SMGICNet, fixed: np.ndarray, moving: np.ndarray) -> list[dict]:
    """Run the torch model on one pair; return per level the inputs it gave the level network
    and the velocity it got back (first call per level: the fixed->moving direction)."""
    import torch

    modules = level_modules(model)
    records: list = [None] * len(modules)
    handles = []

    def make_hook(index):
        def hook(_module, args, output):
            if records[index] is None:
                records[index] = {
                    "inputs": [a.detach().cpu().numpy().astype(np.float32, copy=True) for a in args],
                    "output": output.detach().cpu().numpy().astype(np.float32, copy=True),
                }
        return hook

    for index, module in enumerate(modules):
        handles.append(module.register_forward_hook(make_hook(index)))
    try:
        fixed_t = torch.from_numpy(np.ascontiguousarray(fixed, dtype=np.float32))[None, None]
        moving_t = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None, None]
        model(fixed_t, moving_t)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i + 1 for i, r in enumerate(records) if r is None]
    if missing:
        raise RuntimeError(f"the torch model's forward never ran levels {missing}")
    return records


def load_checkpoint_model(path):
    """Model and provenance from a training checkpoint (plain dicts/tensors, weights_only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        # Not torch's own text: it advises weights_only=False, i.e. running arbitrary code.
        raise ValueError(f"checkpoint {path} could not be read as a smgic_rt training checkpoint "
                         f"({type(error).__name__}); it is damaged or not a checkpoint") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} must hold a dict, got {type(checkpoint).__name__}")
    config = checkpoint.get("config") or checkpoint.get("model_config")
    weights = checkpoint.get("model") or checkpoint.get("state_dict") or checkpoint.get("weights")
    if config is None or weights is None:
        raise ValueError(f"checkpoint {path} lacks 'config' and model weights; keys: {sorted(checkpoint)}")
    model = build_model(config)
    model.load_state_dict(weights)
    provenance = {"checkpoint": path.name}
    for key in ("schema_version", "step", "provenance", "data_provenance", "seed"):
        if key in checkpoint:
            value = checkpoint[key]
            provenance[key] = value if isinstance(value, (int, float, str, list, dict, type(None))) else str(value)
    return model.eval(), provenance


def random_model_from_config_file(path, *, seed: int = 0):
    import torch

    config = json.loads(Path(path).read_text())
    torch.manual_seed(seed)
    model = build_model(config)
    return model.eval(), {"source": "random initialisation", "seed": seed, "config_file": Path(path).name}


def torch_final_displacement(model: SMGICNet, fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """The torch model's forward displacement ``exp(v_L)`` ``(3, X, Y, Z)`` for one pair: its
    final-level velocity integrated with the torch scaling and squaring."""
    import torch

    records = record_levels(model, fixed, moving)
    velocity = torch.from_numpy(records[-1]["output"][:1])
    displacement = integrate_velocity(velocity, model.config.integration_steps)
    return displacement[0].detach().cpu().numpy().astype(np.float32)
