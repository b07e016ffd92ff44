"""smgic_rt: fast deformable registration of 3-D brain MRI (SM-GICNet).

`from smgic_rt import Registrar` is the entry point; `smgic_rt.geometry.ops` exposes the kernels.
Heavy modules load on first use so that `import smgic_rt.geometry.ops` stays light.
"""

__version__ = "0.1.0"

from ._moved import install as _install_moved_names

_install_moved_names()

__all__ = ["Registrar", "RegistrationResult", "__version__"]


def __getattr__(name):
    # Lazy so that importing the kernels does not pull in onnxruntime and the runtime.
    if name in ("Registrar", "RegistrationResult"):
        from . import registrar

        return getattr(registrar, name)
    raise AttributeError(f"module 'smgic_rt' has no attribute {name!r}")
