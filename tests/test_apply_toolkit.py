"""smgic-apply as a toolkit (smgic_rt.apply), against real ANTs on two real brains at 2 mm:
points (CSV, LPS and RAS), 4-D series, chains with ANTs affines, several inputs, streamlines."""

import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from smgic_rt import apply, cli
from smgic_rt.geometry import transforms
from smgic_rt.methods.affine import rotation_matrix

ants = pytest.importorskip("ants")
pandas = pytest.importorskip("pandas")
try:
    from toolkit_support import brain_pair, brain_points, correlation, register
except ImportError:  # tests/ turned into a package
    from tests.toolkit_support import brain_pair, brain_points, correlation, register

FLIP = np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return brain_pair(tmp_path_factory.mktemp("pair"), 2)


@pytest.fixture(scope="module")
def registered(pair, tmp_path_factory):
    return register(pair, tmp_path_factory.mktemp("run") / "out", tmp_path_factory.mktemp("bundle"),
                    "--export", "fsl", "--export", "lta")


def _apply(*arguments):
    assert cli.apply_main([*map(str, arguments), "-q"]) == 0


def _write_points(path, points_ras, space="lps"):
    coordinates = points_ras * (FLIP if space == "lps" else 1.0)
    frame = pandas.DataFrame({"x": coordinates[:, 0], "y": coordinates[:, 1], "z": coordinates[:, 2], "t": 0.0,
                              "label": np.arange(len(points_ras))})
    frame.to_csv(path, index=False)
    return path


def _xyz(path):
    return pandas.read_csv(path)[["x", "y", "z"]].to_numpy()


def test_points_agree_with_ants_forward_and_inverse(pair, registered, tmp_path):
    """1,000 points inside the fixed brain, through warp.nii.gz and back through
    inverse_warp.nii.gz: smgic-apply and ants.apply_transforms_to_points within 0.01 mm."""
    points = _write_points(tmp_path / "points.csv", brain_points(pair["fixed"], 1000))
    _apply("-t", registered / "warp.nii.gz", "-i", points, "-o", tmp_path / "forward.csv")
    ours = _xyz(tmp_path / "forward.csv")
    theirs = ants.apply_transforms_to_points(3, pandas.read_csv(points), [str(registered / "warp.nii.gz")])
    assert np.abs(ours - theirs[["x", "y", "z"]].to_numpy()).max() < 0.01
    assert np.linalg.norm(ours - _xyz(points), axis=1).mean() > 1.0  # the points did move
    assert list(pandas.read_csv(tmp_path / "forward.csv")["label"]) == list(range(1000))  # other columns kept

    _apply("-t", registered / "inverse_warp.nii.gz", "-i", tmp_path / "forward.csv", "-o", tmp_path / "back.csv")
    back = _xyz(tmp_path / "back.csv")
    theirs = ants.apply_transforms_to_points(3, pandas.read_csv(tmp_path / "forward.csv"),
                                             [str(registered / "inverse_warp.nii.gz")])
    assert np.abs(back - theirs[["x", "y", "z"]].to_numpy()).max() < 0.01
    # Forward then back: the fields' own inverse consistency (the points' handling adds < 0.01 mm).
    returned = np.linalg.norm(back - _xyz(points), axis=1)
    assert np.median(returned) < 0.1, np.percentile(returned, [50, 95, 100])
    # and back through [warp.nii.gz,1], warp.nii.gz's own inverse solved at each point: every point returns
    _apply("-t", f"[{registered / 'warp.nii.gz'},1]", "-i", tmp_path / "forward.csv", "-o", tmp_path / "exact.csv")
    returned = np.linalg.norm(_xyz(tmp_path / "exact.csv") - _xyz(points), axis=1)
    assert returned.max() < 1e-3, np.percentile(returned, [50, 95, 100])


def test_ras_points_are_lps_points_flipped(pair, registered, tmp_path):
    points = brain_points(pair["fixed"], 50, seed=3)
    _write_points(tmp_path / "lps.csv", points, "lps")
    _write_points(tmp_path / "ras.csv", points, "ras")
    _apply("-t", registered / "warp.nii.gz", "-i", tmp_path / "lps.csv", "-o", tmp_path / "lps_out.csv")
    _apply("-t", registered / "warp.nii.gz", "-i", tmp_path / "ras.csv", "-o", tmp_path / "ras_out.csv",
           "--points-space", "ras")
    np.testing.assert_allclose(_xyz(tmp_path / "ras_out.csv"), _xyz(tmp_path / "lps_out.csv") * FLIP, atol=1e-9)


def test_affine_then_its_inverse_returns_every_point(pair, tmp_path):
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix(np.radians([5.0, -3.0, 8.0])) * 1.05
    matrix[:3, 3] = [4.0, -6.0, 2.0]
    path = tmp_path / "a.txt"
    np.savetxt(path, matrix)
    chain = apply.load_chain([str(path), f"[{path},1]"])
    points = brain_points(pair["fixed"], 100, seed=4).T
    np.testing.assert_allclose(chain.map_points(points), points, atol=1e-9)


def _ants_affine(tmp_path):
    """A small affine (a few degrees and mm) written by antspyx, with a centre, as ANTs writes them."""
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3,
        matrix=rotation_matrix(np.radians([4.0, -3.0, 6.0])) @ np.diag([1.03, 0.98, 1.01]),
        translation=[3.0, -2.0, 4.0], center=[5.0, -10.0, 8.0])
    path = tmp_path / "ants_affine.mat"
    ants.write_transform(transform, str(path))
    return path


@pytest.mark.parametrize("invert", [False, True])
def test_chain_with_an_ants_affine_matches_ants(pair, registered, tmp_path, invert):
    affine = _ants_affine(tmp_path)
    spec = f"[{affine},1]" if invert else str(affine)
    output = tmp_path / "chained.nii.gz"
    _apply("-t", spec, "-t", registered / "warp.nii.gz", "-r", pair["fixed"], "-i", pair["moving"], "-o", output)
    fixed = ants.image_read(str(pair["fixed"]))
    theirs = ants.apply_transforms(fixed, ants.image_read(str(pair["moving"])),
                                   [str(affine), str(registered / "warp.nii.gz")],
                                   whichtoinvert=[invert, False]).numpy()
    ours = nib.load(str(output)).get_fdata()
    brain = fixed.numpy() > 0
    assert correlation(ours, theirs, brain) > 0.999
    # and the chain changed the result: without the affine the image differs
    plain = nib.load(str(registered / "warped.nii.gz")).get_fdata()
    assert correlation(ours, plain, brain) < 0.995


def test_flirt_matrix_in_a_chain_reads_against_reference_and_input(pair, registered, tmp_path):
    """-t affine_flirt.mat (FSL's coordinates of -r and -i) warps as -t affine.mat (ITK) does."""
    outputs = {}
    for name in ("affine.mat", "affine_flirt.mat"):
        outputs[name] = tmp_path / f"{name}.nii.gz"
        _apply("-t", registered / name, "-r", pair["fixed"], "-i", pair["moving"], "-o", outputs[name])
    itk, flirt = (nib.load(str(outputs[name])).get_fdata() for name in ("affine.mat", "affine_flirt.mat"))
    assert np.abs(itk - flirt).max() < 1e-3 * np.abs(itk).max()


def test_inverting_our_warp_solves_it_near_its_inverse_field(pair, registered, tmp_path):
    """[warp.nii.gz,1] is warp.nii.gz's exact inverse, not the inverse_warp.nii.gz beside it (its
    start), yet close to it: the two resampled images differ, and correlate inside the brain."""
    _apply("-t", f"[{registered / 'warp.nii.gz'},1]", "-r", pair["moving"], "-i", pair["fixed"], "-o", tmp_path / "a.nii.gz")
    _apply("-t", registered / "inverse_warp.nii.gz", "-r", pair["moving"], "-i", pair["fixed"], "-o", tmp_path / "b.nii.gz")
    exact, file = (nib.load(str(tmp_path / name)).get_fdata() for name in ("a.nii.gz", "b.nii.gz"))
    assert not np.array_equal(exact, file)
    assert correlation(exact, file, nib.load(str(pair["moving"])).get_fdata() > 0) > 0.999


def test_a_field_that_is_not_ours_is_inverted_alike(registered, tmp_path):
    """A copy of warp.nii.gz under another name has no sibling to start from: same inverse."""
    other = tmp_path / "field.nii.gz"
    other.write_bytes((registered / "warp.nii.gz").read_bytes())
    chain = apply.load_chain([f"[{other},1]"])
    assert chain.steps[0].start is None
    points = np.random.default_rng(7).uniform(-40, 40, (3, 300))
    ours = apply.load_chain([f"[{registered / 'warp.nii.gz'},1]"]).map_points(points)
    np.testing.assert_allclose(chain.map_points(points), ours, rtol=0, atol=1e-3)


def _series(pair, folder, volumes=10):
    """A 10-volume int16 series of the moving brain (each volume rescaled and noised), TR 2.5 s."""
    moving = nib.load(str(pair["moving"]))
    base = moving.get_fdata()
    rng = np.random.default_rng(0)
    data = np.stack([base * (0.8 + 0.04 * t) + rng.normal(0, 5, base.shape) for t in range(volumes)], axis=-1)
    image = nib.Nifti1Image(np.clip(data, 0, 32000).astype(np.int16), moving.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms(image.header.get_zooms()[:3] + (2.5,))
    path = folder / "series.nii.gz"
    nib.save(image, str(path))
    singles = []
    for t in range(volumes):
        singles.append(folder / f"volume{t}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., t], moving.affine), str(singles[-1]))
    return path, singles


def test_series_is_warped_volume_by_volume_and_keeps_its_timing(pair, registered, tmp_path):
    series, singles = _series(pair, tmp_path)
    _apply("-t", registered / "warp.nii.gz", "-r", pair["fixed"], "-i", series, "-o", tmp_path / "series_out.nii.gz")
    out = nib.load(str(tmp_path / "series_out.nii.gz"))
    fixed = nib.load(str(pair["fixed"]))
    assert out.shape == fixed.shape + (10,)
    assert out.header.get_zooms()[3] == pytest.approx(2.5)
    assert out.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(out.affine, fixed.affine, atol=1e-6)
    warped = np.asarray(out.dataobj)
    arguments = []
    for t, single in enumerate(singles):
        arguments += ["-i", single, "-o", tmp_path / f"out{t}.nii.gz"]
    _apply("-t", registered / "warp.nii.gz", "-r", pair["fixed"], *arguments)  # several inputs in one call
    for t in range(10):
        alone = np.asarray(nib.load(str(tmp_path / f"out{t}.nii.gz")).dataobj)
        assert np.array_equal(warped[..., t], alone), t
    # and it is the registration's warp of each volume
    brain = fixed.get_fdata() > 0
    assert correlation(warped[..., 0], nib.load(str(registered / "warped.nii.gz")).get_fdata(), brain) > 0.99


def test_series_memory_stays_below_two_volumes(pair, registered, tmp_path):
    """The series is read, warped and written volume by volume, slab by slab: the whole run,
    output included, holds less than two volumes' worth (float32) at its peak."""
    series, _ = _series(pair, tmp_path)
    chain = apply.load_chain([str(registered / "warp.nii.gz")])
    fixed = nib.load(str(pair["fixed"]))
    reference = transforms.io.load_volume(pair["fixed"], name="reference")
    volume_bytes = max(int(np.prod(fixed.shape)), int(np.prod(nib.load(str(series)).shape[:3]))) * 4
    chain.map_points(np.zeros((3, 1)))  # the kernels' one-time set-up (imports) is not per-volume memory
    for name in ("out.nii", "out.nii.gz"):
        tracemalloc.start()
        try:
            apply.apply_to_image(chain, series, reference, tmp_path / name, threads=1)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2 * volume_bytes, (name, peak / volume_bytes)
    apply.apply_to_image(chain, series, reference, tmp_path / "out.mgz", threads=1)  # written whole, converted
    written = [np.asarray(nib.load(str(tmp_path / name)).dataobj) for name in ("out.nii", "out.nii.gz", "out.mgz")]
    assert written[0].shape == fixed.shape + (10,)
    assert np.array_equal(written[0], written[1]) and np.array_equal(written[0], written[2])


def test_streamlines_move_like_their_points(pair, registered, tmp_path):
    rng = np.random.default_rng(2)
    starts = brain_points(pair["fixed"], 20, seed=5)
    lines = [start + np.cumsum(rng.normal(0, 1.0, (15, 3)), axis=0) for start in starts]
    tractogram = nib.streamlines.Tractogram(lines, affine_to_rasmm=np.eye(4))
    nib.streamlines.save(tractogram, str(tmp_path / "lines.tck"))
    _write_points(tmp_path / "points.csv", np.concatenate(lines), "ras")
    _apply("-t", registered / "warp.nii.gz", "-i", tmp_path / "lines.tck", "-o", tmp_path / "moved.tck",
           "-i", tmp_path / "points.csv", "-o", tmp_path / "moved.csv", "--points-space", "ras")
    _apply("-t", registered / "warp.nii.gz", "-r", pair["fixed"], "-i", tmp_path / "lines.tck", "-o", tmp_path / "moved.trk")
    expected = _xyz(tmp_path / "moved.csv")
    for name in ("moved.tck", "moved.trk"):
        moved = nib.streamlines.load(str(tmp_path / name)).streamlines
        assert [len(line) for line in moved] == [15] * 20
        np.testing.assert_allclose(np.concatenate(list(moved)), expected, atol=1e-3)  # float32 files


def test_bad_command_lines_fail_before_any_work(pair, registered, tmp_path, capfd):
    assert cli.apply_main(["-t", str(registered / "warp.nii.gz"), "-i", str(pair["moving"]), "-o",
                           str(tmp_path / "x.nii.gz"), "-q"]) == 1  # an image without -r
    assert cli.apply_main(["-t", str(registered / "warp.nii.gz"), "-r", str(pair["fixed"]), "-i", str(pair["moving"]),
                           "-q"]) == 1  # no -o
    assert "each -i needs its -o" in capfd.readouterr().err
    assert not list(tmp_path.iterdir())


def test_exports_for_fsl_and_freesurfer_hold_our_transforms(pair, registered):
    """warp_fsl.nii.gz / inverse_warp_fsl.nii.gz read back to warp.nii.gz / inverse_warp.nii.gz
    within 1e-5 mm; FSL's applywarp --rel rule (moving read at its FSL coordinate, fixed FSL
    coordinate plus the warp) gives warped.nii.gz; affine_flirt.mat and affine.lta hold the affine."""
    import json

    from smgic_rt.io import transform_formats

    fixed, moving = nib.load(str(pair["fixed"])), nib.load(str(pair["moving"]))
    for name, source, target in (("warp", fixed, moving), ("inverse_warp", moving, fixed)):
        ours = transforms.itk_image_to_displacement(registered / f"{name}.nii.gz")
        expected = transforms.displacement_on_grid(*ours, source.shape, source.affine)
        back, affine = transform_formats.displacement_from_fsl_warp(registered / f"{name}_fsl.nii.gz", target)
        np.testing.assert_allclose(affine, source.affine, atol=1e-6)
        assert np.abs(back - expected).max() < 1e-5, name

    warp = np.moveaxis(np.asarray(nib.load(str(registered / "warp_fsl.nii.gz")).dataobj, dtype=np.float64), -1, 0)
    fixed_frame = transform_formats.fsl_frame(fixed.shape, fixed.affine)
    moving_frame = transform_formats.fsl_frame(moving.shape, moving.affine)
    index = transforms.voxel_grid(fixed.shape).reshape(3, -1)
    moving_fsl = fixed_frame[:3, :3] @ index + fixed_frame[:3, 3:] + warp.reshape(3, -1)
    to_voxels = np.linalg.inv(moving_frame)
    coordinates = (to_voxels[:3, :3] @ moving_fsl + to_voxels[:3, 3:]).reshape(3, *fixed.shape).astype(np.float32)
    applywarp = transforms.sample_image(moving.get_fdata().astype(np.float32), coordinates)
    brain = fixed.get_fdata() > 0
    assert correlation(applywarp, nib.load(str(registered / "warped.nii.gz")).get_fdata(), brain) > 0.999

    matrix = np.asarray(json.loads((registered / "report.json").read_text())["affine_matrix"])
    points = brain_points(pair["fixed"], 200, seed=6)
    for name in ("affine_flirt.mat", "affine.lta"):
        read = transform_formats.read_affine(registered / name, fixed=pair["fixed"], moving=pair["moving"])
        difference = points @ (read - matrix)[:3, :3].T + (read - matrix)[:3, 3]
        assert np.abs(difference).max() < 1e-5, name
