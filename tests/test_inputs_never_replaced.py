"""One rule for every writer, API and CLI alike: nothing that is an input of the run, or holds
one, is ever replaced or deleted (issue 36, defect 2 and 3).

On e7b1639 `smgic-apply --overwrite` with OUTPUT equal to INPUT or TRANSFORM exited 0 and the
original was gone, and `RegistrationResult.save(folder, overwrite=True)` deleted a folder that
held the run's mask (the CLI refused the same case).
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import Registrar, cli, io
from smgic_rt.geometry import transforms
from smgic_rt.io import atomic, outputs

from test_registrar_support import block_downsample, make_tiny_bundle, package_file

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


@pytest.fixture
def apply_files(tmp_path):
    brain = io.load_volume(ANATOMICAL)
    nib.save(brain.to_nifti(), str(tmp_path / "input.nii.gz"))
    nib.save(brain.to_nifti(), str(tmp_path / "reference.nii.gz"))
    field = np.zeros((3, *brain.shape), np.float32)
    field[0] = 2.0
    nib.save(transforms.displacement_to_itk_image(field, brain.affine), str(tmp_path / "warp.nii.gz"))
    return tmp_path


@pytest.mark.parametrize("output", ["input.nii.gz", "warp.nii.gz", "reference.nii.gz"])
def test_smgic_apply_overwrite_never_replaces_its_own_input(apply_files, capsys, output):
    before = {p.name: atomic.sha256_file(p) for p in apply_files.iterdir()}
    status = cli.apply_main([str(apply_files / "warp.nii.gz"), str(apply_files / "reference.nii.gz"),
                             str(apply_files / "input.nii.gz"), str(apply_files / output), "--overwrite"])
    assert status == cli.EXIT_FAILED
    assert "is the input" in capsys.readouterr().err
    assert {p.name: atomic.sha256_file(p) for p in apply_files.iterdir()} == before


def test_smgic_apply_overwrite_refuses_a_link_to_an_input(apply_files):
    (apply_files / "alias.nii.gz").symlink_to(apply_files / "input.nii.gz")
    status = cli.apply_main([str(apply_files / "warp.nii.gz"), str(apply_files / "reference.nii.gz"),
                             str(apply_files / "input.nii.gz"), str(apply_files / "alias.nii.gz"), "--overwrite", "-q"])
    assert status == cli.EXIT_FAILED


def test_smgic_apply_overwrite_still_replaces_an_ordinary_output(apply_files):
    argv = [str(apply_files / "warp.nii.gz"), str(apply_files / "reference.nii.gz"), str(apply_files / "input.nii.gz"),
            str(apply_files / "out.nii.gz"), "-q"]
    assert cli.apply_main(argv) == cli.EXIT_OK
    assert cli.apply_main(argv) == cli.EXIT_FAILED  # exists, no --overwrite
    assert cli.apply_main(argv + ["--overwrite"]) == cli.EXIT_OK


def test_save_overwrite_refuses_a_folder_holding_the_runs_mask(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    brain = block_downsample(nib.load(str(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))), 4)
    registrar = Registrar(bundle, backend="onnxruntime", affine="off", refine="off", threads=1)
    first = registrar.register(brain, brain)
    out = first.save(tmp_path / "out")
    mask = out / "warped.nii.gz"  # an output of the first run, used as the second run's mask
    digest = atomic.sha256_file(mask)
    second = registrar.register(brain, brain, fixed_mask=str(mask))
    with pytest.raises(outputs.OutputFolderError, match="holds the input"):
        second.save(out, overwrite=True)
    assert mask.is_file() and atomic.sha256_file(mask) == digest
    second.save(tmp_path / "elsewhere")  # the result itself is fine
