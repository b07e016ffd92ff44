"""Quick check of the metrics on SPM's MNI152 average in three contrasts (one grid, so the
correspondence is known): each contrast's header misplaced by a seeded rigid transform, registered
onto avg152T1 with ``--metric ncc`` and ``--metric mind``; scored by the mean error (mm) of the
recovered map against the known one inside the brain and by the Dice of SPM's neuromorphometrics
labels (moved alike). Also registers avg152T2 onto Colin27 (SPM's single_subj_T1), where the
contrast warning must fire under NCC. The full contrast benchmark is benchmarks/contrasts.py.

    python benchmarks/metric_check.py [--contrasts T2 PD T1] [--quality fast] [--deformed]

``--deformed``: instead of the misplacements, each contrast (and the labels) under one known
smooth deformation (Gaussian-smoothed noise, at most 5 mm), headers untouched; Dice only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)
from smgic_rt import Registrar  # noqa: E402
from smgic_rt.methods.affine import rotation_matrix  # noqa: E402
from training.data import SPM_ARCHIVE, load_image  # noqa: E402  (reads members of SPM's archive)


def spm_image(member: str) -> nib.Nifti1Image:
    return load_image((*SPM_ARCHIVE, f"fsroot/_spm/cleaned/spm/{member}"))


def misplacement(image, seed: int) -> np.ndarray:
    """World map of a seeded rigid misplacement (10-15 degrees, 10-15 mm) about the image centre."""
    rng = np.random.default_rng(seed)
    angles = np.radians(rng.uniform(10, 15, 3) * rng.choice([-1, 1], 3))
    shift = rng.uniform(10, 15, 3) * rng.choice([-1, 1], 3)
    centre = image.affine[:3, :3] @ ((np.array(image.shape[:3]) - 1) / 2) + image.affine[:3, 3]
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix(angles)
    matrix[:3, 3] = centre + shift - matrix[:3, :3] @ centre
    return matrix


def labels_on(image) -> nib.Nifti1Image:
    """SPM's neuromorphometrics labels (1.5 mm) moved onto `image`'s grid by nearest neighbour."""
    labels = spm_image("tpm/labels_Neuromorphometrics.nii")
    from scipy import ndimage

    matrix = np.linalg.solve(labels.affine, image.affine)
    data = ndimage.affine_transform(np.asarray(labels.dataobj), matrix[:3, :3], matrix[:3, 3], output_shape=image.shape[:3],
                                    order=0)
    return nib.Nifti1Image(data.astype(np.int16), image.affine)


def dice(fixed_labels, warped_labels) -> float:
    scores = []
    for label in np.unique(fixed_labels):
        if label == 0:
            continue
        a, b = fixed_labels == label, warped_labels == label
        if a.sum() >= 100:
            scores.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores))


def run_deformed(quality: str, contrasts, seed: int) -> list:
    from scipy import ndimage

    fixed = spm_image("canonical/avg152T1.nii")
    label_data = np.asarray(labels_on(fixed).dataobj)
    rng = np.random.default_rng(seed + 1)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(fixed.shape[:3]), 6) for _ in range(3)])
    grid = np.indices(fixed.shape[:3]) + field * (2.5 / np.abs(field).max())  # at most 2.5 voxels, 5 mm

    def deform(data, order):
        return ndimage.map_coordinates(np.asarray(data, np.float64), grid, order=order, mode="constant")

    rows = []
    for contrast in contrasts:
        moving = spm_image(f"canonical/avg152{contrast}.nii")
        moved = nib.Nifti1Image(deform(moving.dataobj, 1).astype(np.float32), moving.affine)
        moved_labels = nib.Nifti1Image(deform(label_data, 0).astype(np.int16), moving.affine)
        row = {"pair": f"avg152{contrast} (deformed) -> avg152T1",
               "dice_unregistered": round(dice(label_data, np.asarray(moved_labels.dataobj)), 4)}
        for metric in ("ncc", "mind"):
            result = Registrar(quality=quality, metric=metric).register(fixed, moved)
            row[f"dice_{metric}"] = round(dice(label_data, np.asarray(result.apply(moved_labels, "label").dataobj)), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run(quality: str, contrasts, seed: int) -> list:
    fixed = spm_image("canonical/avg152T1.nii")
    labels = labels_on(fixed)
    label_data = np.asarray(labels.dataobj)
    brain = label_data > 0
    points = np.argwhere(brain) @ fixed.affine[:3, :3].T + fixed.affine[:3, 3]
    rows = []
    for index, contrast in enumerate(contrasts):
        moving = spm_image(f"canonical/avg152{contrast}.nii")
        truth = misplacement(moving, seed + index)
        moved = nib.Nifti1Image(np.asarray(moving.dataobj), truth @ moving.affine)
        moved_labels = nib.Nifti1Image(label_data, truth @ moving.affine)
        for metric in ("ncc", "mind"):
            registrar = Registrar(quality=quality, metric=metric)
            start = time.perf_counter()
            result = registrar.register(fixed, moved)
            seconds = time.perf_counter() - start
            displacement = np.moveaxis(result.forward_ras, 0, -1)[brain]
            error = np.linalg.norm(points + displacement - (points @ truth[:3, :3].T + truth[:3, 3]), axis=1)
            warped = np.asarray(result.apply(moved_labels, interpolation="label").dataobj)
            rows.append({"pair": f"avg152{contrast} (misplaced) -> avg152T1", "metric": metric,
                         "error_mm_mean": round(float(error.mean()), 3), "error_mm_p95": round(float(np.percentile(error, 95)), 3),
                         "dice": round(dice(label_data, warped), 4), "seconds": round(seconds, 2),
                         "warnings": len(result.stats.get("warnings", []))})
            print(json.dumps(rows[-1]), flush=True)
    colin = spm_image("canonical/single_subj_T1.nii")
    for metric in ("ncc", "mind"):
        result = Registrar(quality=quality, metric=metric).register(colin, spm_image("canonical/avg152T2.nii"))
        rows.append({"pair": "avg152T2 -> Colin27 T1", "metric": metric, "warnings": result.stats.get("warnings", []),
                     "contrast_check": result.stats.get("contrast_check")})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contrasts", nargs="+", default=["T2", "PD", "T1"], choices=["T1", "T2", "PD"])
    parser.add_argument("--quality", default="fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deformed", action="store_true", help="a known smooth deformation instead of misplacements")
    args = parser.parse_args(argv)
    (run_deformed if args.deformed else run)(args.quality, args.contrasts, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
