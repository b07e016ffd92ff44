"""Kernel micro-benchmark: smgic_rt.ops against torch in the same process.

At 160x192x160 (default), times warp (1 and 3 channels, trilinear, zeros padding) against
torch.nn.functional.grid_sample (align_corners=True) and integrate_velocity (7 steps) against a
plain torch scaling and squaring, with the same thread count for both (default 2). Prints the
median of several runs after a warm-up, the speed-up ratios, and each kernel's achieved
bandwidth counted as (bytes read once + bytes written) / time, a lower bound on real traffic.

    OMP_NUM_THREADS=2 python benchmarks/kernels.py [--shape 160 192 160] [--threads 2] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import time

# Benchmarks run from a checkout: import the smgic_rt next to this folder, not another install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 192, 160), metavar=("X", "Y", "Z"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=7)
    return parser.parse_args()


def main():
    args = _parse()
    # Thread counts must be fixed before OpenMP and torch start their pools.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from smgic_rt import ops

    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    voxels = int(np.prod(shape))
    rng = np.random.default_rng(0)

    def median_seconds(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    # A smooth displacement of a few voxels: coarse noise upsampled by torch.
    coarse = torch.from_numpy(rng.standard_normal((1, 3, 6, 7, 6)))
    displacement = (4.0 * F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)).float()
    displacement_np = np.ascontiguousarray(displacement[0].numpy())

    sizes = torch.tensor(shape, dtype=torch.float32).view(1, 3, 1, 1, 1)
    identity = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))[None]

    def grid_sample_warp(image, u, padding):
        normalised = 2.0 * (identity + u) / (sizes - 1.0) - 1.0
        grid = normalised.flip(1).permute(0, 2, 3, 4, 1)  # grid_sample wants (z, y, x) last
        return F.grid_sample(image, grid, mode="bilinear", padding_mode=padding, align_corners=True)

    def torch_scaling_and_squaring(v, steps):
        u = v / 2.0**steps
        for _ in range(steps):
            u = u + grid_sample_warp(u, u, "border")
        return u

    rows = []
    for channels in (1, 3):
        image_np = rng.random((channels,) + shape, dtype=np.float32)
        image_t = torch.from_numpy(image_np)[None]
        ours = median_seconds(lambda: ops.warp(image_np, displacement_np))
        theirs = median_seconds(lambda: grid_sample_warp(image_t, displacement, "zeros"))
        moved = 4 * voxels * (3 + 2 * channels)  # read u and the image once, write the output
        rows.append((f"warp {channels}ch", ours, theirs, moved))
        got = ops.warp(image_np, displacement_np)
        diff = float(np.abs(got - grid_sample_warp(image_t, displacement, "zeros")[0].numpy()).max())
        rows[-1] += (diff,)

    velocity_np = displacement_np
    ours = median_seconds(lambda: ops.integrate_velocity(velocity_np, steps=args.steps))
    theirs = median_seconds(lambda: torch_scaling_and_squaring(displacement, args.steps))
    moved = 4 * voxels * 3 * 3 * args.steps  # per step: read u at x, sample u, write u
    diff = float(np.abs(ops.integrate_velocity(velocity_np, steps=args.steps)
                        - torch_scaling_and_squaring(displacement, args.steps)[0].numpy()).max())
    rows.append((f"integrate_velocity ({args.steps} steps)", ours, theirs, moved, diff))

    print(f"shape {shape}, {args.threads} threads, median of {args.repeats} runs after warm-up, "
          f"torch {torch.__version__}, build {ops.build_info()['compiler']}")
    print(f"{'kernel':<28}{'smgic_rt ms':>12}{'torch ms':>10}{'speed-up':>10}{'GB/s':>8}{'max |diff|':>12}")
    for name, ours, theirs, moved, diff in rows:
        print(f"{name:<28}{1e3 * ours:>12.1f}{1e3 * theirs:>10.1f}{theirs / ours:>9.2f}x"
              f"{moved / ours / 1e9:>8.1f}{diff:>12.2e}")


if __name__ == "__main__":
    main()
