"""How the peer tools are run: PICSL Greedy and ANTs SyN, the one definition shared by
benchmarks/accuracy.py (in process) and benchmarks/peers.py (one subprocess per run).

    python benchmarks/peer_tools.py greedy FIXED MOVING -o OUTDIR [--moving-labels L] [--threads 2]
    python benchmarks/peer_tools.py ants FIXED MOVING -o OUTDIR [--moving-labels L] [--threads 2]
    python benchmarks/peer_tools.py ants-best FIXED MOVING -o OUTDIR [--moving-labels L] [--threads 2]
    python benchmarks/peer_tools.py greedy FIXED MOVING -o OUTDIR --metric NMI   (another contrast)

Greedy (picsl-greedy, ../shared/ENVIRONMENT.md's brain commands): affine
``-a -dof 12 -m NCC 2x2x2 -ia-image-centers -n 100x50x10``, then deformable
``-m NCC 2x2x2 -it affine.mat -n 100x50x10``, ``-threads N``; the moving image resliced
linearly and its labels with ``-ri LABEL 0.2vox`` through ``warp.nii.gz affine.mat``.
Outputs: affine.mat, warp.nii.gz, warped.nii.gz, warped_labels.nii.gz. ``--metric`` replaces
``NCC 2x2x2`` in both stages (``NMI`` for pairs of different contrasts, benchmarks/contrasts.py).

ANTs: antspyx ``ants.registration(type_of_transform="SyN")`` (its defaults: Mattes mutual
information in the affine and the SyN stage; ``--metric`` names another of antspyx's
``aff_metric``/``syn_metric`` for both), image resliced
linearly and labels with ``genericLabel``. ``ants-best`` is ANTs as careful pipelines run it,
``type_of_transform="antsRegistrationSyN[s]"`` (antspyx's recreation of antsRegistrationSyN.sh:
rigid and affine with MI at 1000x500x250x100, then SyN with CC radius 2 at 100x70x50x20, shrink
8x4x2x1, full resolution included): about 30 minutes per 1 mm pair on 2 cores, so
benchmarks/ants_best.py runs it once per pair and keeps its results. Outputs: ANTs' own transform files (``syn_*``: the
affine, the warp and the inverse warp), warped.nii.gz, warped_labels.nii.gz.

Threads: Greedy's ``-threads``; ITK's ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` must be set before
``ants`` is first imported, which `run_ants_syn` checks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

TOOLS = ("greedy", "ants", "ants-best")
ANTS_TRANSFORMS = {"ants": "SyN", "ants-best": "antsRegistrationSyN[s]"}


GREEDY_METRIC = "NCC 2x2x2"
ANTS_METRIC = "mattes"


def greedy_commands(fixed, moving, outdir, moving_labels=None, threads: int = 2, metric: str = GREEDY_METRIC) -> list:
    """The Greedy command lines, in order: affine, deformable, reslice (`metric`: Greedy's ``-m``
    in both stages)."""
    out = Path(outdir)
    common = f"-d 3 -threads {int(threads)}"
    commands = [
        f"{common} -a -dof 12 -m {metric} -i {fixed} {moving} -o {out / 'affine.mat'} -ia-image-centers -n 100x50x10",
        f"{common} -m {metric} -i {fixed} {moving} -it {out / 'affine.mat'} -o {out / 'warp.nii.gz'} -n 100x50x10",
    ]
    reslice = f"{common} -rf {fixed} -ri LINEAR -rm {moving} {out / 'warped.nii.gz'}"
    if moving_labels is not None:
        reslice += f" -ri LABEL 0.2vox -rm {moving_labels} {out / 'warped_labels.nii.gz'}"
    commands.append(reslice + f" -r {out / 'warp.nii.gz'} {out / 'affine.mat'}")
    return commands


class StepClock:
    """Wall and CPU seconds of named steps; CPU seconds are the whole process's (every thread the
    tool starts), less sensitive than wall time to other work on a shared machine."""

    def __init__(self):
        self.seconds, self.cpu_seconds = {}, {}

    @contextlib.contextmanager
    def step(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - wall
            self.cpu_seconds[name] = time.process_time() - cpu

    def result(self, files: dict) -> dict:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "files": files}


@contextlib.contextmanager
def _stdout_to_devnull():
    """Greedy's optimisers print from C to file descriptor 1 whatever `out` says: silence it."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as quiet:
        os.dup2(quiet.fileno(), 1)
        try:
            yield quiet
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_greedy(fixed, moving, outdir, moving_labels=None, threads: int = 2, metric: str = GREEDY_METRIC) -> dict:
    """Run Greedy's brain commands; returns ``{"seconds": {step: s}, "cpu_seconds": {step: s}, "files": {...}}``."""
    from picsl_greedy import Greedy3D

    for name, path in (("fixed", fixed), ("moving", moving), ("moving_labels", moving_labels)):
        if path is not None and " " in str(path):
            raise ValueError(f"{name} path must not contain spaces (Greedy splits its command line), got {path!r}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    clock = StepClock()
    with _stdout_to_devnull() as quiet:
        for step, command in zip(("affine", "deformable", "reslice"),
                                 greedy_commands(fixed, moving, outdir, moving_labels, threads, metric)):
            with clock.step(step):
                Greedy3D().execute(command, out=quiet, err=quiet)
    files = {"affine": outdir / "affine.mat", "warp": outdir / "warp.nii.gz", "warped": outdir / "warped.nii.gz"}
    if moving_labels is not None:
        files["warped_labels"] = outdir / "warped_labels.nii.gz"
    return clock.result(files)


def run_ants_syn(fixed, moving, outdir, moving_labels=None, threads: int = 2, transform: str = "SyN",
                 metric: str = ANTS_METRIC) -> dict:
    """Run ``ants.registration(type_of_transform=transform)`` (default ``"SyN"``, antspyx's defaults)
    with `metric` as ``aff_metric`` and ``syn_metric``; returns ``{"seconds", "cpu_seconds", "files"}``."""
    set_threads = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    if "ants" not in sys.modules:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    elif set_threads != str(int(threads)):
        raise RuntimeError(f"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS must be {threads} before ants is imported, "
                           f"got {set_threads!r} with ants already imported")
    import ants

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    clock = StepClock()
    with clock.step("load"):
        fixed_image = ants.image_read(str(fixed))
        moving_image = ants.image_read(str(moving))
    with clock.step("registration"):
        registration = ants.registration(fixed=fixed_image, moving=moving_image, type_of_transform=transform,
                                         outprefix=str(outdir / "syn_"), aff_metric=metric, syn_metric=metric)
    with clock.step("reslice"):
        warped = ants.apply_transforms(fixed=fixed_image, moving=moving_image,
                                       transformlist=registration["fwdtransforms"], interpolator="linear")
        ants.image_write(warped, str(outdir / "warped.nii.gz"))
        files = {"warped": outdir / "warped.nii.gz",
                 "warp": Path(next(f for f in registration["fwdtransforms"] if f.endswith(".nii.gz"))),
                 "transforms": [Path(f) for f in registration["fwdtransforms"]]}
        if moving_labels is not None:
            labels = ants.image_read(str(moving_labels))
            warped_labels = ants.apply_transforms(fixed=fixed_image, moving=labels,
                                                  transformlist=registration["fwdtransforms"],
                                                  interpolator="genericLabel")
            ants.image_write(warped_labels, str(outdir / "warped_labels.nii.gz"))
            files["warped_labels"] = outdir / "warped_labels.nii.gz"
    return clock.result(files)


def run_ants_best(fixed, moving, outdir, moving_labels=None, threads: int = 2) -> dict:
    """ANTs at its best: ``antsRegistrationSyN[s]`` (see the module's docstring)."""
    return run_ants_syn(fixed, moving, outdir, moving_labels, threads, transform=ANTS_TRANSFORMS["ants-best"])


RUNNERS = {"greedy": run_greedy, "ants": run_ants_syn, "ants-best": run_ants_best}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", choices=TOOLS)
    parser.add_argument("fixed")
    parser.add_argument("moving")
    parser.add_argument("-o", "--output", dest="outdir", required=True)
    parser.add_argument("--moving-labels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--metric", help=f"greedy: -m of both stages (default {GREEDY_METRIC!r}); "
                                         f"ants: aff_metric and syn_metric (default {ANTS_METRIC!r})")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.metric is not None and args.tool == "ants-best":
        parser.error("--metric applies to greedy and ants; ants-best keeps antsRegistrationSyN[s]'s metrics")
    options = {} if args.metric is None else {"metric": args.metric}
    RUNNERS[args.tool](args.fixed, args.moving, args.outdir, args.moving_labels, args.threads, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
