"""smgic-register / smgic-apply on bad input: a clear message, a non-zero exit, no partial output.

These cases fail during validation, before any model is loaded, so they need no bundle.
"""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import cli
from smgic_rt.io import make_nifti

from test_registrar_support import unwritable_folder

REPO = Path(__file__).resolve().parents[1]
ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _save(path, data, affine=None):
    nib.save(make_nifti(np.asarray(data), np.eye(4) * [2, 2, 2, 1] if affine is None else affine), str(path))
    return str(path)


@pytest.fixture
def good(tmp_path):
    return str(ANATOMICAL)


def _run_register(argv, capsys):
    status = cli.register_main(argv)
    return status, capsys.readouterr().err


def _assert_nothing_written(folder: Path, allowed):
    leftovers = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
    assert leftovers == [], f"partial output left behind: {leftovers}"


def _bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.random((10, 11, 12)).astype(np.float32)
    not_image = tmp_path / "notes.nii.gz"
    not_image.write_text("not an image")
    nan_volume = volume.copy()
    nan_volume[1, 2, 3] = np.nan
    inf_volume = volume.copy()
    inf_volume[4, 4, 4] = np.inf
    return {
        "missing": (str(tmp_path / "absent.nii.gz"), "no such file"),
        "not_image": (str(not_image), "could not read"),
        "2d": (_save(tmp_path / "flat.nii.gz", rng.random((20, 30)).astype(np.float32)), "must be a 3-D volume, got a 2-D image"),
        "4d": (_save(tmp_path / "series.nii.gz", rng.random((10, 11, 12, 3)).astype(np.float32)), "got a 4-D image"),
        "nan": (_save(tmp_path / "nan.nii.gz", nan_volume), "finite values, got 1 NaN"),
        "inf": (_save(tmp_path / "inf.nii.gz", inf_volume), "0 NaN and 1 infinite"),
        "constant": (_save(tmp_path / "constant.nii.gz", np.full((10, 11, 12), 7.0, np.float32)), "is constant"),
        "voxel_size": (_save(tmp_path / "huge_voxels.nii.gz", volume, np.diag([1.0, 1.0, 400.0, 1.0])), "voxel sizes must lie in"),
    }


@pytest.mark.parametrize("case", ["missing", "not_image", "2d", "4d", "nan", "inf", "constant", "voxel_size"])
@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_bad_image(tmp_path, capsys, good, case, role):
    path, message = _bad_inputs(tmp_path)[case]
    before = {p.name for p in tmp_path.iterdir()}
    argv = [path, good] if role == "fixed" else [good, path]
    status, err = _run_register(argv + ["-o", str(tmp_path / "out")], capsys)
    assert status == 1
    assert message in err
    assert f"{role} image" in err
    _assert_nothing_written(tmp_path, before)


def test_float_labels_with_fractions(tmp_path, capsys, good):
    labels = np.random.default_rng(1).integers(0, 4, size=(33, 41, 25)) + 0.5
    path = _save(tmp_path / "labels.nii.gz", labels.astype(np.float32))
    before = {p.name for p in tmp_path.iterdir()}
    status, err = _run_register([good, good, "-o", str(tmp_path / "out"), "--moving-labels", path], capsys)
    assert status == 1
    assert "moving labels must hold integer labels" in err
    _assert_nothing_written(tmp_path, before)


def test_existing_output_dir_is_kept(tmp_path, capsys, good):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "previous.txt").write_text("earlier results")
    status, err = _run_register([good, good, "-o", str(outdir)], capsys)
    assert status == 1
    assert "already exists" in err and "--overwrite" in err
    assert [p.name for p in outdir.iterdir()] == ["previous.txt"]
    _assert_nothing_written(tmp_path, {"out"})


def test_unwritable_output_dir(tmp_path, capsys, good):
    parent = unwritable_folder(tmp_path)
    status, err = _run_register([good, good, "-o", str(parent / "smgic_out")], capsys)
    assert status == 1
    assert "not writable" in err
    assert not (parent / "smgic_out").exists()


def test_unknown_backend_is_a_usage_error(tmp_path, good):
    with pytest.raises(SystemExit) as exit_info:
        cli.register_main([good, good, "-o", str(tmp_path / "out"), "--backend", "cuda-magic"])
    assert exit_info.value.code == 2


def test_apply_bad_inputs(tmp_path, capsys):
    volume = np.random.default_rng(2).random((10, 11, 12)).astype(np.float32)
    image = _save(tmp_path / "image.nii.gz", volume)
    status = cli.apply_main([image, image, image, str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert status == 1 and "ITK displacement field of shape (X, Y, Z, 1, 3)" in err
    status = cli.apply_main([str(tmp_path / "nowarp.nii.gz"), image, image, str(tmp_path / "o.nii.gz")])
    assert status == 1 and "no such file" in capsys.readouterr().err
    existing = tmp_path / "exists.nii.gz"
    existing.write_bytes(b"keep")
    status = cli.apply_main([image, image, image, str(existing)])
    assert status == 1 and "already exists" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep"
    assert not (tmp_path / "o.nii.gz").exists()


def test_module_entry_point_reports_bad_input(tmp_path):
    """`python -m smgic_rt.cli register` from a checkout: real process, real exit status."""
    completed = subprocess.run(
        [sys.executable, "-m", "smgic_rt.cli", "register", str(tmp_path / "absent.nii"), str(ANATOMICAL), "-o", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 1
    assert "fixed image: no such file" in completed.stderr
    assert completed.stdout == ""
    assert not (tmp_path / "out").exists()
