"""Kernel micro-benchmark: smgic_rt.geometry.ops against torch in the same process.

At 160x192x160 (default), times warp (1 and 3 channels, trilinear, zeros padding) against
torch.nn.functional.grid_sample (align_corners=True) and integrate_velocity (7 steps) against a
plain torch scaling and squaring, with the same thread count for both (default 2). Prints the
median of several runs after a warm-up, the speed-up ratios, and each kernel's achieved
bandwidth counted as (bytes read once + bytes written) / time, a lower bound on real traffic.

    OMP_NUM_THREADS=2 python benchmarks/kernels.py [--shape 160 192 160] [--threads 2] [--repeats 5]

Then the registration kernels (csrc/registration) on the same grid at 1, 2 and --threads
threads: affine_ncc_sums (the affine stage's per-evaluation sums; fixed-order reduction since
issue 15), a Gaussian filter pass, the 5-channel box means, lncc and image_gradient; the
refinement's descent direction and regulariser, as `_C` passes and as the numpy they replaced.
``--registration-only`` skips the torch comparison; ``--json FILE`` writes every number.
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
    parser.add_argument("--registration-only", action="store_true", help="only the registration kernels")
    parser.add_argument("--json", help="write the measured seconds to this file")
    return parser.parse_args()


def registration_rows(shape, thread_counts, median_seconds):
    """Median seconds of each registration kernel per thread count, on a smooth random volume."""
    import numpy as np

    from smgic_rt import _C
    from smgic_rt.geometry import ops
    from smgic_rt.geometry.filters import gaussian_taps

    # _C directly (not the ops wrappers), so that the same script times older checkouts too.
    def box_mean(volumes, radius):
        for axis in range(3):
            volumes = _C.filter_axis(volumes, axis, [1.0] * (2 * radius + 1), True)
        return volumes

    rng = np.random.default_rng(1)
    coarse = rng.random((1, 6, 7, 6), dtype=np.float32)
    scale = [(c - 1) / (n - 1) for c, n in zip(coarse.shape[1:], shape)]
    fixed = ops.affine_resample(coarse, np.diag(scale + [1.0]), shape)[0]
    moving = np.ascontiguousarray(_C.filter_axis(fixed[None], 0, gaussian_taps(2.0), False)[0])
    mask = (fixed > 0.3).astype(np.float32)
    centre = (np.asarray(shape) - 1) / 2
    angle = np.deg2rad(3.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = np.hstack([rotation, (centre - rotation @ centre + 0.7)[:, None]])
    stack = np.stack([fixed, moving, fixed * fixed, moving * moving, fixed * moving])
    means = box_mean(stack, 1)
    kernels = {
        "affine_ncc_sums": lambda: _C.affine_ncc_sums(fixed, mask, moving, matrix.ravel().tolist()),
        "filter_axis gaussian (axis 0)": lambda: _C.filter_axis(fixed[None], 0, gaussian_taps(1.5), False),
        "box_mean 5 channels": lambda: box_mean(stack, 1),
        "lncc": lambda: _C.lncc(fixed, moving, means, 1e-3),
        "image_gradient": lambda: _C.image_gradient(fixed),
    }
    # The refinement's per-iteration descent direction and per-evaluation regulariser: the _C
    # passes (where this checkout has them) beside the numpy formulations they replaced.
    velocity = np.ascontiguousarray(np.stack([fixed, moving, fixed]) * np.float32(4.0))
    force = _C.image_gradient(moving)
    weight = np.minimum(mask + np.float32(0.5), np.float32(1.0))

    def descent_numpy():  # refine.py's numpy before ops.descent_direction (tests hold the exact oracle)
        p = np.pad(velocity, ((0, 0), (1, 1), (1, 1), (1, 1)), mode="edge")
        laplacian = (-6.0 * p[:, 1:-1, 1:-1, 1:-1] + p[:, :-2, 1:-1, 1:-1] + p[:, 2:, 1:-1, 1:-1]
                     + p[:, 1:-1, :-2, 1:-1] + p[:, 1:-1, 2:, 1:-1] + p[:, 1:-1, 1:-1, :-2] + p[:, 1:-1, 1:-1, 2:])
        out = (force + np.float32(0.02) * laplacian) * weight
        return float(np.sqrt(np.square(out).sum(axis=0)).max())

    kernels["descent direction, numpy"] = descent_numpy
    kernels["gradient energy, numpy"] = lambda: float(sum(np.mean(np.square(np.diff(velocity, axis=a)))
                                                          for a in (1, 2, 3)))
    if hasattr(_C, "descent_direction"):
        kernels["descent_direction (+ copy)"] = lambda: _C.descent_direction(force.copy(), velocity, weight,
                                                                            np.float32(0.02))
        kernels["gradient_energy"] = lambda: _C.gradient_energy(velocity)
    rows = {}
    for name, kernel in kernels.items():
        rows[name] = {}
        for threads in thread_counts:
            with ops.cpu_threads(threads):
                rows[name][threads] = median_seconds(kernel)
    return rows


def main():
    args = _parse()
    # Thread counts must be fixed before OpenMP and torch start their pools.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from smgic_rt.geometry import ops

    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    results = {"shape": list(shape), "threads": args.threads, "repeats": args.repeats}
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
    for channels in (1, 3) if not args.registration_only else ():
        image_np = rng.random((channels,) + shape, dtype=np.float32)
        image_t = torch.from_numpy(image_np)[None]
        ours = median_seconds(lambda: ops.warp(image_np, displacement_np))
        theirs = median_seconds(lambda: grid_sample_warp(image_t, displacement, "zeros"))
        moved = 4 * voxels * (3 + 2 * channels)  # read u and the image once, write the output
        rows.append((f"warp {channels}ch", ours, theirs, moved))
        got = ops.warp(image_np, displacement_np)
        diff = float(np.abs(got - grid_sample_warp(image_t, displacement, "zeros")[0].numpy()).max())
        rows[-1] += (diff,)

    thread_counts = sorted({1, 2, args.threads})
    registration = registration_rows(shape, thread_counts, median_seconds)
    results["registration_seconds"] = {name: {str(t): v for t, v in row.items()} for name, row in registration.items()}
    if args.registration_only:
        _print_registration(registration, thread_counts, shape, args)
        _write_json(args, results)
        return

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
    results["kernels"] = [{"kernel": name, "smgic_seconds": ours, "torch_seconds": theirs, "max_abs_diff": diff}
                          for name, ours, theirs, moved, diff in rows]
    _print_registration(registration, thread_counts, shape, args)
    _write_json(args, results)


def _print_registration(registration, thread_counts, shape, args):
    print(f"\nregistration kernels, shape {shape}, median of {args.repeats} runs, ms per call")
    print(f"{'kernel':<32}" + "".join(f"{f'{t} thr':>10}" for t in thread_counts))
    for name, row in registration.items():
        print(f"{name:<32}" + "".join(f"{1e3 * row[t]:>10.1f}" for t in thread_counts))


def _write_json(args, results):
    if args.json:
        import json

        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
