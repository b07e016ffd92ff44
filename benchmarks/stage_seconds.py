"""Wall and CPU seconds of each part of one ``smgic-register`` run, in process: loading, every
stage, and each step of saving (one JSON line per run on stdout).

    python benchmarks/stage_seconds.py FIXED MOVING OUTDIR [smgic-register options...]
    python benchmarks/stage_seconds.py $P/fixed.nii.gz $P/moving.nii.gz /tmp/out --moving-labels $P/moving_labels.nii.gz --threads 1

CPU seconds (``time.process_time``: every thread of the process) beside wall seconds, since on a
shared machine wall time says more about the neighbours than about the code. The modules are
imported before the run (to time their functions), so "imports" here is their cost in one piece,
not the part of it a plain run leaves on the critical path; each run replaces OUTDIR as
``--overwrite`` does (only a folder smgic wrote).
"""

from __future__ import annotations

import json
import resource
import sys
import time

from smgic_rt.process import registration_process

registration_process()  # as the console scripts do, before numpy loads

_start = time.perf_counter(), time.process_time()
import smgic_rt.cli as cli  # noqa: E402
from smgic_rt import io, registrar  # noqa: E402
from smgic_rt.geometry import transforms  # noqa: E402
from smgic_rt.io import outputs  # noqa: E402
from smgic_rt.pipeline import job, stages  # noqa: E402

RECORDS: dict = {"imports": [time.perf_counter() - _start[0], time.process_time() - _start[1]]}
STAGES = ("AffineStage", "PreprocessStage", "NetworkStage", "RefineStage", "IntegrateStage", "FieldsStage",
          "ResampleStage", "QualityStage")


def _timed(owner, attribute: str, key: str) -> None:
    """Replace ``owner.attribute`` by a wrapper that adds its wall and CPU seconds to `key`."""
    function = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            record = RECORDS.setdefault(key, [0.0, 0.0])
            record[0] += time.perf_counter() - wall
            record[1] += time.process_time() - cpu

    setattr(owner, attribute, wrapper)


def main(argv) -> None:
    if len(argv) < 3:
        sys.exit(__doc__)
    fixed, moving, outdir, *options = argv
    _timed(job, "load_pair", "load")
    _timed(io, "load_volume", "load: images")
    _timed(io, "load_label_map", "load: labels")
    for name in STAGES:
        _timed(getattr(stages, name), "run", name[: -len("Stage")].lower())
    _timed(registrar.RegistrationResult, "assess", "QC flags (register and save)")
    _timed(registrar.RegistrationResult, "save", "save")
    _timed(registrar.RegistrationResult, "apply", "save: label warp")
    _timed(io, "save_image_atomic", "save: images")
    _timed(transforms, "write_itk_affine", "save: affine.mat")
    _timed(outputs, "write_manifest", "save: manifest")
    wall, cpu = time.perf_counter(), time.process_time()
    status = cli.main(["register", fixed, moving, "-o", outdir, "--overwrite", "-q", *options])
    RECORDS["total in process"] = [time.perf_counter() - wall, time.process_time() - cpu]
    RECORDS["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    RECORDS["exit_status"] = status
    print(json.dumps(RECORDS))


if __name__ == "__main__":
    main(sys.argv[1:])
