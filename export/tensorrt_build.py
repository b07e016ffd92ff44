"""``python -m export tensorrt``: one engine per level, with the smgic_rt header."""

from __future__ import annotations

from pathlib import Path

from smgic_rt.backends.tensorrt import (build_engine, engine_file_name, level_profile_shapes,
                                        make_engine_header, runtime_platform, write_engine_file)
from smgic_rt.models.bundle import load_bundle

__all__ = ["build_engines"]


def build_engines(bundle_path, *, fp16: bool = False, workspace_gb: float = 4.0, engine_dir=None,
                  batch=(1, 1, 1)) -> list[Path]:
    """Build and write ``levelK.<precision>.engine`` for every level; returns the paths."""
    bundle = load_bundle(bundle_path)
    platform = runtime_platform()  # raises ImportError with a clear message without TensorRT
    precision = "fp16" if fp16 else "fp32"
    engine_dir = Path(engine_dir) if engine_dir is not None else bundle.path / "engines"
    paths = []
    for level in range(1, bundle.num_levels + 1):
        profile = level_profile_shapes(bundle, level, tuple(batch))
        engine = build_engine(bundle.level_paths[level - 1], profile=profile, precision=precision,
                              workspace_gb=workspace_gb)
        header = make_engine_header(platform=platform, precision=precision, bundle=bundle, level=level,
                                    profile=profile)
        paths.append(write_engine_file(engine_dir / engine_file_name(level, precision), header, engine))
    return paths
