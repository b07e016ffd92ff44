"""The small defects of issue 36 (point 9), one test each; every one of them held on e7b1639."""

import gzip
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import Registrar, io
from smgic_rt.io import outputs
from smgic_rt.methods.refine import Level, RefineOptions, refine_velocity
from smgic_rt.models import bundle as bundle_module

from test_registrar_support import block_downsample, make_tiny_bundle, package_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def registered(tiny_bundle):
    brain = block_downsample(nib.load(str(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))), 4)
    result = Registrar(tiny_bundle, backend="onnxruntime", affine="off", refine="off", threads=1).register(brain, brain)
    return brain, result


def test_a_second_save_does_not_keep_the_first_saves_label_flag(registered, tmp_path):
    brain, result = registered
    data = np.asarray(brain.dataobj)
    labels_affine = brain.affine.copy()
    labels_affine[0, 3] += 40.0  # labels 40 mm off their image: "fail" on the foreground rule
    labels = nib.Nifti1Image((data > 0.3 * data.max()).astype(np.int16), labels_affine)
    with_labels = json.loads((result.save(tmp_path / "a", moving_labels=labels) / "report.json").read_text())
    assert any("labels" in reason for reason in with_labels["flag_reasons"])
    without = json.loads((result.save(tmp_path / "b") / "report.json").read_text())
    assert not any("labels" in reason for reason in without["flag_reasons"]), without["flag_reasons"]
    assert without["qc_measurements"]["labels_on_foreground"] is None


def test_qc_page_is_titled_with_the_output_folder(registered, tmp_path):
    _, result = registered
    page = (result.save(tmp_path / "subject01", qc=True) / "qc.html").read_text()
    title = page.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith("subject01 ") and ".tmp" not in page


def test_gzip_header_promising_more_than_the_file_holds_is_refused_at_once(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((600, 600, 600))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\1" * 4000
    path = tmp_path / "liar.nii.gz"
    path.write_bytes(gzip.compress(raw))
    assert path.stat().st_size < 4096
    with pytest.raises(io.InvalidImageError, match="more than a .*-byte gzip file can hold"):
        io.load_volume(path)


def test_threads_beyond_the_machine_are_refused(tiny_bundle):
    import os

    with pytest.raises(ValueError, match=rf"^threads must be an int in \[1, {os.cpu_count() or 1}\]"):
        Registrar(tiny_bundle, backend="onnxruntime", threads=(os.cpu_count() or 1) * 8 + 1000)


def test_a_time_limit_that_allows_no_iteration_says_so(caplog):
    rng = np.random.default_rng(0)
    fixed = rng.random((16, 16, 16)).astype(np.float32)
    moving = np.roll(fixed, 1, axis=0)
    with caplog.at_level(logging.WARNING, logger="smgic_rt"):
        result = refine_velocity(fixed, moving, options=RefineOptions(levels=(Level(1, 5),), max_seconds=1e-9))
    assert result.stats["iterations"] == 0
    assert "ran no iteration" in caplog.text


def test_long_output_name_is_refused_as_too_long(tmp_path):
    with pytest.raises(ValueError, match="bytes long"):
        outputs.check_output_dir(tmp_path / ("x" * 250))


def test_a_killed_run_leaves_no_bundle_extraction_behind(tiny_bundle, tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in Path(tiny_bundle).iterdir():
            zipped.write(file, file.name)
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from smgic_rt.models import bundle; "
                              "print(bundle.load_bundle(sys.argv[1]).path, flush=True); time.sleep(600)", str(archive)],
                             cwd=REPO, stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    try:
        left = Path(child.stdout.readline().strip())
        assert left.is_dir()
    finally:
        child.kill()
        child.wait()
    assert left.is_dir()  # SIGKILL: no atexit cleanup ran
    loaded = bundle_module.load_bundle(archive)
    assert not left.exists()
    assert Path(loaded.path).is_dir()  # this process's own extraction stays while it runs
