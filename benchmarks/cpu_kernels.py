"""CPU integrate_velocity and filter_axis at the fast preset's sizes, against another build.

Times `_C` of this checkout and, with ``--baseline``, another checkout's compiled module (loaded
from its file) on the same inputs, alternating the two call by call, at 1 and 2 threads; prints
ms per call (median and minimum) and CPU ms per call (``time.process_time``, all threads), and
checks that both builds give the same bits. Cases: integrate_velocity of smooth velocities
(3x40x48x40, 5 steps; 3x80x96x80, 7 steps); a Gaussian (sigma 1.5) on 3 axes of 3x40x48x40 and
the 5-channel box mean (radius 1) of 40x48x40, as three filter_axis calls each.

    python benchmarks/cpu_kernels.py --baseline /work/main [--repeats 30]
"""

import argparse
import glob
import importlib.util
import os
import sys
import time

import numpy as np

# Benchmarks run from a checkout: import the smgic_rt next to this folder, not another install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_module(checkout):
    """The compiled module of another checkout, imported from its file under a private name."""
    paths = glob.glob(os.path.join(checkout, "smgic_rt", "_C*.so"))
    if not paths:
        raise FileNotFoundError(f"no built smgic_rt/_C*.so under {checkout}")
    spec = importlib.util.spec_from_file_location("_C", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smooth_velocity(rng, shape, peak):
    """Coarse noise resampled trilinearly to `shape`, scaled to max |v| = peak voxels."""
    from smgic_rt.geometry import ops

    coarse = rng.standard_normal((3, 5, 6, 5)).astype(np.float32)
    scale = [(c - 1) / (n - 1) for c, n in zip(coarse.shape[1:], shape)]
    field = ops.affine_resample(coarse, np.diag(scale + [1.0]), shape)[None]
    return np.ascontiguousarray(peak * field / np.abs(field).max(), dtype=np.float32)


def integrate(module, velocity, steps):
    out = np.empty_like(velocity)  # as ops.integrate_velocity allocates per call
    module.integrate_velocity(velocity, out, steps)
    return out


def filter_axes(module, volumes, taps, normalise_inside):
    for axis in range(3):
        volumes = module.filter_axis(volumes, axis, taps, normalise_inside)
    return volumes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another checkout whose built module is timed too")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--peak", type=float, default=4.0, help="largest |velocity| in voxels")
    args = parser.parse_args()
    from smgic_rt import _C
    from smgic_rt.geometry import ops

    builds = {"this": _C}
    if args.baseline:
        builds = {"baseline": load_module(args.baseline), "this": _C}
    from smgic_rt.geometry.filters import gaussian_taps

    rng = np.random.default_rng(0)
    cases = []
    for shape, steps in (((40, 48, 40), 5), ((80, 96, 80), 7)):
        velocity = smooth_velocity(rng, shape, args.peak)
        cases.append((f"integrate {'x'.join(map(str, shape))}, {steps} steps",
                      lambda m, v=velocity, s=steps: integrate(m, v, s)))
    images = rng.random((5, 40, 48, 40), dtype=np.float32)
    gaussian = gaussian_taps(1.5)
    cases.append(("gaussian 1.5, 3x40x48x40", lambda m: filter_axes(m, images[:3], gaussian, False)))
    cases.append(("box mean r1, 5x40x48x40", lambda m: filter_axes(m, images, [1.0] * 3, True)))
    print(f"{'case':<32}{'thr':>4}" + "".join(f"{name + ' ms (min)':>22}{'cpu ms':>8}" for name in builds))
    for label, run in cases:
        for threads in (1, 2):
            with ops.cpu_threads(threads):
                wall = {name: [] for name in builds}
                cpu = {name: [] for name in builds}
                outputs = {}
                for repeat in range(args.repeats + 1):
                    for name, module in builds.items():
                        start, start_cpu = time.perf_counter(), time.process_time()
                        outputs[name] = run(module)
                        if repeat:  # the first call warms up
                            wall[name].append(time.perf_counter() - start)
                            cpu[name].append(time.process_time() - start_cpu)
            if len(outputs) == 2 and not np.array_equal(*outputs.values()):
                raise SystemExit(f"the builds differ: {label}")
            cells = "".join(f"{1e3 * np.median(wall[n]):>13.2f} ({1e3 * min(wall[n]):6.2f}){1e3 * np.median(cpu[n]):>8.2f}"
                            for n in builds)
            print(f"{label:<32}{threads:>4}{cells}")
    if len(builds) == 2:
        print("both builds gave the same bits on every case")


if __name__ == "__main__":
    main()
