"""Output folders: smgic replaces only what it wrote (issue 15). Each case was reproduced on the
code before `smgic_rt.io.outputs` existed, where `--overwrite` removed whatever the folder held."""

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

from smgic_rt.io import atomic, outputs
from smgic_rt import batch, cli
from smgic_rt.io import OutputExistsError

from test_registrar_support import block_downsample, make_tiny_bundle, package_file, unwritable_folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    brain = block_downsample(nib.load(str(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))), 4)
    nib.save(brain, str(folder / "fixed.nii.gz"))
    nib.save(brain, str(folder / "moving.nii.gz"))
    return folder


def _register(bundle, images, out, *extra, cwd=None, env=None):
    """smgic-register in this process (its exit status), or with `cwd` in a subprocess there."""
    args = [str(images / "fixed.nii.gz"), str(images / "moving.nii.gz"), "-o", str(out), "--bundle", str(bundle),
            "--backend", "onnxruntime", "--affine", "off", "--refine", "off", *extra]
    if cwd is None:
        return cli.register_main([*args, "-q"])
    return subprocess.run([sys.executable, "-m", "smgic_rt.cli", "register", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_overwrite_replaces_a_previous_output_of_ours(bundle, images, tmp_path):
    out = tmp_path / "results"
    assert _register(bundle, images, out) == 0
    manifest = outputs.read_manifest(out)
    assert manifest is not None and "warp.nii.gz" in manifest["files"] and "report.json" in manifest["files"]
    assert _register(bundle, images, out, "--overwrite") == 0
    (out / "jacobian.nii.gz").unlink()  # one of our files gone: still only ours in there
    assert _register(bundle, images, out, "--overwrite") == 0
    assert outputs.read_manifest(out) is not None


@pytest.mark.parametrize("intruder", ["notes.txt", "subfolder", "changed"])
def test_overwrite_refuses_a_folder_holding_anything_else(bundle, images, tmp_path, intruder):
    out = tmp_path / "results"
    assert _register(bundle, images, out) == 0
    if intruder == "notes.txt":
        (out / "notes.txt").write_text("my notes")
    elif intruder == "subfolder":
        (out / "subfolder").mkdir()
        (out / "subfolder" / "keep.txt").write_text("keep")
    else:  # a user edited one of our files: it is theirs now
        (out / "warped.nii.gz").write_bytes(b"edited")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(outputs.OutputFolderError, match="not a smgic output folder holding only what smgic wrote"):
        outputs.check_output_dir(out, overwrite=True)
    assert _register(bundle, images, out, "--overwrite") == 1
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_user_folder_without_our_manifest_is_never_replaced(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(outputs.OutputFolderError, match="no manifest.json of ours"):
        outputs.check_output_dir(folder, overwrite=True)
    with pytest.raises(OutputExistsError, match="already exists"):
        outputs.check_output_dir(folder)


@pytest.mark.parametrize("target", [".", "", "~", "/", "..", "inputs"])
def test_overwrite_never_touches_the_current_folder_its_ancestors_home_root_or_inputs(bundle, images, tmp_path, target):
    home = tmp_path / "home"
    work = home / "work"
    work.mkdir(parents=True)
    for name in ("fixed.nii.gz", "moving.nii.gz"):
        (work / name).write_bytes((images / name).read_bytes())
    env = {**os.environ, "HOME": str(home)}
    out = {"inputs": str(work)}.get(target, target)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = _register(bundle, work, out, "--overwrite", cwd=tmp_path if target == "inputs" else work, env=env)
    assert done.returncode == 1, done.stderr
    assert "refusing to replace" in done.stderr or "empty string" in done.stderr, done.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_stale_staging_of_a_killed_run_is_removed_and_nothing_else(tmp_path):
    out = tmp_path / "results"
    killed = subprocess.run([sys.executable, "-c", f"""
import os
from smgic_rt.io import atomic
with atomic.atomic_dir({str(out)!r}) as staging:
    (staging / "warp.nii.gz").write_bytes(b"x" * 1000)
    os._exit(9)  # killed while saving
"""], cwd=tmp_path)
    assert killed.returncode == 9
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".results.tmp-")]
    assert len(stale) == 1 and atomic.read_staging_marker(stale[0]) is not None
    lookalike = tmp_path / ".results.tmp-mine"  # our name pattern, but not ours
    lookalike.mkdir()
    (lookalike / "data.txt").write_text("keep")
    with atomic.atomic_dir(tmp_path / "other") as alive:  # a run in progress: its process lives
        outputs.check_output_dir(out)
        assert alive.is_dir()
    assert not stale[0].exists() and (lookalike / "data.txt").read_text() == "keep"


def test_batch_refuses_a_pair_folder_it_did_not_write_and_keeps_lookalikes(bundle, images, tmp_path):
    out = tmp_path / "out"
    (out / "sub01").mkdir(parents=True)
    (out / "sub01" / "notes.txt").write_text("mine")
    (out / ".sub01.keep").write_text("mine too")
    pairs = [{"fixed": str(images / "fixed.nii.gz"), "moving": str(images / "moving.nii.gz"), "id": "sub01"},
             {"fixed": str(images / "fixed.nii.gz"), "moving": str(images / "moving.nii.gz"), "id": "sub02"}]
    summary = batch.register_many(pairs, out, bundle=bundle, backend="onnxruntime", workers=1, affine="off",
                                  refine="off", progress=False)
    status = {record["id"]: record for record in summary["pairs"]}
    assert status["sub02"]["status"] == "registered"
    assert status["sub01"]["status"] == "failed" and "refusing to replace" in status["sub01"]["error"]
    assert (out / "sub01" / "notes.txt").read_text() == "mine" and (out / ".sub01.keep").read_text() == "mine too"
    assert sorted(p.name for p in (out / "sub01").iterdir()) == ["notes.txt"]


def test_unwritable_parent(tmp_path):
    parent = unwritable_folder(tmp_path)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            outputs.check_output_dir(parent / "smgic_out")
    finally:
        if parent != Path("/sys"):
            parent.chmod(0o700)


def test_missing_parent(tmp_path):
    with pytest.raises(FileNotFoundError, match="parent folder"):
        outputs.check_output_dir(tmp_path / "no" / "out")


def test_output_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(NotADirectoryError):
        outputs.check_output_dir(tmp_path / "out", overwrite=True)
