"""CPU integrate_velocity, filter_axis and the fields stage's resamplings at the fast preset's
sizes, against another build.

Times `_C` of this checkout and, with ``--baseline``, another checkout's compiled module (loaded
from its file) on the same inputs, alternating the two call by call, at 1 and 2 threads; prints
ms per call (median and minimum) and CPU ms per call (``time.process_time``, all threads), and
checks that both builds give the same bits. Cases: integrate_velocity of smooth velocities
(3x40x48x40, 5 steps; 3x80x96x80, 7 steps); a Gaussian (sigma 1.5) on 3 axes of 3x40x48x40 and
the 5-channel box mean (radius 1) of 40x48x40, as three filter_axis calls each; a smooth
3x80x96x80 displacement (the 2 mm model grid) read on a 182x218x182 grid (1 mm, a third of it
beyond the model grid: border reads), alone and turned into millimetres in the same call
(`affine_resample_field`, or affine_resample then affine_field where a build lacks it), and on a
132^3 lattice through a displacement (the inverse's first polishing pass); a 1-channel 128^3 image
and a 128^3 int16 label map warped onto 182x218x182 through a millimetre field (the resampling
and the label warp).

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


def field_cases(rng, field, this):
    """(label, run) of the fields stage's resamplings of a model-grid `field` (1, 3, 80, 96, 80);
    `this`: the module that makes their inputs."""
    native, lattice = (182, 218, 182), (132, 132, 132)
    to_model = [0.5, 0.0, 0.0, -5.5, 0.0, 0.5, 0.0, -6.0, 0.0, 0.0, 0.5, -5.5]  # 1 mm voxel -> 2 mm voxel
    offset = [1.0, 0.02, 0.0, -90.0, 0.0, 0.98, 0.03, -126.0, 0.01, 0.0, 1.01, -72.0]  # voxel -> mm
    linear = [2.0, 0.04, 0.0, 0.0, 1.96, 0.06, 0.02, 0.0, 2.02]

    def resample(module, padding=1, shape=native):
        out = np.empty((1, 3) + shape, np.float32)
        module.affine_resample(field, to_model, out, 0, padding)
        return out

    def resample_in_mm(module):
        if not hasattr(module, "affine_resample_field"):
            out = resample(module)
            module.affine_field(out, offset, linear, out)
            return out
        out = np.empty((1, 3) + native, np.float32)
        module.affine_resample_field(field, to_model, out, 1, offset, linear)
        return out

    shift = np.array([0.6, 0.0, 0.0, -14.0, 0.0, 0.7, 0.0, -20.0, 0.0, 0.0, 0.6, -14.0]).reshape(3, 4)
    shift[:, :3] -= np.eye(3)
    polish_map = ([float(v) for v in shift.reshape(-1)], [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
    initial = np.ascontiguousarray(-resample(this, shape=lattice))

    def polish(module):
        out = np.empty((1, 3) + lattice, np.float32)
        module.warp(field, initial, out, 0, 1, *polish_map)
        return out

    image = rng.random((1, 1, 128, 128, 128), dtype=np.float32)
    labels = np.floor(8 * image[:, :, ::8, ::8, ::8]).astype(np.int16)
    for axis in (2, 3, 4):  # blocks of 8^3 voxels, 8 labels
        labels = np.repeat(labels, 8, axis)
    mm_field = 2 * resample(this)  # up to 2 peak mm on the 1 mm grid
    # image voxel = 0.7 x + d / 1.4 (mm -> image voxels): the warp's map relative to x
    to_image = [-0.3, 0.0, 0.0, 0.0, 0.0, -0.4, 0.0, 0.0, 0.0, 0.0, -0.3, 0.0]
    to_image_linear = [0.7, 0.0, 0.0, 0.0, 0.7, 0.0, 0.0, 0.0, 0.7]

    def warp_image(module):
        out = np.empty((1, 1) + native, np.float32)
        module.warp(image, mm_field, out, 0, 0, to_image, to_image_linear)
        return out

    def warp_labels(module):
        out = np.empty((1, 1) + native, np.int16)
        module.warp_labels(labels, mm_field, out, 2, 0, to_image, to_image_linear)
        return out

    return [("field 2 mm -> 182x218x182", resample), ("field -> 182x218x182 in mm", resample_in_mm),
            ("field polish on 132^3", polish), ("image warp -> 182x218x182", warp_image),
            ("label warp -> 182x218x182", warp_labels)]


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
    cases += field_cases(rng, smooth_velocity(rng, (80, 96, 80), args.peak), _C)
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
