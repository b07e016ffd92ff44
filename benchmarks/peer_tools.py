"""How the peer tools are run: PICSL Greedy and ANTs SyN, the one definition shared by
benchmarks/accuracy.py (in process) and benchmarks/peers.py (one subprocess per run).

    python benchmarks/peer_tools.py greedy FIXED MOVING -o OUTDIR [--moving-labels L] [--threads 2]
    python benchmarks/peer_tools.py ants FIXED MOVING -o OUTDIR [--moving-labels L] [--threads 2]
    python benchmarks/peer_tools.py ants-best FIXED MOVING -o OUTDIR [--moving-labels L] [--threads 2]

Greedy (picsl-greedy, ../shared/ENVIRONMENT.md's brain commands): affine
``-a -dof 12 -m NCC 2x2x2 -ia-image-centers -n 100x50x10``, then deformable
``-m NCC 2x2x2 -it affine.mat -n 100x50x10``, ``-threads N``; the moving image resliced
linearly and its labels with ``-ri LABEL 0.2vox`` through ``warp.nii.gz affine.mat``.
Outputs: affine.mat, warp.nii.gz, warped.nii.gz, warped_labels.nii.gz.

ANTs: antspyx ``ants.registration(type_of_transform="SyN")`` (its defaults), image resliced
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


def greedy_commands(fixed, moving, outdir, moving_labels=None, threads: int = 2) -> list:
    """The Greedy command lines, in order: affine, deformable, reslice."""
    out = Path(outdir)
    common = f"-d 3 -threads {int(threads)}"
    commands = [
        f"{common} -a -dof 12 -m NCC 2x2x2 -i {fixed} {moving} -o {out / 'affine.mat'} -ia-image-centers -n 100x50x10",
        f"{common} -m NCC 2x2x2 -i {fixed} {moving} -it {out / 'affine.mat'} -o {out / 'warp.nii.gz'} -n 100x50x10",
    ]
    reslice = f"{common} -rf {fixed} -ri LINEAR -rm {moving} {out / 'warped.nii.gz'}"
    if moving_labels is not None:
        reslice += f" -ri LABEL 0.2vox -rm {moving_labels} {out / 'warped_labels.nii.gz'}"
    commands.append(reslice + f" -r {out / 'warp.nii.gz'} {out / 'affine.mat'}")
    return commands


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


def run_greedy(fixed, moving, outdir, moving_labels=None, threads: int = 2) -> dict:
    """Run Greedy's brain commands; returns ``{"seconds": {step: s}, "files": {...}}``."""
    from picsl_greedy import Greedy3D

    for name, path in (("fixed", fixed), ("moving", moving), ("moving_labels", moving_labels)):
        if path is not None and " " in str(path):
            raise ValueError(f"{name} path must not contain spaces (Greedy splits its command line), got {path!r}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    with _stdout_to_devnull() as quiet:
        for step, command in zip(("affine", "deformable", "reslice"),
                                 greedy_commands(fixed, moving, outdir, moving_labels, threads)):
            start = time.perf_counter()
            Greedy3D().execute(command, out=quiet, err=quiet)
            seconds[step] = time.perf_counter() - start
    files = {"affine": outdir / "affine.mat", "warp": outdir / "warp.nii.gz", "warped": outdir / "warped.nii.gz"}
    if moving_labels is not None:
        files["warped_labels"] = outdir / "warped_labels.nii.gz"
    return {"seconds": seconds, "files": files}


def run_ants_syn(fixed, moving, outdir, moving_labels=None, threads: int = 2, transform: str = "SyN") -> dict:
    """Run ``ants.registration(type_of_transform=transform)`` (default ``"SyN"``, antspyx's defaults);
    returns ``{"seconds", "files"}``."""
    set_threads = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    if "ants" not in sys.modules:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))
    elif set_threads != str(int(threads)):
        raise RuntimeError(f"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS must be {threads} before ants is imported, "
                           f"got {set_threads!r} with ants already imported")
    import ants

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    start = time.perf_counter()
    fixed_image = ants.image_read(str(fixed))
    moving_image = ants.image_read(str(moving))
    seconds["load"] = time.perf_counter() - start
    start = time.perf_counter()
    registration = ants.registration(fixed=fixed_image, moving=moving_image, type_of_transform=transform,
                                     outprefix=str(outdir / "syn_"))
    seconds["registration"] = time.perf_counter() - start
    start = time.perf_counter()
    warped = ants.apply_transforms(fixed=fixed_image, moving=moving_image, transformlist=registration["fwdtransforms"],
                                   interpolator="linear")
    ants.image_write(warped, str(outdir / "warped.nii.gz"))
    files = {"warped": outdir / "warped.nii.gz",
             "warp": Path(next(f for f in registration["fwdtransforms"] if f.endswith(".nii.gz"))),
             "transforms": [Path(f) for f in registration["fwdtransforms"]]}
    if moving_labels is not None:
        labels = ants.image_read(str(moving_labels))
        warped_labels = ants.apply_transforms(fixed=fixed_image, moving=labels,
                                              transformlist=registration["fwdtransforms"], interpolator="genericLabel")
        ants.image_write(warped_labels, str(outdir / "warped_labels.nii.gz"))
        files["warped_labels"] = outdir / "warped_labels.nii.gz"
    seconds["reslice"] = time.perf_counter() - start
    return {"seconds": seconds, "files": files}


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
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    RUNNERS[args.tool](args.fixed, args.moving, args.outdir, args.moving_labels, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
