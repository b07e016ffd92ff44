"""One registration as a list of stages over a per-pair state.

The stages and their order stand here, in `STAGE_ORDER`; `smgic_rt.Registrar` builds one object
per stage from its arguments and `run_stages` runs them, timing each and recording its
statistics in one shape::

    load -> affine -> preprocess -> network -> refine -> integrate -> fields -> resample -> quality

==========  =================================================  ================================
stage       reads                                              fills
==========  =================================================  ================================
load        fixed, moving (validated Volumes), masks          fixed_data, moving_data
affine      fixed_data, moving_data (native grids)             world_matrix
preprocess  fixed_data, moving_data, world_matrix             model_grid, images on it
network     images on model_grid (as trained)                  velocity, velocity_grid
refine      images on each level's grid, velocity              velocity, velocity_grid
integrate   velocity, velocity_grid                            forward_model, inverse_model
fields      forward/inverse_model, velocity_grid, world_matrix forward_ras, forward/inverse_field
resample    moving, forward_ras                                warped
quality     forward_ras, forward/inverse_model                 jacobian
==========  =================================================  ================================

Each stage returns its statistics; `run_stages` records them, and nothing else does.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .stages import (STAGE_MODES, AffineStage, FieldsOptions, FieldsStage, IntegrateStage, LoadStage, NetworkOptions,
                     NetworkStage, PreprocessOptions, PreprocessStage, QualityStage, RefineStage, ResampleStage, Stage,
                     check_mode, covering_lattice, volume_or_load)
from .state import Grid, PairState

__all__ = ["PairState", "Grid", "Stage", "STAGE_ORDER", "STAGE_MODES", "SWITCHABLE_STAGES", "run_stages", "jsonable",
           "check_mode", "volume_or_load", "FieldsOptions", "covering_lattice", "LoadStage", "AffineStage",
           "PreprocessStage", "PreprocessOptions", "NetworkStage", "NetworkOptions", "RefineStage", "IntegrateStage",
           "FieldsStage", "ResampleStage", "QualityStage"]

logger = logging.getLogger("smgic_rt")

STAGE_ORDER = ("load", "affine", "preprocess", "network", "refine", "integrate", "fields", "resample", "quality")
SWITCHABLE_STAGES = ("affine", "network", "refine")


def run_stages(stages, state: PairState) -> dict:
    """Run `stages` (in `STAGE_ORDER`) on `state`; returns, per stage,
    ``{"mode", "ran", "seconds", "stats"}`` (stats JSON-safe; None for a stage that was off)."""
    names = [stage.name for stage in stages]
    if names != [name for name in STAGE_ORDER if name in names]:
        raise ValueError(f"stages must run in the order {list(STAGE_ORDER)}, got {names}")
    records = {}
    for stage in stages:
        if not stage.enabled:
            records[stage.name] = {"mode": stage.mode, "ran": False, "seconds": 0.0, "stats": None}
            if getattr(stage, "not_run_reason", None):  # "auto" decided against it: say why
                records[stage.name]["reason"] = stage.not_run_reason
            continue
        logger.info("%s ...", stage.name)
        start = time.perf_counter()
        stats = stage.run(state)
        if not isinstance(stats, dict):
            raise TypeError(f"the {stage.name} stage must return its statistics as a dict, got {type(stats).__name__}")
        elapsed = time.perf_counter() - start
        logger.info("%s done in %.3f s", stage.name, elapsed)
        records[stage.name] = {"mode": stage.mode, "ran": True, "seconds": elapsed, "stats": jsonable(stats)}
    return records


def jsonable(value):
    """Statistics made JSON-safe (numpy scalars/arrays to Python, non-finite floats to None)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    raise TypeError(f"stage statistics must be JSON-like, got {type(value).__name__}")
