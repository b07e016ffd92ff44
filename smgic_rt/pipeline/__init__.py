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
preprocess  fixed_data, moving_data, world_matrix             model_affine, fixed/moving_model
network     fixed_model, moving_model                          velocity
refine      fixed_model, moving_model, velocity                velocity
integrate   velocity                                           forward_model, inverse_model
fields      forward/inverse_model, model_affine, world_matrix  forward_ras, forward/inverse_field
resample    moving, forward_ras                                warped
quality     forward_ras, forward/inverse_model, fixed_model    jacobian, quality
==========  =================================================  ================================
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .stages import (STAGE_MODES, AffineStage, FieldsOptions, FieldsStage, covering_lattice, IntegrateStage, LoadStage, NetworkOptions, NetworkStage,
                     PreprocessStage, QualityStage, RefineStage, ResampleStage, Stage, check_mode,
                     volume_or_load)
from .state import PairState

__all__ = ["PairState", "Stage", "STAGE_ORDER", "STAGE_MODES", "SWITCHABLE_STAGES", "run_stages", "jsonable",
           "check_mode", "volume_or_load", "FieldsOptions", "covering_lattice", "LoadStage", "AffineStage", "PreprocessStage", "NetworkStage", "NetworkOptions",
           "RefineStage", "IntegrateStage", "FieldsStage", "ResampleStage", "QualityStage"]

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
