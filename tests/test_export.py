"""python -m export: parity of every level graph with PyTorch, atomic failure, op check, trtexec lines.

Models are tiny (32^3 grid, 8 channels); the parity pair is two real brain templates from the
data packages, preprocessed with smgic_rt.methods.preprocess.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

import export  # noqa: E402
from export.bundle_export import ExportParityError, export_bundle, relative_error  # noqa: E402
from export.model_adapter import build_model, record_levels  # noqa: E402
from export.opcheck import graph_op_types, unsupported_ops  # noqa: E402
from export.pair import load_parity_pair  # noqa: E402
from export.trtexec import trtexec_commands  # noqa: E402
from smgic_rt.models.bundle import load_bundle  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
    return load_bundle(export.write_random_bundle(tmp_path_factory.mktemp("export") / "random", seed=3))


def _onnx_vs_torch(bundle, model, fixed, moving):
    """Independent re-check: run each ONNX graph on the torch model's recorded level inputs."""
    with torch.no_grad():
        records = record_levels(model, fixed, moving)
    errors = []
    for path, record in zip(bundle.level_paths, records):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, dict(zip(("fixed", "moving", "velocity"), record["inputs"])))
        errors.append(relative_error(out, record["output"]))
    return errors, records


def test_random_model_levels_match_torch(random_bundle):
    torch.manual_seed(3)
    model = build_model(random_bundle.config["model_config"]).eval()
    fixed, moving, _ = load_parity_pair(random_bundle.grid_shape, random_bundle.spacing)
    errors, records = _onnx_vs_torch(random_bundle, model, fixed, moving)
    assert len(errors) == 4
    assert max(errors) < 1e-4, errors
    # The level outputs are not trivially zero (a real test of the graphs' arithmetic).
    assert all(np.max(np.abs(r["output"])) > 1e-3 for r in records)
    recorded = random_bundle.config["exporter"]["parity"]["max_relative_error_per_level"]
    assert max(recorded) < 1e-4
    assert random_bundle.config["exporter"]["parity"]["pair"]["fixed"].startswith("nilearn:")


def test_export_seals_the_bundle_with_a_checksum_file_that_names_it(random_bundle):
    """The exporter's last file covers config.json and every other file; its hash is the id."""
    import hashlib

    from smgic_rt.models.bundle import CHECKSUM_NAME, read_checksums
    from smgic_rt.io.atomic import sha256_file

    folder = random_bundle.source
    hashes, raw = read_checksums(folder)
    assert set(hashes) == {"config.json", *random_bundle.config["files"]}
    assert all(hashes[name] == sha256_file(folder / name) for name in hashes)
    assert random_bundle.id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert sorted(p.name for p in folder.iterdir()) == sorted({CHECKSUM_NAME, *hashes})


def test_bundle_folder_gets_the_mode_of_a_plain_folder(random_bundle, tmp_path):
    """The bundle is built in a mkdtemp folder (0700); renamed into place it must be readable as
    the user's umask lets mkdir make folders, so that a shared model stays usable."""
    plain = tmp_path / "plain"
    plain.mkdir()
    assert random_bundle.source.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_graphs_use_only_tensorrt_ops(random_bundle):
    for path in random_bundle.level_paths:
        import onnx

        model = onnx.load(str(path))
        assert unsupported_ops(model) == [], path.name
        ops = {op for _, op in graph_op_types(model)}
        assert "GridSample" not in ops and "Conv" in ops
        assert [i.name for i in model.graph.input] == ["fixed", "moving", "velocity"]
        assert [o.name for o in model.graph.output] == ["velocity_out"]


def test_trtexec_commands_name_every_input_shape(random_bundle):
    lines = trtexec_commands(random_bundle, fp16=True, batch=(1, 2, 4))
    assert len(lines) == 4
    for level, line in enumerate(lines, start=1):
        entry = random_bundle.level_entry(level)
        assert line.startswith("trtexec ") and f"--onnx={random_bundle.level_paths[level - 1]}" in line
        assert "--saveEngine=" in line and line.endswith("--fp16")
        for flag, batch in (("--minShapes=", 1), ("--optShapes=", 2), ("--maxShapes=", 4), ("--shapes=", 2)):
            value = line.split(flag, 1)[1].split(" ", 1)[0]
            named = dict(item.split(":") for item in value.split(","))
            assert set(named) == {"fixed", "moving", "velocity"}
            for name, dims in named.items():
                assert dims == "x".join(str(n) for n in [batch] + entry["inputs"][name][1:])
    cli = subprocess.run([sys.executable, "-m", "export", "trtexec-cmd", str(random_bundle.path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip().splitlines() == trtexec_commands(random_bundle)


def test_parity_failure_leaves_nothing_behind(tmp_path):
    torch.manual_seed(0)
    model = build_model(export.tiny_model_config()).eval()
    with pytest.raises(ExportParityError, match="max relative error .* > tolerance 1e-12"):
        export_bundle(model, tmp_path / "bundle", tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_cli_random_init_and_failure_exit_code(tmp_path):
    config_path = tmp_path / "tiny.json"
    config_path.write_text(json.dumps(export.tiny_model_config()))
    out = tmp_path / "out"
    ok = subprocess.run([sys.executable, "-m", "export", "bundle", "--random-init", str(config_path),
                         "-o", str(out), "--fp16-weights"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bundle = load_bundle(out)
    assert bundle.config["exporter"]["fp16_weights"] is True
    import onnx

    level4 = onnx.load(str(bundle.level_paths[3]))
    assert all(init.data_type == onnx.TensorProto.FLOAT16
               for init in level4.graph.initializer if init.name.endswith("__fp16"))
    # Exists already -> refused with a non-zero exit, nothing changed.
    again = subprocess.run([sys.executable, "-m", "export", "bundle", "--random-init", str(config_path),
                            "-o", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "exists" in again.stderr
    assert load_bundle(out).id == bundle.id
    failing = subprocess.run([sys.executable, "-m", "export", "bundle", "--random-init", str(config_path),
                              "-o", str(tmp_path / "bad"), "--tolerance", "1e-12"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert failing.returncode != 0 and "tolerance" in failing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.json"]


def test_checkpoint_of_a_short_training_run_exports_with_parity(tmp_path):
    """A few real optimisation steps on the parity pair, a training checkpoint, then the CLI."""
    from training.losses import registration_loss
    from smgic_rt.backends.torch_model import ModelConfig, pyramid_features
    from training.train import TrainConfig, save_checkpoint

    torch.manual_seed(1)
    config = ModelConfig.from_dict(export.tiny_model_config())
    model = build_model(config.to_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fixed, moving, _ = load_parity_pair(config.grid_shape, config.spacing)
    fixed_t, moving_t = torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None]
    for _ in range(3):
        loss, _ = registration_loss(model(fixed_t, moving_t), pyramid_features(fixed_t), pyramid_features(moving_t), 7)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    checkpoint = tmp_path / "last.pt"
    save_checkpoint(checkpoint, model, optimizer, {"step": 3, "stage": 4, "stage_step": 3, "history": []},
                    TrainConfig(model=config, output=tmp_path), {"training": ["parity pair"]})
    out = tmp_path / "bundle"
    done = subprocess.run([sys.executable, "-m", "export", "bundle", str(checkpoint), "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    bundle = load_bundle(out)
    errors, _ = _onnx_vs_torch(bundle, model.eval(), fixed, moving)
    assert max(errors) < 1e-4
    assert bundle.config["provenance"]["step"] == 3


def _have_tensorrt_gpu():
    try:
        from smgic_rt.backends.tensorrt import runtime_platform

        runtime_platform()
        return True
    except Exception:
        return False


@pytest.mark.cuda
@pytest.mark.skipif(not _have_tensorrt_gpu(), reason="needs TensorRT and a CUDA GPU")
def test_tensorrt_engines_build_with_headers(random_bundle, tmp_path):
    from export.tensorrt_build import build_engines
    from smgic_rt.backends.tensorrt import read_engine_header, runtime_platform

    paths = build_engines(random_bundle.path, engine_dir=tmp_path, workspace_gb=1)
    platform = runtime_platform()
    for level, path in enumerate(paths, start=1):
        header = read_engine_header(path)
        assert header["level"] == level and header["bundle_id"] == random_bundle.id
        assert header["gpu_name"] == platform["gpu_name"] and header["precision"] == "fp32"


def test_an_unreadable_checkpoint_or_weights_file_says_so_without_torchs_advice(tmp_path):
    """torch.load(weights_only=True) on a file that is not plain weights suggests retrying with
    weights_only=False, i.e. running the file's code; we say what is wrong instead (issue 15)."""
    import fractions
    import pickle

    from export.model_adapter import load_checkpoint_model
    from smgic_rt.backends.torch import TorchBackend
    from smgic_rt.models.bundle import BundleError, load_bundle, write_checksums

    path = tmp_path / "foreign.pt"  # a class torch does not allow: loading needs weights_only=False
    path.write_bytes(pickle.dumps({"model": fractions.Fraction(1, 3)}))
    with pytest.raises(ValueError, match="could not be read as a smgic_rt training checkpoint") as error:
        load_checkpoint_model(path)
    assert "weights_only" not in str(error.value)
    bundle = tmp_path / "bundle"
    export.write_random_bundle(bundle, seed=0)
    (bundle / "weights.pt").write_bytes(path.read_bytes())
    config = json.loads((bundle / "config.json").read_text())
    config["files"]["weights.pt"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / "config.json").write_text(json.dumps(config))
    write_checksums(bundle)  # a consistently sealed bundle whose weights are not weights
    with pytest.raises(BundleError, match="weights.pt holds no weights for this model") as error:
        TorchBackend(load_bundle(bundle))
    assert "weights_only" not in str(error.value)
