"""Model bundles shipped inside the package.

``smgic_rt/models/default/`` holds the default bundle (per-level ONNX graphs + ``config.json``,
written by ``python -m export bundle``); `smgic_rt.Registrar()` with no bundle loads it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_bundle_path", "has_default_bundle", "DEFAULT_BUNDLE_ID"]

_DEFAULT = Path(__file__).resolve().parent / "default"

# The id (sha256 of default/checksums.sha256, which covers config.json and every file) of the
# default bundle this release ships. `smgic_rt.models.bundle.load_bundle` refuses the default folder
# with any other id, so an edited default is refused even when its checksum file was rewritten
# to match. Retraining the default means exporting it, then updating this line in the same commit.
DEFAULT_BUNDLE_ID = "sha256:fbd2b4e1f4b997b247362c1aea2c0feb16e857bdbbabdb8cafad8b00351f9e31"


def default_bundle_path() -> Path:
    """Folder of the default model bundle (it may be absent in a checkout without a trained model;
    see `has_default_bundle`)."""
    return _DEFAULT


def has_default_bundle() -> bool:
    """True when the default bundle's ``config.json`` is installed."""
    return (_DEFAULT / "config.json").is_file()
