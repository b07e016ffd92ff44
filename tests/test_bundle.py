"""load_bundle: verification and refusals (tampered, truncated, missing, wrong schema), zips, ids.

The bundle under test is a real export of a tiny randomly initialised training model.
"""

import json
import shutil
import zipfile

import pytest

pytest.importorskip("torch")

from smgic_rt.bundle import SCHEMA_VERSION, Bundle, BundleError, load_bundle, sha256_file  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    import export

    return export.write_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture
def copy(bundle_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(bundle_dir, target)
    return target


def test_load_verified_bundle(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle, Bundle)
    config = json.loads((bundle_dir / "config.json").read_text())
    assert bundle.config == config
    assert bundle.grid_shape == tuple(config["grid_shape"]) == (32, 32, 32)
    assert bundle.spacing == tuple(float(s) for s in config["spacing"])
    assert bundle.steps == config["integration_steps"] == 7
    assert [p.name for p in bundle.level_paths] == ["level1.onnx", "level2.onnx", "level3.onnx", "level4.onnx"]
    for path in bundle.level_paths:
        assert config["files"][path.name] == sha256_file(path)
    assert bundle.id.startswith("sha256:") and len(bundle.id) == 7 + 64
    # Per-level spatial sizes halve from level 4 (full grid) down to level 1 (1/8).
    for level, factor in zip(range(1, 5), (8, 4, 2, 1)):
        entry = bundle.level_entry(level)
        assert entry["inputs"]["velocity"][1:] == [3] + [32 // factor] * 3
        assert entry["outputs"]["velocity_out"][1:] == [3] + [32 // factor] * 3
    for key in ("torch", "onnx", "onnxruntime"):
        assert key in config["exporter"]["versions"]
    assert config["provenance"]["source"] == "random initialisation"


def test_same_content_same_id(bundle_dir, copy):
    assert load_bundle(copy).id == load_bundle(bundle_dir).id


def test_flipped_byte_in_onnx_is_refused(copy):
    path = copy / "level3.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for 'level3.onnx'"):
        load_bundle(copy)


def test_truncated_file_is_refused(copy):
    path = copy / "level4.onnx"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError, match="checksum mismatch for 'level4.onnx'"):
        load_bundle(copy)


def test_missing_file_is_refused(copy):
    (copy / "level2.onnx").unlink()
    with pytest.raises(BundleError, match="'level2.onnx' listed in config.json is missing"):
        load_bundle(copy)


def test_missing_config_is_refused(copy):
    (copy / "config.json").unlink()
    with pytest.raises(BundleError, match="no config.json"):
        load_bundle(copy)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 0, "1"])
def test_wrong_schema_version_is_refused(copy, version):
    config = json.loads((copy / "config.json").read_text())
    config["schema_version"] = version
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=f"schema version {version!r} is not supported.*expected {SCHEMA_VERSION}"):
        load_bundle(copy)


def test_corrupt_config_is_refused(copy):
    (copy / "config.json").write_text('{"schema_version": 1, "files": ')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)


def test_path_escape_is_refused(copy):
    config = json.loads((copy / "config.json").read_text())
    config["files"]["../outside.onnx"] = "00" * 32
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="invalid file name"):
        load_bundle(copy)


def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_zip_bundle_loads_and_is_verified(bundle_dir, tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(bundle_dir.iterdir()):
            out.write(path, f"tiny/{path.name}")
    bundle = load_bundle(archive)
    assert bundle.id == load_bundle(bundle_dir).id
    assert all(p.is_file() for p in bundle.level_paths)

    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as out:
        for path in sorted(bundle_dir.iterdir()):
            data = path.read_bytes()
            if path.name == "level1.onnx":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            out.writestr(path.name, data)
    with pytest.raises(BundleError, match="checksum mismatch for 'level1.onnx'"):
        load_bundle(tampered)

    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a readable zip"):
        load_bundle(not_zip)
