"""Model bundles shipped inside the package.

``smgic_rt/models/default/`` holds the default bundle (per-level ONNX graphs + ``config.json``,
written by ``python -m export bundle``); `smgic_rt.Registrar()` with no bundle loads it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_bundle_path", "has_default_bundle"]

_DEFAULT = Path(__file__).resolve().parent / "default"


def default_bundle_path() -> Path:
    """Folder of the default model bundle (it may be absent in a checkout without a trained model;
    see `has_default_bundle`)."""
    return _DEFAULT


def has_default_bundle() -> bool:
    """True when the default bundle's ``config.json`` is installed."""
    return (_DEFAULT / "config.json").is_file()
