"""The one place that knows how `training.model` is shaped: config, level modules, checkpoints.

`training/model.py` is owned by the training package; the export and the torch backend reach
it only through these functions, so an interface change there is fixed here once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["import_training_model", "model_config_dict", "grid_shape", "spacing", "integration_steps",
           "level_modules", "record_levels", "build_model", "load_checkpoint_model",
           "random_model_from_config_file", "torch_final_displacement"]


def import_training_model():
    try:
        from training import model as training_model
    except ImportError as error:
        raise ImportError(
            "exporting needs the `training` package of a smgic_rt source checkout (run from the "
            f"repository root, with torch installed): {error}"
        ) from error
    return training_model


def _config_class(training_model):
    for name in ("ModelConfig", "SMGICConfig", "Config", "NetworkConfig"):
        cls = getattr(training_model, name, None)
        if cls is not None and hasattr(cls, "from_dict"):
            return cls
    raise ImportError("training.model has no config dataclass with from_dict (expected ModelConfig)")


def _model_class(training_model):
    for name in ("SMGICNet", "SMGICNetwork", "SM_GICNet", "Model"):
        cls = getattr(training_model, name, None)
        if cls is not None:
            return cls
    raise ImportError("training.model has no model class (expected SMGICNet)")


def model_config_dict(model) -> dict:
    return dict(model.config.to_dict())


def _three(value, name):
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 3
    if len(values) != 3:
        raise ValueError(f"model config {name} must have 3 entries, got {value!r}")
    return values


def grid_shape(model):
    return _three(model.config.grid_shape, "grid_shape")


def spacing(model):
    return _three(model.config.spacing, "spacing")


def integration_steps(model) -> int:
    config = model.config
    for name in ("integration_steps", "steps"):
        if hasattr(config, name):
            return int(getattr(config, name))
    return 7


def level_modules(model) -> list:
    """Per-level networks, level 1 (coarsest) first: ``forward(fixed, moving, velocity) -> velocity``."""
    for name in ("levels", "level_nets", "level_networks", "nets"):
        modules = getattr(model, name, None)
        if modules is not None:
            return list(modules)
    raise AttributeError("training model exposes no per-level modules (expected .levels)")


def record_levels(model, fixed: np.ndarray, moving: np.ndarray) -> list[dict]:
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


def build_model(config_dict: dict):
    training_model = import_training_model()
    config = _config_class(training_model).from_dict(config_dict)
    return _model_class(training_model)(config)


def load_checkpoint_model(path):
    """Model and provenance from a training checkpoint (plain dicts/tensors, weights_only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise ValueError(f"checkpoint {path} could not be read: {error}") from error
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


def torch_final_displacement(model, fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """The torch model's forward displacement ``exp(v_L)`` ``(3, X, Y, Z)`` for one pair: its
    final-level velocity integrated with the training package's own torch scaling and squaring."""
    import torch

    training_model = import_training_model()
    integrate = None
    for name in ("integrate_velocity", "scaling_and_squaring", "integrate"):
        integrate = getattr(training_model, name, None)
        if integrate is not None:
            break
    if integrate is None:
        raise ImportError("training.model has no torch integrate_velocity function")
    records = record_levels(model, fixed, moving)
    velocity = torch.from_numpy(records[-1]["output"][:1])
    displacement = integrate(velocity, integration_steps(model))
    return displacement[0].detach().cpu().numpy().astype(np.float32)
