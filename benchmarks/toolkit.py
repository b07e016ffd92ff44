"""The toolkit's numbers (issue 34) on a real pair of different brains at 2 mm, with the shipped
default bundle: smgic-apply against antspyx on 1,000 points inside the brain (forward through
warp.nii.gz, back through inverse_warp.nii.gz), the forward-then-back distance per field grid,
back through inverse_warp.nii.gz (a trilinear file) and through [warp.nii.gz,1] (Newton at each
point), the fixed image resampled onto the moving grid through both, a 10-volume series' peak
memory and time, and a chain with an ANTs affine against ants.apply_transforms.

    OMP_NUM_THREADS=1 python benchmarks/toolkit.py [--json benchmarks/results/toolkit.json]

The JSON records the thread count and the machine's load average: on a machine busy beyond its
cores, OpenMP threads beyond 1 wait on each other and the seconds say more about the load.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

# Benchmarks run from a checkout: import the smgic_rt (and tests' helpers) next to this folder.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def _points(folder, reg, pair, ants, pandas):
    import numpy as np

    from smgic_rt import apply, cli
    from toolkit_support import brain_points

    lps = brain_points(pair["fixed"], 1000) * [-1, -1, 1]
    pandas.DataFrame({"x": lps[:, 0], "y": lps[:, 1], "z": lps[:, 2], "t": 0.0}).to_csv(folder / "p.csv", index=False)
    rows = {}
    for step, source, field in (("forward", "p.csv", "warp.nii.gz"), ("back", "forward.csv", "inverse_warp.nii.gz")):
        cli.apply_main(["-t", str(reg / field), "-i", str(folder / source), "-o", str(folder / f"{step}.csv"), "-q",
                        "--overwrite"])
        ours = pandas.read_csv(folder / f"{step}.csv")[["x", "y", "z"]].to_numpy()
        theirs = ants.apply_transforms_to_points(3, pandas.read_csv(folder / source), [str(reg / field)])
        rows[f"{step}_vs_ants_max_mm"] = float(np.abs(ours - theirs[["x", "y", "z"]].to_numpy()).max())
        rows[f"{step}_points"] = ours
    start = time.perf_counter()
    cli.apply_main(["-t", f"[{reg / 'warp.nii.gz'},1]", "-i", str(folder / "forward.csv"), "-o",
                    str(folder / "exact.csv"), "-q", "--overwrite"])
    rows["exact_inverse_points_seconds"] = time.perf_counter() - start
    exact = pandas.read_csv(folder / "exact.csv")[["x", "y", "z"]].to_numpy()
    step = apply.load_chain([f"[{reg / 'warp.nii.gz'},1]"]).steps[0]
    residual = step.solve(rows["forward_points"].T * [[-1], [-1], [1]])[1]
    rows["exact_inverse_unconverged_points"] = int(np.count_nonzero(residual > step.tolerance))
    rows["moved_mean_mm"] = float(np.linalg.norm(rows.pop("forward_points") - lps, axis=1).mean())
    for prefix, back in (("round_trip", rows.pop("back_points")), ("round_trip_exact_inverse", exact)):
        returned = np.linalg.norm(back - lps, axis=1)
        rows.update({f"{prefix}_{name}_mm": float(np.percentile(returned, q))
                     for name, q in (("median", 50), ("p95", 95), ("max", 100))})
    return rows


def _inverse_images(folder, reg, pair):
    """The fixed image resampled onto the moving grid through inverse_warp.nii.gz and through
    [warp.nii.gz,1]: seconds of each, and how far apart the two images are inside the brain."""
    import nibabel as nib

    from smgic_rt import cli
    from toolkit_support import correlation

    rows = {}
    for name, transform in (("file", str(reg / "inverse_warp.nii.gz")), ("exact", f"[{reg / 'warp.nii.gz'},1]")):
        start = time.perf_counter()
        cli.apply_main(["-t", transform, "-r", str(pair["moving"]), "-i", str(pair["fixed"]), "-o",
                        str(folder / f"inverse_{name}.nii.gz"), "-q", "--overwrite"])
        rows[f"inverse_image_{name}_seconds"] = time.perf_counter() - start
    images = [nib.load(str(folder / f"inverse_{name}.nii.gz")).get_fdata() for name in ("file", "exact")]
    brain = nib.load(str(pair["moving"])).get_fdata() > 0
    rows["inverse_image_file_vs_exact_correlation"] = correlation(images[0], images[1], brain)
    return rows


def _series(folder, reg, pair):
    import nibabel as nib
    import numpy as np

    from smgic_rt import apply, io

    moving = nib.load(str(pair["moving"]))
    base = moving.get_fdata()
    rng = np.random.default_rng(0)
    data = np.stack([base * (0.8 + 0.04 * t) + rng.normal(0, 5, base.shape) for t in range(10)], axis=-1)
    nib.save(nib.Nifti1Image(np.clip(data, 0, 32000).astype(np.int16), moving.affine), str(folder / "series.nii.gz"))
    chain = apply.load_chain([str(reg / "warp.nii.gz")])
    reference = io.load_volume(pair["fixed"], name="reference")
    chain.map_points(np.zeros((3, 1)))
    tracemalloc.start()
    start = time.perf_counter()
    apply.apply_to_image(chain, folder / "series.nii.gz", reference, folder / "out.nii.gz")
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    volume = 4 * int(np.prod(reference.shape))
    return {"series_seconds": seconds, "series_peak_volumes": peak / volume, "series_grid": list(reference.shape)}


def _chain(folder, reg, pair, ants):
    import nibabel as nib
    import numpy as np

    from smgic_rt import cli
    from smgic_rt.methods.affine import rotation_matrix
    from toolkit_support import correlation

    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                           matrix=rotation_matrix(np.radians([4.0, -3.0, 6.0])),
                                           translation=[3.0, -2.0, 4.0], center=[5.0, -10.0, 8.0])
    ants.write_transform(transform, str(folder / "a.mat"))
    cli.apply_main(["-t", str(folder / "a.mat"), "-t", str(reg / "warp.nii.gz"), "-r", str(pair["fixed"]), "-i",
                    str(pair["moving"]), "-o", str(folder / "chain.nii.gz"), "-q", "--overwrite"])
    fixed = ants.image_read(str(pair["fixed"]))
    theirs = ants.apply_transforms(fixed, ants.image_read(str(pair["moving"])),
                                   [str(folder / "a.mat"), str(reg / "warp.nii.gz")],
                                   whichtoinvert=[False, False]).numpy()  # antspyx would invert a .mat before a field
    ours = nib.load(str(folder / "chain.nii.gz")).get_fdata()
    return {"chain_correlation_with_ants": correlation(ours, theirs, fixed.numpy() > 0)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    import ants
    import pandas

    from smgic_rt import cli
    from toolkit_support import brain_pair

    results = {"conditions": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
                              "load_average_before": list(os.getloadavg())}}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        pair = brain_pair(folder / "pair", 2)
        for grid in ("compact", "native"):
            reg = folder / grid
            start = time.perf_counter()
            assert cli.register_main([str(pair["fixed"]), str(pair["moving"]), "-o", str(reg), "-q",
                                      "--fields-grid", grid]) == 0
            results[grid] = {"register_seconds": time.perf_counter() - start, **_points(folder, reg, pair, ants, pandas)}
        results["compact"].update(_inverse_images(folder, folder / "compact", pair))
        results["compact"].update(_series(folder, folder / "compact", pair))
        results["compact"].update(_chain(folder, folder / "compact", pair, ants))
    results["conditions"]["load_average_after"] = list(os.getloadavg())
    text = json.dumps(results, indent=2, sort_keys=True)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
