"""Command-line tools: ``smgic-register`` and ``smgic-apply``.

    smgic-register FIXED MOVING -o OUTDIR [--moving-labels FILE] [--backend NAME] [--qc]
                   [--overwrite] [--bundle PATH] [--affine MODE] [--network MODE] [--refine MODE]
                   [--refine-seconds S] [--fields-grid compact|native] [--threads N] [--metric ncc|mind]
                   [--fixed-exclude MASK] [--moving-exclude MASK]
                   [--initial-transform T [--initial-format itk|fsl|lta|ras]] [--export fsl|lta]
    smgic-apply TRANSFORM REFERENCE INPUT OUTPUT [--interpolation linear|nearest|label]
    smgic-apply -t T [-t T ...] -r REFERENCE -i IN -o OUT [-i IN -o OUT ...] (smgic_rt.apply)

From a checkout: ``python -m smgic_rt.cli register ...`` / ``python -m smgic_rt.cli apply ...``.
Progress goes to stderr through logging. The exit status is 0 only on success: 1 for bad input
or a failed run (with a one-line reason), 2 for a malformed command line, 3 with --fail-on-flag
when the registration's QC flag (report.json) is warn or fail. Outputs are written
into a staging folder beside OUTDIR and renamed into place, so a failure leaves nothing;
--overwrite replaces only a folder that smgic wrote and that holds nothing else
(`smgic_rt.io.outputs`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import threading

from .process import registration_process

logger = logging.getLogger("smgic_rt")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # argparse's own code
EXIT_FLAGGED = 3  # --fail-on-flag: outputs written, but the QC flag is warn or fail


def _configure_logging(program: str, verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{program}: %(levelname)s: %(message)s"))
    root = logging.getLogger("smgic_rt")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # io.HeaderWarning (e.g. qform and sform disagree) reaches the user as a log line.
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers[:] = [handler]
    warnings_logger.propagate = False


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _add_register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixed", help="fixed image (.nii, .nii.gz, .mgz): defines the output grid")
    parser.add_argument("moving", help="moving image, any orientation / voxel size / field of view")
    parser.add_argument("-o", "--output", "--outdir", dest="outdir", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--moving-labels", help="label map in the moving space to warp with generic-label interpolation")
    parser.add_argument("--fixed-mask", help="brain mask on the fixed grid")
    parser.add_argument("--moving-mask", help="brain mask on the moving grid")
    parser.add_argument("--fixed-exclude", metavar="MASK",
                        help="cost-function mask on the fixed grid (nonzero = exclude: a lesion, an artefact): "
                             "those voxels are left out of the similarity, the transform stays smooth across them")
    parser.add_argument("--moving-exclude", metavar="MASK", help="the same on the moving grid")
    parser.add_argument("--initial-transform", metavar="T",
                        help="start from this fixed -> moving affine: ITK/ANTs .mat/.txt, FSL FLIRT .mat "
                             "(-in MOVING -ref FIXED), FreeSurfer .lta, or a 4x4 RAS text matrix; with --affine off "
                             "it is used as it is, otherwise the affine stage starts from it")
    parser.add_argument("--initial-format", choices=("itk", "fsl", "lta", "ras"),
                        help="format of --initial-transform (default: from its content; a 4x4 text .mat is FSL's)")
    parser.add_argument("--export", action="append", default=[], choices=("fsl", "lta"),
                        help="also write transforms for other tools: fsl (warp_fsl.nii.gz, inverse_warp_fsl.nii.gz "
                             "for applywarp --rel, affine_flirt.mat), lta (affine.lta for FreeSurfer); repeatable")
    add_model_arguments(parser)
    parser.add_argument("--refine-seconds", type=_positive_seconds, metavar="S",
                        help="stop the refinement after S seconds of wall-clock time (default: no limit; "
                             "its iteration counts are the budget, and a time limit makes results depend on load)")
    parser.add_argument("--fields-grid", default="compact", choices=("compact", "native"),
                        help="grid of warp.nii.gz / inverse_warp.nii.gz: the model lattice over each image "
                             "(compact, default) or each image's own grid (native, several times larger)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all cores, or OMP_NUM_THREADS)")
    parser.add_argument("--qc", action="store_true", help="also write qc.png and qc.html")
    parser.add_argument("--fail-on-flag", action="store_true",
                        help="exit 3 (outputs written) when the QC flag is warn or fail; default: a warning, exit 0")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTDIR if it exists")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The Registrar's options (backend, bundle, stages), shared by smgic-register and smgic-batch."""
    from .options import BACKENDS, METRICS, QUALITIES, STAGE_MODES

    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="inference backend (default: auto)")
    parser.add_argument("--bundle", help="model bundle folder or zip (default: the installed default bundle)")
    parser.add_argument("--quality", default="fast", choices=QUALITIES,
                        help="preset over the stages' options (smgic_rt.presets; default: fast)")
    parser.add_argument("--affine", default="auto", choices=STAGE_MODES, help="affine stage (default: auto)")
    parser.add_argument("--network", default="auto", choices=STAGE_MODES, help="the network stage (default: auto)")
    parser.add_argument("--refine", default="auto", choices=STAGE_MODES, help="refinement (default: auto)")
    parser.add_argument("--metric", default="ncc", choices=METRICS,
                        help="what the affine stage and the refinement compare: ncc (one contrast, default) or "
                             "mind (different contrasts: T2, PD, FLAIR, EPI onto T1)")


def _add_apply_arguments(parser: argparse.ArgumentParser) -> None:
    from . import apply

    apply.add_arguments(parser)


def registrar_from_args(args):
    """The `Registrar` that the command-line options ask for (smgic-register and smgic-batch)."""
    from .methods.refine import RefineOptions
    from .pipeline import FieldsOptions
    from .registrar import Registrar

    # Only the time limit is given: every other field stays the preset's.
    refine_options = None if args.refine_seconds is None else RefineOptions(max_seconds=args.refine_seconds)
    return Registrar(args.bundle, backend=args.backend, quality=args.quality, affine=args.affine, network=args.network,
                     refine=args.refine, metric=args.metric,
                     refine_options=refine_options, fields_options=FieldsOptions(grid=args.fields_grid),
                     threads=args.threads)


# What a registration imports after its inputs are read, slowest first (scipy.optimize is a
# large part of a cold start: docs/tuning.md).
_REGISTRATION_MODULES = ("scipy.optimize", "smgic_rt.registrar", "smgic_rt.methods.affine", "smgic_rt.methods.refine", "smgic_rt.qc.flags")


def _import_in_background(names) -> threading.Thread:
    """Import `names` in a thread while the caller reads its inputs: importing is Python code,
    which holds the GIL, and reading is mostly zlib and numpy, which release it, so the two
    overlap. A failing import is left for the caller's own import to report."""
    def work():
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001  (the main thread's import raises it properly)
                return

    thread = threading.Thread(target=work, name="smgic-imports", daemon=True)
    thread.start()
    return thread


def _run_register(args) -> int:
    from .geometry import ops
    from .pipeline import job

    imports = _import_in_background(_REGISTRATION_MODULES)
    # Every check that needs no model runs first, so bad input fails in well under a second.
    with ops.cpu_threads(args.threads):
        pair = job.load_pair(args.fixed, args.moving, moving_labels=args.moving_labels, fixed_mask=args.fixed_mask,
                             moving_mask=args.moving_mask, fixed_exclude=args.fixed_exclude,
                             moving_exclude=args.moving_exclude)
    outdir = job.check_output(pair, args.outdir, overwrite=args.overwrite)
    initial = None
    if args.initial_transform is not None:
        from .io.transform_formats import read_affine

        initial = read_affine(args.initial_transform, fmt=args.initial_format, fixed=pair.fixed, moving=pair.moving)
    imports.join()
    registrar = registrar_from_args(args)
    logger.info("backend %s, bundle %s", registrar.backend, registrar.bundle.id)
    result = job.run_pair(registrar, pair, outdir, overwrite=args.overwrite, qc=args.qc, initial=initial,
                          export=args.export)
    logger.info("wrote %s", outdir)
    flag = result.stats["flag"]
    if flag != "ok":
        logger.warning("QC flag %s: %s", flag, "; ".join(result.stats["flag_reasons"]))
        if args.fail_on_flag:
            return EXIT_FLAGGED
    return EXIT_OK


def _run_apply(args) -> int:
    from . import apply

    return apply.run(args, logger)


def _execute(program: str, run, args) -> int:
    _configure_logging(program, -1 if args.quiet else args.verbose)
    try:
        return run(args)
    except KeyboardInterrupt:
        logger.error("interrupted; no output written")
        return 130
    except Exception as error:  # every failure becomes one clear line and a non-zero status
        if args.verbose:
            logger.exception("failed")
        else:
            logger.error("%s: %s", type(error).__name__, error)
        return EXIT_FAILED


def register_main(argv=None) -> int:
    """Console script ``smgic-register``."""
    registration_process()
    parser = argparse.ArgumentParser(prog="smgic-register", description="Deformable registration of MOVING onto FIXED.")
    _add_register_arguments(parser)
    return _execute("smgic-register", _run_register, parser.parse_args(argv))


def apply_main(argv=None) -> int:
    """Console script ``smgic-apply``."""
    registration_process()
    parser = argparse.ArgumentParser(prog="smgic-apply", description="Resample INPUT onto REFERENCE through TRANSFORM.")
    _add_apply_arguments(parser)
    return _execute("smgic-apply", _run_apply, parser.parse_args(argv))


def main(argv=None) -> int:
    """``python -m smgic_rt.cli register|apply ...``."""
    registration_process()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m smgic_rt.cli", description="smgic_rt command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="register two images (smgic-register)")
    apply = commands.add_parser("apply", help="apply a transform (smgic-apply)")
    # Only the chosen command's options are built: smgic_rt.apply (and nibabel with it) is imported
    # for `apply` alone.
    if argv[:1] == ["register"]:
        _add_register_arguments(register)
    elif argv[:1] == ["apply"]:
        _add_apply_arguments(apply)
    args = parser.parse_args(argv)
    if args.command == "register":
        return _execute("smgic-register", _run_register, args)
    return _execute("smgic-apply", _run_apply, args)


if __name__ == "__main__":
    sys.exit(main())
