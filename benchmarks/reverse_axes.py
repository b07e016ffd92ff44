"""The transposing copy between a NIfTI file's voxel order and ours: `_C.reverse_axes` against the
numpy path it replaced (one plane of the middle axis at a time through a buffer) and against a
plain copy of the same bytes (the memory-bound floor), on the arrays one registration reads and
writes; alternating the three call by call, into preallocated outputs, at 1 OpenMP thread. CPU
milliseconds per call (``time.process_time``; wall time says more about the neighbours on a shared
machine), median over the repeats.

    OMP_NUM_THREADS=1 python benchmarks/reverse_axes.py [--repeats 15]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from smgic_rt import _C  # noqa: E402

CASES = (  # (what, shape, input type, output type)
    ("256^3 conformed T1, read", (256, 256, 256), np.uint8, np.float32),
    ("256^3 label map, read", (256, 256, 256), np.int16, np.int16),
    ("182x218x182 float32 image, read or written", (182, 218, 182), np.float32, np.float32),
    ("182x218x182 float64 (scaled) image, read", (182, 218, 182), np.float64, np.float32),
)


def numpy_planes(array, out):
    """The numpy path (`io.reversed_axes` for types the kernel does not take)."""
    plane = np.empty((array.shape[0], array.shape[2]), dtype=out.dtype)
    for j in range(array.shape[1]):
        np.copyto(plane, array[:, j, :], casting="unsafe")
        out[:, j, :] = plane.T


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print("| case | kernel CPU ms | numpy CPU ms | plain copy CPU ms (floor) |")
    print("|---|---|---|---|")
    for what, shape, source, target in CASES:
        array = (rng.random(shape) * 200).astype(source)
        out = np.empty(shape[::-1], target)
        same = np.empty(shape, target)
        calls = {"kernel": lambda: _C.reverse_axes(array, out), "numpy": lambda: numpy_planes(array, out),
                 "copy": lambda: np.copyto(same, array, casting="unsafe")}
        seconds = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.process_time()
                call()
                seconds[name].append(time.process_time() - start)
        _C.reverse_axes(array, out)
        if not np.array_equal(out, np.ascontiguousarray(array.transpose(2, 1, 0), dtype=target)):
            raise SystemExit(f"{what}: the kernel's copy differs from numpy's transpose")
        print(f"| {what} | " + " | ".join(f"{1000 * np.median(seconds[name]):.1f}" for name in calls) + " |")


if __name__ == "__main__":
    main()
