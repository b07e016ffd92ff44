"""python -m training: train SM-GICNet progressively and write resumable checkpoints.

Paper-size model on a GPU machine (160x192x160 at 1 mm, the paper's iteration counts):
    python -m training -o runs/paper --device cuda
CPU-budget model (what ships as smgic_rt's default; see README):
    python -m training -o runs/cpu --grid 80 96 80 --spacing 2 --channels 16 \\
        --iterations 400 400 400 150 --minutes 3 5 20 25
A stage ends at its iterations or its minutes, whichever comes first; `--resume RUN/last.pt` goes
on where a run stopped (a committed checkpoint too, in a later session).
Levels 1-3 on a CPU, with the fast refinement's coarse levels as the teacher (one core; runs
until stopped, `--resume RUN/last.pt` goes on):
    python -m training --recipe cpu-coarse -o runs/coarse --threads 1
Ten minutes on one GPU (H200-class), fine-tuning the shipped default with the refinement as a
teacher (see RECIPES; options given beside --recipe override its values):
    python -m training --recipe gpu-10min -o runs/gpu
`python -m training.benchmark` measures the seconds per iteration of each stage on your machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .data import Augment
from smgic_rt.backends.torch_model import ModelConfig, SMGICNet, parameter_count
from .train import TrainConfig, train


DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "smgic_rt" / "models" / "default" / "weights.pt"
# Named sets of options.
# gpu-10min: about 10 minutes on one H200-class GPU. It fine-tunes the shipped default model (same
# architecture, so the bundle also runs fast on CPUs) on residual misplacements (what the network
# sees after the affine stage), with the runtime refinement's velocity of each of 128 pooled pairs
# as a teacher. Its weights and budget split are a first guess, not yet measured on a GPU: the
# first run's log says what to change.
# cpu-coarse: levels 1-3 of the shipped architecture, from its weights, on what they see at run
# time: pairs after our affine stage (a small residual misplacement), across different brains and
# heads, a third rendered from label maps; the fast refinement's 8 and 4 mm levels as the teacher
# (`training.teacher.coarse_options`), weighted to dominate the paper's losses, on a pool of pairs
# whose targets are computed once.
RECIPES = {
    "cpu-coarse": {
        "grid": (80, 96, 80), "spacing": 2.0, "channels": 16, "stages": 3,
        "iterations": (200, 600, 1_000_000, 0), "lr": 1e-4, "validate_every": 100, "checkpoint_every": 50,
        "validation_pairs": 4, "max_rotation": 3.0, "max_translation": 3.0, "max_scale": 0.04, "max_shear": 0.02,
        "teacher": "coarse", "teacher_weight": 10.0, "pair_pool": 1000, "synthetic_fraction": 0.3,
        "spm_heads": True, "init": DEFAULT_WEIGHTS,
    },
    "gpu-10min": {
        "grid": (80, 96, 80), "spacing": 2.0, "channels": 16,
        "iterations": (100_000, 100_000, 100_000, 100_000), "minutes": (0.5, 0.5, 2.0, 6.5),
        "lr": 1e-4, "validate_every": 200, "checkpoint_every": 100, "validation_pairs": 4,
        "max_rotation": 5.0, "max_translation": 5.0, "teacher_weight": 0.2, "pair_pool": 128,
        "device": "cuda", "init": DEFAULT_WEIGHTS,
    },
}


def _device(parser, name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        parser.error(f"--device: expected a torch device such as cpu or cuda, got {name!r} ({error})")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: this torch build or machine has no CUDA device")
    return str(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, required=True, help="run folder (checkpoints: last.pt, stageK.pt)")
    parser.add_argument("--grid", type=int, nargs=3, default=(160, 192, 160), metavar=("X", "Y", "Z"),
                        help="model grid, divisible by 8 (default: the paper's 160 192 160)")
    parser.add_argument("--spacing", type=float, default=1.0, help="mm per model-grid voxel (default 1)")
    parser.add_argument("--channels", type=int, default=32, help="U-Net width (default 32, as the paper)")
    parser.add_argument("--iterations", type=int, nargs=4, default=(120_000, 120_000, 180_000, 180_000),
                        metavar="N", help="iterations of stages 1-4 (stage k trains levels 1..k)")
    parser.add_argument("--minutes", type=float, nargs=4, metavar="M",
                        help="optional time budget of each stage; a stage ends at its iterations or its minutes")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-decay-start", type=int, default=60_000)
    parser.add_argument("--lr-decay-every", type=int, default=50_000)
    parser.add_argument("--validate-every", type=int, default=200)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--validation-pairs", type=int, default=4)
    parser.add_argument("--data", type=Path, help="folder of your own T1 NIfTI/MGZ files (default: DATA.md templates)")
    parser.add_argument("--max-rotation", type=float, default=Augment.rotation_deg, help="degrees")
    parser.add_argument("--max-translation", type=float, default=Augment.translation_mm, help="mm")
    parser.add_argument("--max-scale", type=float, default=Augment.scale, help="relative scale change per axis")
    parser.add_argument("--max-shear", type=float, default=Augment.shear)
    parser.add_argument("--max-deformation", type=float, default=Augment.deformation_mm,
                        help="mm: peak of each side's smooth nonlinear displacement")
    parser.add_argument("--stages", type=int, default=4, choices=(1, 2, 3, 4),
                        help="train stages 1..STAGES (default 4: every level)")
    parser.add_argument("--synthetic-fraction", type=float, default=0.0,
                        help="fraction of pairs rendered from label maps with random intensities per label")
    parser.add_argument("--spm-heads", action="store_true", help="also train on SPM's T1 templates (spm-runtime)")
    parser.add_argument("--teacher", choices=("full", "coarse"), default="full",
                        help="the refinement used as teacher: its default options, or the fast preset's coarse levels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: all cores). On a machine other jobs also use, give 1: "
                             "2 threads on 2 busy cores ran a stage-3 iteration 6.5x slower than 1 thread")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (default cpu)")
    parser.add_argument("--resume", type=Path, help="checkpoint to continue from (e.g. RUN/last.pt)")
    parser.add_argument("--init", type=Path,
                        help="start a new run from these weights (a checkpoint or a bundle's weights.pt), e.g. "
                             "to fine-tune the default model: --init smgic_rt/models/default/weights.pt")
    parser.add_argument("--teacher-weight", type=float, default=0.0,
                        help="weight of the teacher term: the runtime refinement's velocity per pair as a target "
                             "(training.teacher; targets cached in RUN/teacher/). Default 0: the paper's losses only")
    parser.add_argument("--pair-pool", type=int, help="cycle through this many training pairs (default: a new pair each step)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="a named set of the options above (see RECIPES)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    known, _ = parser.parse_known_args(argv)
    if known.recipe is not None:
        parser.set_defaults(**RECIPES[known.recipe])  # options given explicitly still win
    args = parser.parse_args(argv)
    if args.resume is not None and args.init is not None:
        if args.recipe is None:
            parser.error("--resume continues a run and --init starts a new one: give one of them")
        args.init = None  # resuming a recipe's run: its weights come from the checkpoint
    if not 0 <= args.synthetic_fraction <= 1:
        parser.error(f"--synthetic-fraction must be in [0, 1], got {args.synthetic_fraction}")
    if args.teacher_weight < 0 or (args.pair_pool is not None and args.pair_pool < 1):
        parser.error(f"--teacher-weight must be >= 0 and --pair-pool >= 1, got {args.teacher_weight}, {args.pair_pool}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        model_config = ModelConfig(grid_shape=tuple(args.grid), spacing=(args.spacing,) * 3, channels=args.channels)
    except ValueError as error:
        parser.error(str(error))
    device = _device(parser, args.device)
    config = TrainConfig(model=model_config, output=args.output, iterations=tuple(args.iterations),
                         minutes=tuple(args.minutes) if args.minutes else None, lr=args.lr,
                         lr_decay_start=args.lr_decay_start, lr_decay_every=args.lr_decay_every,
                         validate_every=args.validate_every, checkpoint_every=args.checkpoint_every,
                         validation_pairs=args.validation_pairs, seed=args.seed, data_folder=args.data,
                         augment=Augment(rotation_deg=args.max_rotation, translation_mm=args.max_translation,
                                         scale=args.max_scale, shear=args.max_shear,
                                         deformation_mm=args.max_deformation),
                         threads=args.threads, device=device, init=args.init, teacher_weight=args.teacher_weight,
                         teacher=args.teacher, pair_pool=args.pair_pool, stages=args.stages,
                         spm_heads=args.spm_heads, synthetic_fraction=args.synthetic_fraction)
    logging.getLogger("training").info("model: %s, %d parameters", model_config.to_dict(),
                                       parameter_count(SMGICNet(model_config)))
    last = train(config, resume=args.resume, progress=not args.quiet)
    print(last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
