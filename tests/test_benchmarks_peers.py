"""benchmarks/peers.py and benchmarks/peer_tools.py on a tiny real pair: the real smgic-register,
PICSL Greedy and ANTs SyN, each in its own process, measured as the benchmark measures them."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

pytest.importorskip("picsl_greedy")
pytest.importorskip("ants")
peers = pytest.importorskip("peers")
peer_tools = pytest.importorskip("peer_tools")


def _require_data():
    from smgic_rt.demo import DemoDataError

    try:
        for brain in peers.real_pairs.BRAINS.values():
            peers.real_pairs.package_file(*brain.image)
    except DemoDataError as error:
        pytest.skip(str(error))


def test_greedy_commands_are_the_documented_brain_commands(tmp_path):
    affine, deformable, reslice = peer_tools.greedy_commands("F.nii.gz", "M.nii.gz", tmp_path, "L.nii.gz", threads=2)
    assert "-threads 2" in affine and "-a -dof 12 -m NCC 2x2x2" in affine
    assert "-ia-image-centers -n 100x50x10" in affine
    assert f"-it {tmp_path / 'affine.mat'}" in deformable and "-m NCC 2x2x2" in deformable
    assert "-n 100x50x10" in deformable and " -a " not in deformable
    assert f"-ri LABEL 0.2vox -rm L.nii.gz {tmp_path / 'warped_labels.nii.gz'}" in reslice
    assert reslice.endswith(f"-r {tmp_path / 'warp.nii.gz'} {tmp_path / 'affine.mat'}")


def test_conformed_grid_is_freesurfer_lia_256_centred():
    image = nib.Nifti1Image(np.zeros((161, 197, 161), np.float32), np.diag([-1.0, 1, 1, 1]) @ np.eye(4))
    affine = peers.conformed_grid(image)
    assert nib.aff2axcodes(affine) == ("L", "I", "A")
    assert np.allclose(np.abs(affine[:3, :3]).sum(axis=0), 1.0)  # 1 mm voxels
    centre = (image.affine @ np.r_[80, 98, 80, 1])[:3]
    assert np.allclose((affine @ np.r_[127.5, 127.5, 127.5, 1])[:3], centre)


def test_peer_runner_on_a_tiny_real_pair(tmp_path):
    """One run of every tool through the benchmark's own runner (smgic without its refinement,
    to stay within seconds): outputs, Dice, memory and bytes are the tools' own."""
    _require_data()
    workdir = tmp_path / "not_yet_made"  # --workdir makes its folder
    report = peers.run(["tiny"], list(peers.DEFAULT_TOOLS), runs=1, workdir=workdir, smgic_args=["--refine", "off"])
    entry = report["pairs"]["tiny"]
    assert entry["pair"]["structures"]  # labels on both sides: Dice is scored
    expected_files = {"smgic": {"warp.nii.gz", "inverse_warp.nii.gz", "warped_labels.nii.gz", "report.json"},
                      "greedy": {"affine.mat", "warp.nii.gz", "warped.nii.gz", "warped_labels.nii.gz"},
                      "ants": {"syn_1Warp.nii.gz", "syn_0GenericAffine.mat", "warped_labels.nii.gz"}}
    for tool, summary in entry["summary"].items():
        assert expected_files[tool] <= set(summary["files"]), (tool, summary["files"])
        assert 0.3 < summary["dice_median"] <= 1.0, (tool, summary["dice_median"])
        assert summary["seconds_median"] > 0
        # the tool's own peak, not this test process's: the launcher forks it at ~10 MiB
        assert summary["launcher_rss_mib"] < 40
        assert summary["launcher_rss_mib"] < summary["peak_rss_mib_max"] < 4096
        assert summary["bytes_written_median"] > 1000
    # three different processes have three different peaks
    assert len({round(s["peak_rss_mib_max"]) for s in entry["summary"].values()}) == 3
    assert set(entry["time_ratios"]) == {"smgic/greedy", "smgic/ants"}
    assert entry["time_ratios"]["smgic/ants"] == pytest.approx(
        entry["summary"]["smgic"]["seconds_median"] / entry["summary"]["ants"]["seconds_median"])
    assert "--refine off" in report["smgic_command"]
    table = peers.table(report)
    assert table.count("| tiny |") == 3
    speedup = entry["summary"]["ants"]["seconds_median"] / entry["summary"]["smgic"]["seconds_median"]
    assert f"{speedup:.1f}x wall" in table
    assert not list(workdir.iterdir())  # the scratch folder is gone


def test_the_accurate_preset_is_a_tool_of_its_own():
    pair = {"fixed": "F", "moving": "M", "moving_labels": "L"}
    fast = peers.tool_command("smgic", pair, Path("OUT"), smgic_args=["--refine", "off"])
    accurate = peers.tool_command("smgic_accurate", pair, Path("OUT"), smgic_args=["--refine", "off"])
    assert accurate == fast[:-2] + ["--quality", "accurate", "--refine", "off"]
    assert "smgic_accurate" not in peers.DEFAULT_TOOLS and set(peers.DEFAULT_TOOLS) < set(peers.TOOLS)
