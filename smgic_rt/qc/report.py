"""HTML quality-control reports, in the manner of fMRIPrep/NiReports: one page per pair, one per cohort.

    >>> from smgic_rt.qc import report as qc_report
    >>> qc_report.write_pair_page("out/sub01", result)                    # doctest: +SKIP
    >>> qc_report.write_cohort_report("out", summary["pairs"])            # doctest: +SKIP

Per pair, `write_pair_page(folder, result_or_report)` writes into `folder`:

- ``qc_overlay.png``: the fixed image's edges (yellow: its outline, red: its tissue boundary)
  drawn on the warped moving image, sagittal, coronal and axial planes through the centre;
- ``qc_jacobian.png``: log2 det(J) of the forward map in the same planes (folds, J <= 0, yellow);
- ``qc_thumb.png``: a small overlay for the cohort page;
- ``qc.html``: the flag and its reasons first, then the pictures, the QC measurements against
  their limits, every stage's seconds and statistics, and the raw report.

For a cohort, `write_cohort_report(out_root, records)` writes ``out_root/report.html``: counts,
distribution plots (inline SVG, each pair a dot linking to its section) of similarity, folding,
inverse consistency and time, a table that sorts (click a header; ``report.html#sort=lncc:asc``
opens sorted) and filters, flagged pairs first, and a section per pair with its thumbnail, its
reasons and links to its qc.html and files; thumbnails load as their sections near the view
(``report.html?images=all`` loads them all at once, for printing). Everything is relative to ``out_root``: the folder
opens offline from disk, with no server. Thumbnails are the pairs' ``qc_thumb.png`` when there
is one, else made once from the pair's outputs into ``out_root/.smgic-report/`` (a name no pair
id can take); the page itself holds no images, so it stays small for thousands of pairs.

Pictures are written with a small PNG encoder here (zlib, no matplotlib): a cohort's thumbnails
cost milliseconds each. Every file goes through `smgic_rt.io.atomic`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..io import atomic
from ..options import is_number
from . import flags, picture as qc
from ..pipeline import STAGE_ORDER

__all__ = ["write_pair_page", "write_pair_images", "write_cohort_report", "png_bytes", "REPORT_NAME", "PAGE_NAME",
           "OVERLAY_NAME", "JACOBIAN_NAME", "THUMB_NAME", "REPORT_ASSETS"]

logger = logging.getLogger("smgic_rt")

PAGE_NAME = "qc.html"
OVERLAY_NAME = "qc_overlay.png"
JACOBIAN_NAME = "qc_jacobian.png"
THUMB_NAME = "qc_thumb.png"
REPORT_NAME = "report.html"
REPORT_ASSETS = ".smgic-report"  # thumbnails made by the cohort report; ids never start with "."
PAGE_MM_PER_PIXEL = 1.0
THUMB_MM_PER_PIXEL = 2.5
FLAG_RANK = {"error": 0, "fail": 1, "warn": 2, "ok": 3, "unknown": 4}
FLAG_COLOURS = {"error": "#6a1b9a", "fail": "#c62828", "warn": "#ef6c00", "ok": "#2e7d32", "unknown": "#757575"}


# ---------------------------------------------------------------------------------------------
# Pictures


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of `rgb` (H, W, 3) uint8."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"png_bytes needs a non-empty (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def _plane_at(plane: np.ndarray, row_mm: float, col_mm: float, mm_per_pixel: float) -> np.ndarray:
    """A display plane (rows, cols) resampled (nearest) to square pixels of `mm_per_pixel`."""
    rows = np.minimum((np.arange(0, plane.shape[0] * row_mm, mm_per_pixel) / row_mm).astype(int), plane.shape[0] - 1)
    cols = np.minimum((np.arange(0, plane.shape[1] * col_mm, mm_per_pixel) / col_mm).astype(int), plane.shape[1] - 1)
    return plane[np.ix_(rows, cols)]


def _planes(volume: np.ndarray, sizes: np.ndarray, mm_per_pixel: float) -> list[np.ndarray]:
    """The three central planes of a canonical (RAS) volume at square pixels (qc.py's layout)."""
    # qc.central_slices gives (plane, aspect); its rows run along the 3rd (or 2nd) axis, columns the other.
    row_col = ((sizes[2], sizes[1]), (sizes[2], sizes[0]), (sizes[1], sizes[0]))
    return [_plane_at(plane, r, c, mm_per_pixel) for (plane, _), (r, c) in zip(qc.central_slices(volume, sizes), row_col)]


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it: a one-pixel outline."""
    edge = np.zeros_like(mask)
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    return edge & mask


def _side_by_side(images: list[np.ndarray], gap: int = 4, background=(0, 0, 0)) -> np.ndarray:
    height = max(image.shape[0] for image in images)
    parts = []
    for number, image in enumerate(images):
        pad = np.empty((height, image.shape[1], 3), np.uint8)
        pad[:] = background
        top = (height - image.shape[0]) // 2
        pad[top:top + image.shape[0]] = image
        parts.append(pad)
        if number < len(images) - 1:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def _edge_levels(fixed_scaled: np.ndarray) -> tuple[float, float]:
    """(outline level, tissue level) of the fixed image scaled by qc.display_scaled: the foreground's
    edge, and the median foreground intensity (a T1's grey/white boundary lies near it)."""
    foreground = fixed_scaled[fixed_scaled > flags.FOREGROUND_FRACTION]
    tissue = float(np.median(foreground)) if foreground.size else 0.5
    return flags.FOREGROUND_FRACTION, tissue


def _overlay_rgb(fixed_scaled, warped_scaled, sizes, mm_per_pixel: float) -> np.ndarray:
    outline, tissue = _edge_levels(fixed_scaled) if fixed_scaled is not None else (None, None)
    panels = []
    warped_planes = _planes(warped_scaled, sizes, mm_per_pixel)
    fixed_planes = _planes(fixed_scaled, sizes, mm_per_pixel) if fixed_scaled is not None else [None] * 3
    for warped_plane, fixed_plane in zip(warped_planes, fixed_planes):
        grey = (np.clip(warped_plane, 0, 1) * 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        if fixed_plane is not None:
            rgb[_contour(fixed_plane > outline)] = (255, 220, 0)
            rgb[_contour(fixed_plane > tissue)] = (255, 40, 40)
        panels.append(rgb)
    return _side_by_side(panels)


# Blue - white - red, for log2 det(J) in [-1.5, 1.5].
_DIVERGING = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]], float)
JACOBIAN_LOG2_RANGE = 1.5


def _jacobian_rgb(jacobian, sizes, mm_per_pixel: float) -> np.ndarray:
    panels = []
    for plane in _planes(jacobian, sizes, mm_per_pixel):
        value = np.log2(np.clip(plane, 1e-3, None))
        position = (np.clip(value, -JACOBIAN_LOG2_RANGE, JACOBIAN_LOG2_RANGE) / JACOBIAN_LOG2_RANGE + 1) / 2
        position = position * (len(_DIVERGING) - 1)
        low = np.minimum(np.floor(position).astype(int), len(_DIVERGING) - 2)
        weight = (position - low)[..., None]
        rgb = (_DIVERGING[low] * (1 - weight) + _DIVERGING[low + 1] * weight).astype(np.uint8)
        rgb[plane <= 0] = (255, 230, 0)
        panels.append(rgb)
    return _side_by_side(panels, background=(247, 247, 247))


def _canonical_scaled(image):
    data, sizes = qc.canonical(np.asarray(image.dataobj, dtype=np.float32), image.affine)
    return qc.display_scaled(data), sizes


def _images_from_folder(folder: Path, report: dict, fixed):
    """(fixed, warped, jacobian) nibabel images for a pair folder; fixed may be None."""
    import nibabel as nib

    def load(name):
        path = folder / name
        return nib.load(str(path)) if path.is_file() else None

    warped, jacobian = load("warped.nii.gz"), load("jacobian.nii.gz")
    if fixed is None:
        source = (report.get("fixed") or {}).get("source")
        if source and Path(source).is_file():
            fixed = source
    if isinstance(fixed, (str, os.PathLike)):
        from .. import io

        fixed = io.load_volume(fixed, name="fixed image").to_nifti()
    return fixed, warped, jacobian


def write_pair_images(folder, fixed, warped, jacobian) -> dict:
    """Write qc_overlay.png, qc_jacobian.png and qc_thumb.png into `folder`; nibabel images on the
    fixed grid (fixed may be None: the overlay then has no edges). Returns {role: file name} and "edges": whether edges were drawn."""
    folder = Path(os.fspath(folder))
    if warped is None:
        raise ValueError(f"write_pair_images needs the warped image, got None (is {folder / 'warped.nii.gz'} missing?)")
    warped_scaled, sizes = _canonical_scaled(warped)
    fixed_scaled = None
    if fixed is not None:
        fixed_scaled, _ = _canonical_scaled(fixed)
        if fixed_scaled.shape != warped_scaled.shape:
            raise ValueError(f"fixed and warped images must share a grid, got {fixed_scaled.shape} and {warped_scaled.shape}")
    written = {"edges": fixed is not None}
    atomic.write_bytes(folder / OVERLAY_NAME, png_bytes(_overlay_rgb(fixed_scaled, warped_scaled, sizes, PAGE_MM_PER_PIXEL)))
    written["overlay"] = OVERLAY_NAME
    atomic.write_bytes(folder / THUMB_NAME, png_bytes(_overlay_rgb(fixed_scaled, warped_scaled, sizes, THUMB_MM_PER_PIXEL)))
    written["thumbnail"] = THUMB_NAME
    if jacobian is not None:
        jacobian_data, _ = qc.canonical(np.asarray(jacobian.dataobj, dtype=np.float32), jacobian.affine)
        atomic.write_bytes(folder / JACOBIAN_NAME, png_bytes(_jacobian_rgb(jacobian_data, sizes, PAGE_MM_PER_PIXEL)))
        written["jacobian"] = JACOBIAN_NAME
    return written


# ---------------------------------------------------------------------------------------------
# HTML pieces shared by both pages

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header,main{max-width:1250px;margin:0 auto;padding:12px 20px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:22px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:14px 0 6px}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;color:#fff;font-weight:600;font-size:12px;
 text-transform:uppercase;letter-spacing:.04em}
.badge.ok{background:#2e7d32}.badge.warn{background:#ef6c00}.badge.fail{background:#c62828}
.badge.error{background:#6a1b9a}.badge.unknown{background:#757575}
ul.reasons{margin:4px 0 8px 0;padding-left:20px}ul.reasons li{margin:2px 0}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;
 vertical-align:top}th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.bad{background:#ffebee}td.meh{background:#fff3e0}
img.qc{max-width:100%;background:#000;display:block;margin:4px 0}
details{margin:8px 0}pre{background:#fff;border:1px solid #ddd;padding:8px;overflow:auto;max-height:480px}
.legend{display:inline-block;width:240px;height:12px;vertical-align:middle;border:1px solid #999;
 background:linear-gradient(to right,#2166ac,#92c5de,#f7f7f7,#f4a582,#b2182b)}
.muted{color:#777}.plots{display:flex;flex-wrap:wrap;gap:10px}.plots svg{background:#fff;border:1px solid #ddd}
#pairs-table th{cursor:pointer;user-select:none;white-space:nowrap}#pairs-table th.sorted-asc::after{content:" \\25B2"}
#pairs-table th.sorted-desc::after{content:" \\25BC"}#pairs-table td{font-size:13px}
.controls{margin:8px 0;display:flex;gap:14px;align-items:center;flex-wrap:wrap}
section.pair{background:#fff;border:1px solid #ddd;border-radius:4px;margin:10px 0;padding:6px 12px}
section.pair:target{outline:3px solid #1565c0}
section.pair .row{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
img.thumb{background:#000;display:block;height:auto}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if not is_number(value):
        return _e(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.{digits}g}"


def _flag_of(report: dict | None, status: str | None = None) -> str:
    if status == "failed":
        return "error"
    flag = (report or {}).get("flag")
    return flag if flag in flags.FLAGS else "unknown"


def _badge(flag: str) -> str:
    return f'<span class="badge {_e(flag)}">{_e(flag)}</span>'


def _reasons_html(reasons) -> str:
    if not reasons:
        return '<p class="muted">No rule was triggered.</p>'
    return '<ul class="reasons">' + "".join(f"<li>{_e(text)}</li>" for text in reasons) + "</ul>"


def _generic_table(value) -> str:
    """Nested stats as HTML: dicts as two-column tables, lists of dicts as tables with a column
    per key, other lists and scalars inline."""
    if isinstance(value, dict):
        if not value:
            return '<span class="muted">(empty)</span>'
        rows = "".join(f"<tr><th>{_e(key)}</th><td>{_generic_table(item)}</td></tr>" for key, item in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        keys = list(dict.fromkeys(key for item in value for key in item))
        head = "".join(f"<th>{_e(key)}</th>" for key in keys)
        body = "".join("<tr>" + "".join(f"<td>{_generic_table(item.get(key))}</td>" for key in keys) + "</tr>" for item in value)
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(value, list):
        if len(value) > 8 and all(isinstance(item, (int, float)) for item in value):
            return _e(json.dumps(value))
        return "[" + ", ".join(_generic_table(item) for item in value) + "]"
    return _number(value)


# ---------------------------------------------------------------------------------------------
# One pair


def _thresholds_by_measurement(thresholds) -> dict:
    table = {}
    for rule in thresholds:
        table.setdefault(rule.measurement, []).append(rule)
    return table


def _measurements_html(measurements: dict | None, thresholds=flags.THRESHOLDS) -> str:
    """The measurements, those with a rule first (in the rules' order, the worst level marked),
    then the others."""
    if not measurements:
        return '<p class="muted">No QC measurements in this report.</p>'
    rules = _thresholds_by_measurement(thresholds)
    order = [key for key in rules if key in measurements] + [key for key in measurements if key not in rules]
    rows = []
    for key in order:
        value = measurements[key]
        related = rules.get(key, [])
        levels = [rule.level(value) for rule in related if isinstance(value, (int, float))]
        worst = max((flags.FLAGS.index(level) for level in levels), default=0)
        css = {2: ' class="num bad"', 1: ' class="num meh"'}.get(worst, ' class="num"')
        sign = lambda rule: "<" if rule.below else ">"  # noqa: E731
        limits = "; ".join(f"warn {sign(rule)} {_number(rule.warn)}"
                           + (f", fail {sign(rule)} {_number(rule.fail)}" if rule.fail is not None else "")
                           for rule in related)
        description = " / ".join(dict.fromkeys(rule.description for rule in related))
        rows.append(f"<tr><th>{_e(key)}</th><td{css}>{_generic_table(value)}</td><td>{_e(limits)}</td>"
                    f"<td class=\"muted\">{_e(description)}</td></tr>")
    return ("<table><tr><th>measurement</th><th>value</th><th>limits</th><th>what</th></tr>"
            + "".join(rows) + "</table>")


# The pipeline's order (report.json stores its keys sorted), then what saving adds.
_STAGE_ORDER = (*STAGE_ORDER, "flags", "warp_labels")


def _seconds_html(seconds: dict | None, total=None) -> str:
    if not seconds:
        return '<p class="muted">No timings in this report.</p>'
    longest = max([value for value in seconds.values() if isinstance(value, (int, float))] or [1.0])
    rows = []
    names = [name for name in _STAGE_ORDER if name in seconds] + [name for name in seconds if name not in _STAGE_ORDER]
    for name in names:
        value = seconds[name]
        width = 0 if not isinstance(value, (int, float)) or longest <= 0 else int(200 * value / longest)
        rows.append(f'<tr><th>{_e(name)}</th><td class="num">{_number(value, 3)}</td>'
                    f'<td><div style="background:#1565c0;height:10px;width:{width}px"></div></td></tr>')
    if total is not None:
        rows.append(f'<tr><th>total</th><td class="num">{_number(total, 3)}</td><td></td></tr>')
    return "<table><tr><th>stage</th><th>seconds</th><th></th></tr>" + "".join(rows) + "</table>"


_SUMMARY_KEYS = ("backend", "bundle_id", "stages_run", "folding_fraction", "folding_voxels", "jacobian_min",
                 "jacobian_max", "inverse_consistency_voxels_mean", "inverse_consistency_voxels_brain_mean",
                 "inverse_consistency_voxels_max", "integration_steps", "fixed", "moving", "affine_matrix")


def _pair_html(report: dict, images: dict, title: str) -> str:
    flag = _flag_of(report)
    picture = (f'<h3>Fixed-image edges on the warped moving image</h3><img class="qc" src="{_e(images["overlay"])}" '
               f'alt="overlay of the fixed image\'s edges on the warped moving image">'
               '<p class="muted">sagittal, coronal, axial; yellow: fixed outline, red: fixed tissue boundary '
               '(median foreground intensity)' + ("" if images.get("edges") else
               '; <b>no edges: the fixed image was not available</b>') + '</p>') if "overlay" in images else ""
    if "jacobian" in images:
        picture += (f'<h3>Jacobian determinant</h3><img class="qc" src="{_e(images["jacobian"])}" alt="log2 Jacobian map">'
                    f'<p class="muted">log2 det J: <span>-{JACOBIAN_LOG2_RANGE}</span> <span class="legend"></span> '
                    f'<span>+{JACOBIAN_LOG2_RANGE}</span> (shrinkage blue, expansion red, folds J&le;0 yellow)</p>')
    if images.get("qc_png"):
        picture += f'<p><a href="{_e(images["qc_png"])}">qc.png</a> (rows of fixed, moving, warped, checkerboard, Jacobian)</p>'
    stages = report.get("stages") or {}
    stage_stats = "".join(f"<h3>{_e(name)} ({_e(record.get('mode'))})</h3>{_generic_table(record.get('stats'))}"
                          for name, record in ((n, stages[n]) for n in STAGE_ORDER if n in stages)
                          if record.get("ran") and record.get("stats"))
    summary = {key: report.get(key) for key in _SUMMARY_KEYS if key in report}
    raw = json.dumps(report, indent=1, sort_keys=True, default=str)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)} – smgic_rt QC</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>
<body><header><h1>{_e(title)} {_badge(flag)}</h1>
{_reasons_html(report.get("flag_reasons"))}</header>
<main>{picture}
<h2>QC measurements</h2>{_measurements_html(report.get("qc_measurements"))}
<h2>Seconds per stage</h2>{_seconds_html(report.get("seconds"), report.get("seconds_total"))}
<h2>Stage statistics</h2>{stage_stats or '<p class="muted">none</p>'}
<h2>Registration</h2>{_generic_table(summary)}
<details><summary>raw report</summary><pre>{_e(raw)}</pre></details>
</main></body></html>
"""


def _report_from_result(result) -> dict:
    report = dict(result.stats or {})
    if "flag" not in report:
        report.update(flags.assess(result))
    return report


def write_pair_page(folder, result_or_report, *, fixed=None, title: str | None = None) -> Path:
    """Write ``qc.html`` (and its pictures, `write_pair_images`) into the pair folder `folder`.

    Parameters
    ----------
    folder : path
        The pair's output folder (where qc.png and report.json are, or will be).
    result_or_report : RegistrationResult, dict, or path
        A result in memory (its stats, with the flag of `flags.assess` when absent), a report
        dict (report.json's content: the pictures are then made from ``folder``'s warped.nii.gz
        and jacobian.nii.gz), or the path of a report.json or of the folder holding it.
    fixed : path or nibabel image, optional
        The fixed image for the edges when `result_or_report` is no result (default: the report's
        ``fixed.source`` when that file exists).
    title : str, optional
        Heading; default the folder's name.
    """
    folder = Path(os.fspath(folder))
    if not folder.is_dir():
        raise FileNotFoundError(f"pair folder '{folder}' does not exist")
    if hasattr(result_or_report, "stats") and hasattr(result_or_report, "warped"):
        report = _report_from_result(result_or_report)
        images = write_pair_images(folder, result_or_report.fixed_image, result_or_report.warped, result_or_report.jacobian)
    else:
        if isinstance(result_or_report, dict):
            report = result_or_report
        elif isinstance(result_or_report, (str, os.PathLike)):
            path = Path(os.fspath(result_or_report))
            path = path / "report.json" if path.is_dir() else path
            report = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise TypeError(f"result_or_report must be a RegistrationResult, a report dict or a path, "
                            f"got {type(result_or_report).__name__}")
        images = write_pair_images(folder, *_images_from_folder(folder, report, fixed))
    if (folder / "qc.png").is_file() or "qc" in (report.get("files") or {}):
        images["qc_png"] = "qc.png"
    return atomic.write_text(folder / PAGE_NAME, _pair_html(report, images, title or folder.name))


# ---------------------------------------------------------------------------------------------
# A cohort


# (key, heading, where the value comes from, plot scale)
_COLUMNS = (
    ("lncc", "similarity (LNCC)", "linear"),
    ("lncc_gain", "gain over affine", "linear"),
    ("folding_fraction", "folding", "log"),
    ("inverse_consistency", "inverse consistency (vox)", "log"),
    ("seconds", "seconds", "linear"),
)
_PLOTS = (("lncc", "similarity after registration (local NCC)"), ("folding_fraction", "folding fraction (det J <= 0)"),
          ("inverse_consistency", "inverse consistency in the brain (voxels)"), ("seconds", "seconds per pair"))
_LOG_FLOOR = 1e-6
_PLOT_LIMITS = {"lncc": "lncc", "folding_fraction": "folding_fraction",
                "inverse_consistency": "inverse_consistency_voxels_brain_mean"}


def _read_report(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cohort_row(out_root: Path, record: dict) -> dict:
    pair_id = str(record.get("id", "?"))
    folder = Path(record.get("outdir") or (out_root / pair_id))
    report = _read_report(folder) if record.get("status") != "failed" else None
    measurements = (report or {}).get("qc_measurements") or {}
    stats = {**(record.get("stats") or {}), **(report or {})}
    link = os.path.relpath(folder, out_root).replace(os.sep, "/")
    return {
        "id": pair_id, "status": record.get("status"), "error": record.get("error"), "folder": folder, "link": link,
        "report": report, "flag": _flag_of(report, record.get("status")),
        "reasons": (report or {}).get("flag_reasons") or ([record["error"]] if record.get("error") else []),
        "lncc": measurements.get("lncc"), "lncc_gain": measurements.get("lncc_gain"),
        "folding_fraction": stats.get("folding_fraction"),
        "inverse_consistency": stats.get("inverse_consistency_voxels_brain_mean", stats.get("inverse_consistency_voxels_mean")),
        "seconds": record.get("seconds", stats.get("seconds_total")),
    }


def _thumbnail(out_root: Path, row: dict) -> str | None:
    """Relative path of the pair's thumbnail, made once into REPORT_ASSETS when the pair has none."""
    folder = row["folder"]
    if (folder / THUMB_NAME).is_file():
        return f"{row['link']}/{THUMB_NAME}"
    if row["report"] is None or not (folder / "warped.nii.gz").is_file():
        return None
    target = out_root / REPORT_ASSETS / f"{row['id']}.png"
    source = folder / "report.json"
    if target.is_file() and target.stat().st_mtime_ns >= source.stat().st_mtime_ns:
        return f"{REPORT_ASSETS}/{row['id']}.png"
    try:
        fixed, warped, _ = _images_from_folder(folder, row["report"], None)
        warped_scaled, sizes = _canonical_scaled(warped)
        fixed_scaled = _canonical_scaled(fixed)[0] if fixed is not None else None
        if fixed_scaled is not None and fixed_scaled.shape != warped_scaled.shape:
            fixed_scaled = None
        target.parent.mkdir(exist_ok=True)
        atomic.write_bytes(target, png_bytes(_overlay_rgb(fixed_scaled, warped_scaled, sizes, THUMB_MM_PER_PIXEL)))
    except (OSError, ValueError) as error:  # a damaged pair folder costs its thumbnail, not the report
        logger.warning("no thumbnail for pair %s: %s", row["id"], error)
        return None
    return f"{REPORT_ASSETS}/{row['id']}.png"


def _strip_plot(rows: list[dict], key: str, heading: str, scale: str) -> str:
    """An inline-SVG strip plot: one dot per pair (coloured by flag, jittered), linking to its
    section; the rules' warn/fail limits as dashed lines."""
    width, height, left, right = 560, 150, 14, 14
    values = [(row, row[key]) for row in rows if isinstance(row[key], (int, float)) and math.isfinite(row[key])]
    transform = (lambda v: math.log10(max(v, _LOG_FLOOR))) if scale == "log" else (lambda v: float(v))
    limits = []
    for rule in flags.THRESHOLDS:
        if rule.measurement == _PLOT_LIMITS.get(key):
            limits += [(rule.warn, "#ef6c00"), (rule.fail, "#c62828")]
    points = [transform(v) for _, v in values] + [transform(v) for v, _ in limits if v is not None]
    low, high = (min(points), max(points)) if points else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = 0.04 * (high - low)
    low, high = low - pad, high + pad

    def x_of(v):
        return left + (transform(v) - low) / (high - low) * (width - left - right)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{_e(heading)}"><text x="{left}" y="16" font-size="13">{_e(heading)}'
             f'{" (log scale)" if scale == "log" else ""}</text>',
             f'<line x1="{left}" y1="{height - 28}" x2="{width - right}" y2="{height - 28}" stroke="#999"/>']
    for value, colour in limits:
        if value is not None:
            parts.append(f'<line x1="{x_of(value):.1f}" y1="24" x2="{x_of(value):.1f}" y2="{height - 28}" '
                         f'stroke="{colour}" stroke-dasharray="4 3"/>')
    for tick in np.linspace(low + pad, high - pad, 5):
        label = (f"{10 ** tick:.2g}" if tick > math.log10(_LOG_FLOOR) + 1e-9 else "0") if scale == "log" else f"{tick:.3g}"
        x = left + (tick - low) / (high - low) * (width - left - right)
        parts.append(f'<text x="{x:.1f}" y="{height - 12}" font-size="11" text-anchor="middle" fill="#555">{_e(label)}</text>')
    rng = np.random.default_rng(0)  # jitter seeded: the same cohort gives the same picture
    for row, value in values:
        y = 32 + rng.uniform(0, height - 68)
        parts.append(f'<a href="#pair-{_e(row["id"])}"><circle cx="{x_of(value):.1f}" cy="{y:.1f}" r="4" '
                     f'fill="{FLAG_COLOURS[row["flag"]]}" fill-opacity="0.75"><title>{_e(row["id"])}: '
                     f'{_e(_number(value))} ({_e(row["flag"])})</title></circle></a>')
    parts.append("</svg>")
    return "".join(parts)


_SCRIPT = r"""
const FLAG_RANK = {error: 0, fail: 1, warn: 2, ok: 3, unknown: 4};
function sortValue(row, key) {
  if (key === 'flag') return FLAG_RANK[row.dataset.flag] * 1e6 + Number(row.dataset.index);
  if (key === 'id') return row.dataset.id;
  const v = row.dataset[key.replace(/_([a-z])/g, (m, c) => c.toUpperCase())];
  return v === undefined || v === '' ? null : Number(v);
}
function sortTable(key, descending) {
  const body = document.getElementById('pairs');
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    if (x === null && y === null) return 0;
    if (x === null) return 1;  // missing values last, whatever the direction
    if (y === null) return -1;
    const order = typeof x === 'string' ? x.localeCompare(y) : x - y;
    return descending ? -order : order;
  });
  rows.forEach(row => body.appendChild(row));
  document.querySelectorAll('#pairs-table th').forEach(th => {
    th.classList.remove('sorted-asc', 'sorted-desc');
    if (th.dataset.key === key) th.classList.add(descending ? 'sorted-desc' : 'sorted-asc');
  });
  document.documentElement.dataset.sortedBy = key + ':' + (descending ? 'desc' : 'asc');
  history.replaceState(null, '', '#sort=' + key + ':' + (descending ? 'desc' : 'asc'));
}
function filterTable() {
  const text = document.getElementById('filter-text').value.trim().toLowerCase();
  const shown = new Set(Array.from(document.querySelectorAll('.flag-filter:checked')).map(box => box.value));
  let visible = 0;
  for (const row of document.getElementById('pairs').rows) {
    const keep = shown.has(row.dataset.flag) && (!text || row.textContent.toLowerCase().includes(text));
    row.hidden = !keep;
    if (keep) visible += 1;
  }
  document.getElementById('visible-count').textContent = visible;
}
document.querySelectorAll('#pairs-table th').forEach(th => th.addEventListener('click', () => {
  const again = document.documentElement.dataset.sortedBy === th.dataset.key + ':asc';
  sortTable(th.dataset.key, again);
}));
document.querySelectorAll('.flag-filter, #filter-text').forEach(el => el.addEventListener('input', filterTable));
function showImage(img) {
  if (!img.getAttribute('src') && img.dataset.src) img.src = img.dataset.src;
}
function settled(img) {
  return img.complete ? Promise.resolve() : new Promise(done => {
    img.addEventListener('load', done, {once: true});
    img.addEventListener('error', done, {once: true});
  });
}
function recordImages() {
  // Into the DOM, for people and for tests (chromium --dump-dom): how many images are in the page
  // and how many of those whose loading started have really loaded.
  const images = Array.from(document.images);
  const started = images.filter(img => img.getAttribute('src'));
  return Promise.all(started.map(settled)).then(() => {
    const broken = started.filter(img => !(img.complete && img.naturalWidth > 0));
    const root = document.documentElement.dataset;
    root.imagesTotal = images.length;
    root.imagesStarted = started.length;
    root.imagesLoaded = started.length - broken.length;
    root.brokenImages = broken.map(img => img.getAttribute('src')).join(' ');
  });
}
function loadAllImages() {
  document.querySelectorAll('img[data-src]').forEach(showImage);
  return recordImages();
}
if (new URLSearchParams(location.search).get('images') === 'all' || !('IntersectionObserver' in window)) {
  loadAllImages();
} else {
  const observer = new IntersectionObserver(entries => entries.forEach(entry => {
    if (entry.isIntersecting) { showImage(entry.target); observer.unobserve(entry.target); }
  }), {rootMargin: '1000px 0px'});
  document.querySelectorAll('img[data-src]').forEach(img => observer.observe(img));
}
window.addEventListener('load', () => {
  const match = /^#sort=([A-Za-z_]+):(asc|desc)$/.exec(location.hash);
  if (match) sortTable(match[1], match[2] === 'desc');
  recordImages().then(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    document.documentElement.dataset.loadMs = nav ? Math.round(nav.loadEventStart) : '';
    document.documentElement.dataset.readyMs = Math.round(performance.now());
  });
});
"""


def _cohort_html(rows: list[dict], thumbs: dict, title: str, summary: dict | None) -> str:
    counts = {flag: sum(1 for row in rows if row["flag"] == flag) for flag in FLAG_RANK}
    count_text = " ".join(f"{_badge(flag)} {counts[flag]}" for flag in FLAG_RANK if counts[flag])
    plots = "".join(_strip_plot(rows, key, heading, dict((k, s) for k, _, s in _COLUMNS)[key]) for key, heading in _PLOTS)
    head = ('<tr><th data-key="flag">flag</th><th data-key="id">pair</th>'
            + "".join(f'<th data-key="{key}">{_e(heading)}</th>' for key, heading, _ in _COLUMNS)
            + "<th>reasons</th></tr>")
    ordered = sorted(rows, key=lambda row: (FLAG_RANK[row["flag"]], row["id"]))
    body, sections = [], []
    for index, row in enumerate(ordered):
        data = "".join(f' data-{key.replace("_", "-")}="{"" if row[key] is None else repr(float(row[key]))}"'
                       for key, _, _ in _COLUMNS)
        reasons = "; ".join(row["reasons"])
        body.append(f'<tr data-id="{_e(row["id"])}" data-flag="{row["flag"]}" data-index="{index}"{data}>'
                    f'<td>{_badge(row["flag"])}</td><td><a href="#pair-{_e(row["id"])}">{_e(row["id"])}</a></td>'
                    + "".join(f'<td class="num">{_number(row[key], 4)}</td>' for key, _, _ in _COLUMNS)
                    + f"<td>{_e(reasons)}</td></tr>")
        thumb = thumbs.get(row["id"])
        # data-src: the page's script sets src when the section nears the viewport, so that a
        # page of 1,000 pairs does not decode 1,000 thumbnails before it shows (see _SCRIPT).
        image = f'<img class="thumb" data-src="{_e(thumb)}" alt="{_e(row["id"])} overlay" decoding="async">' if thumb else ""
        if image and (row["folder"] / PAGE_NAME).is_file():
            image = f'<a href="{_e(row["link"])}/{PAGE_NAME}">{image}</a>'
        picture = image or '<p class="muted">no picture</p>'
        links = [f'<a href="{_e(row["link"])}/{name}">{name}</a>' for name in (PAGE_NAME, "qc.png", "report.json")
                 if (row["folder"] / name).is_file()]
        facts = (f'similarity {_number(row["lncc"])}, folding {_number(row["folding_fraction"])}, '
                 f'inverse consistency {_number(row["inverse_consistency"])} vox, {_number(row["seconds"], 3)} s')
        sections.append(f'<section class="pair" id="pair-{_e(row["id"])}"><h3>{_e(row["id"])} {_badge(row["flag"])} '
                        f'<span class="muted">{_e(row["status"])}</span></h3><div class="row">{picture}<div>'
                        f'{_reasons_html(row["reasons"])}<p>{facts}</p><p>{" · ".join(links)}</p></div></div></section>')
    filters = "".join(f'<label><input type="checkbox" class="flag-filter" value="{flag}" checked> {_badge(flag)}</label>'
                      for flag in FLAG_RANK)
    options = _e(json.dumps((summary or {}).get("options"), sort_keys=True)) if summary else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>
<body><header><h1>{_e(title)}</h1><p>{len(rows)} pairs: {count_text}</p>
{f'<p class="muted">options {options}</p>' if options else ''}</header>
<main><h2>Distributions</h2><p class="muted">one dot per pair (click: its section); dashed lines: warn and fail limits</p>
<div class="plots">{plots}</div>
<h2>Pairs</h2><div class="controls"><input id="filter-text" type="search" placeholder="filter by id or reason">
{filters}<span><span id="visible-count">{len(rows)}</span> shown</span><span class="muted">click a header to sort</span></div>
<table id="pairs-table"><thead>{head}</thead><tbody id="pairs">{"".join(body)}</tbody></table>
<h2>Each pair</h2>{"".join(sections)}
</main><script>{_SCRIPT}</script></body></html>
"""


def write_cohort_report(out_root, records, *, title: str | None = None, summary: dict | None = None) -> Path:
    """Write ``out_root/report.html`` for a cohort.

    Parameters
    ----------
    out_root : path
        smgic-batch's output folder.
    records : sequence of dict
        One per pair, as summary.json's ``pairs`` holds them: ``id``, ``status``, ``error``,
        ``seconds``, ``stats`` and ``outdir`` (default ``out_root/<id>``), whose report.json
        supplies the flag, reasons and measurements.
    title : str, optional
    summary : dict, optional
        summary.json's content, for the options line.
    """
    out_root = Path(os.fspath(out_root))
    if not out_root.is_dir():
        raise FileNotFoundError(f"cohort folder '{out_root}' does not exist")
    records = list(records)
    for number, record in enumerate(records):
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"records[{number}] must be a dict with an 'id', got {record!r:.80}")
    rows = [_cohort_row(out_root, record) for record in records]
    thumbs = {row["id"]: _thumbnail(out_root, row) for row in rows}
    page = _cohort_html(rows, thumbs, title or f"smgic_rt cohort QC: {out_root.name}", summary)
    return atomic.write_text(out_root / REPORT_NAME, page)
