"""Checkpoint -> model bundle (per-level ONNX + config.json) -> TensorRT engines.

Run as ``python -m export {bundle,tensorrt,trtexec-cmd} ...`` from a source checkout; see
``python -m export --help``.
"""

from pathlib import Path as _Path

__all__ = ["tiny_model_config", "write_random_bundle"]

# Small enough for tests (a level-4 graph of a few hundred kB, export + parity in seconds on
# one core); 6 mm voxels so that the 32^3 grid still covers a whole brain.
TINY_GRID = (32, 32, 32)
TINY_SPACING = 6.0
TINY_CHANNELS = 8


def tiny_model_config(*, grid_shape=TINY_GRID, spacing=TINY_SPACING, channels=TINY_CHANNELS, **overrides) -> dict:
    """The model's default config with a small grid and channel count, as a dict."""
    import dataclasses

    from smgic_rt.backends.torch_model import ModelConfig

    names = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {"grid_shape": tuple(grid_shape), "spacing": (float(spacing),) * 3, "channels": channels, **overrides}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"model config has no fields {unknown}; fields: {sorted(names)}")
    return dataclasses.replace(ModelConfig(), **values).to_dict()


def write_random_bundle(folder, *, seed: int = 0, overwrite: bool = False, **config_overrides) -> _Path:
    """Export a freshly initialised tiny model (see `tiny_model_config`) to `folder`.

    The parity check runs as for any export (real brain pair, onnxruntime vs torch).
    """
    import torch

    from .bundle_export import export_bundle
    from .model_adapter import build_model

    config = tiny_model_config(**config_overrides)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    return export_bundle(model, folder, provenance={"source": "random initialisation", "seed": seed},
                         overwrite=overwrite)
