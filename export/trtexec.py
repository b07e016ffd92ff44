"""The `trtexec` command lines equivalent to `python -m export tensorrt`."""

from __future__ import annotations

import shlex
from pathlib import Path

from smgic_rt.backends.tensorrt import engine_file_name, level_profile_shapes
from smgic_rt.models.bundle import LEVEL_INPUT_NAMES, Bundle

__all__ = ["trtexec_commands"]


def _shape_list(profile: dict, which: str) -> str:
    return ",".join(f"{name}:" + "x".join(str(n) for n in profile[name][which]) for name in LEVEL_INPUT_NAMES)


def trtexec_commands(bundle: Bundle, *, fp16: bool = False, engine_dir=None, batch=(1, 1, 1),
                     workspace_gb: float | None = None) -> list[str]:
    """One ``trtexec`` line per level, naming every input's min/opt/max shape.

    The engines trtexec writes are raw (no smgic_rt header), so the runtime does not load
    them directly; the lines are for inspecting and timing TensorRT on the bundle's graphs.
    """
    precision = "fp16" if fp16 else "fp32"
    engine_dir = Path(engine_dir) if engine_dir is not None else bundle.path / "engines"
    lines = []
    for level, onnx_path in enumerate(bundle.level_paths, start=1):
        profile = level_profile_shapes(bundle, level, tuple(batch))
        parts = [
            "trtexec",
            f"--onnx={onnx_path}",
            f"--saveEngine={engine_dir / engine_file_name(level, precision).replace('.engine', '.trtexec.engine')}",
            f"--minShapes={_shape_list(profile, 'min')}",
            f"--optShapes={_shape_list(profile, 'opt')}",
            f"--maxShapes={_shape_list(profile, 'max')}",
            f"--shapes={_shape_list(profile, 'opt')}",
        ]
        if workspace_gb is not None:
            parts.append(f"--memPoolSize=workspace:{int(workspace_gb * 1024)}M")
        if fp16:
            parts.append("--fp16")
        lines.append(" ".join(shlex.quote(p) for p in parts))
    return lines
