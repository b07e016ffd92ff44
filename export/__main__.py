"""``python -m export {bundle,checksums,profile,tensorrt,trtexec-cmd}``: see ``python -m export --help``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _shape_triplet(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bundle", help="checkpoint -> per-level ONNX bundle (parity-checked against PyTorch)")
    b.add_argument("checkpoint", nargs="?", help="training checkpoint (.pt); omit with --random-init")
    b.add_argument("-o", "--output", required=True, help="bundle folder to create")
    b.add_argument("--opset", type=int, default=20)
    b.add_argument("--fp16-weights", action="store_true", help="store weights as float16 (compute stays float32)")
    b.add_argument("--random-init", metavar="CONFIG_JSON",
                   help="export a freshly initialised model built from this model-config JSON (tests, smoke runs)")
    b.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    b.add_argument("--tolerance", type=float, default=None, help="max relative error per level (default 1e-4)")
    b.add_argument("--no-weights", action="store_true", help="do not store weights.pt (torch backend needs it)")
    b.add_argument("--overwrite", action="store_true")

    s = sub.add_parser(
        "checksums",
        help="(re)write BUNDLE/checksums.sha256, covering config.json and every listed file, and print the bundle id",
        description="Seal a bundle folder: checks that every file config.json lists has the sha256 it records, then "
                    "writes checksums.sha256 over config.json and those files. Use it for a bundle made before "
                    "checksums.sha256 existed, or after deliberately editing config.json (the id changes).",
    )
    s.add_argument("bundle", help="bundle folder")

    p = sub.add_parser(
        "profile",
        help="record in BUNDLE how many network levels pay for their time on a device, from a measurement",
        description="Writes config.json's profiles[DEVICE] = {levels, measurement} from a report of "
                    "benchmarks/network_levels.py (its chosen_levels and per-set Dice and seconds), then reseals the "
                    "bundle (checksums.sha256; the bundle id changes). Registrar(network='auto') runs that many "
                    "levels on that device.",
    )
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--from", dest="report", required=True, help="benchmarks/network_levels.py --json report")

    t = sub.add_parser("tensorrt", help="build one TensorRT engine per level (needs TensorRT and a GPU)")
    t.add_argument("bundle")
    t.add_argument("--fp16", action="store_true")
    t.add_argument("--workspace-gb", type=float, default=4.0)
    t.add_argument("--engine-dir", default=None, help="default: BUNDLE/engines")
    for which in ("min", "opt", "max"):
        t.add_argument(f"--{which}-batch", type=_shape_triplet, default=1,
                       help=f"{which} batch size of the optimisation profile (spatial shapes are fixed by the bundle)")

    c = sub.add_parser("trtexec-cmd", help="print the equivalent trtexec command lines")
    c.add_argument("bundle")
    c.add_argument("--fp16", action="store_true")
    c.add_argument("--workspace-gb", type=float, default=None)
    c.add_argument("--engine-dir", default=None)
    for which in ("min", "opt", "max"):
        c.add_argument(f"--{which}-batch", type=_shape_triplet, default=1)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "bundle":
            from .bundle_export import export_bundle
            from .model_adapter import load_checkpoint_model, random_model_from_config_file

            if (args.checkpoint is None) == (args.random_init is None):
                raise ValueError("give exactly one of CHECKPOINT or --random-init CONFIG_JSON")
            if args.random_init is not None:
                model, provenance = random_model_from_config_file(args.random_init, seed=args.seed)
            else:
                model, provenance = load_checkpoint_model(args.checkpoint)
            path = export_bundle(model, args.output, opset=args.opset, fp16_weights=args.fp16_weights,
                                 provenance=provenance, tolerance=args.tolerance,
                                 include_weights=not args.no_weights, overwrite=args.overwrite)
            from smgic_rt.models.bundle import load_bundle

            bundle = load_bundle(path)
            errors = bundle.config["exporter"]["parity"]["max_relative_error_per_level"]
            sys.stdout.write(f"wrote {path} ({bundle.id}); max relative error per level: "
                             + ", ".join(f"{e:.2e}" for e in errors) + "\n")
        elif args.command == "checksums":
            from smgic_rt.models.bundle import load_bundle, write_checksums

            bundle_id = write_checksums(args.bundle)
            load_bundle(args.bundle, expected_id=bundle_id)  # what was written verifies as a whole
            sys.stdout.write(f"wrote {args.bundle}/checksums.sha256 ({bundle_id})\n")
        elif args.command == "profile":
            from .bundle_export import record_profile

            bundle_id, levels = record_profile(args.bundle, args.device, args.report)
            sys.stdout.write(f"{args.bundle}: {args.device} profile runs {levels} level(s); bundle id {bundle_id}\n")
            from smgic_rt import models

            if Path(args.bundle).resolve() == models.default_bundle_path().resolve():
                sys.stdout.write(f"this is the default bundle: set smgic_rt.models.DEFAULT_BUNDLE_ID = {bundle_id!r}\n")
        elif args.command == "tensorrt":
            from .tensorrt_build import build_engines

            paths = build_engines(args.bundle, fp16=args.fp16, workspace_gb=args.workspace_gb,
                                  engine_dir=args.engine_dir, batch=(args.min_batch, args.opt_batch, args.max_batch))
            sys.stdout.write("".join(f"wrote {p}\n" for p in paths))
        elif args.command == "trtexec-cmd":
            from smgic_rt.models.bundle import load_bundle

            from .trtexec import trtexec_commands

            lines = trtexec_commands(load_bundle(args.bundle), fp16=args.fp16, engine_dir=args.engine_dir,
                                     batch=(args.min_batch, args.opt_batch, args.max_batch),
                                     workspace_gb=args.workspace_gb)
            sys.stdout.write("\n".join(lines) + "\n")
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as error:
        sys.stderr.write(f"python -m export {args.command}: error: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
