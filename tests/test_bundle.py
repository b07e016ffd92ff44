"""load_bundle: verification and refusals (tampered, truncated, missing, wrong schema), zips, ids.

The bundle under test is a real export of a tiny randomly initialised training model; the
shipped default bundle is checked as it is installed.
"""

import hashlib
import json
import shutil
import zipfile

import pytest

pytest.importorskip("torch")

from smgic_rt import models  # noqa: E402
from smgic_rt.models.bundle import (CHECKSUM_NAME, SCHEMA_VERSION, Bundle, BundleError, load_bundle,  # noqa: E402
                             read_checksums, sha256_file, write_checksums)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    import export

    return export.write_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture
def copy(bundle_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(bundle_dir, target)
    return target


def _reseal_by_hand(folder):
    """A checksum file over config.json and the files it lists, written without any validation
    (as a tamperer would): the checks after the checksums must still refuse bad content."""
    config = json.loads((folder / "config.json").read_text())
    names = sorted({*config["files"], "config.json"})
    lines = "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in names
                    if (folder / n).is_file())
    (folder / CHECKSUM_NAME).write_text(lines)


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config, indent=1))


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
    _reseal_by_hand(copy)
    with pytest.raises(BundleError, match=f"schema version {version!r} is not supported.*expected {SCHEMA_VERSION}"):
        load_bundle(copy)


def test_corrupt_config_is_refused(copy):
    (copy / "config.json").write_text('{"schema_version": 1, "files": ')
    _reseal_by_hand_raw(copy)
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(copy)


def _reseal_by_hand_raw(folder):
    hashes = dict(line.split("  ")[::-1] for line in (folder / CHECKSUM_NAME).read_text().splitlines())
    hashes["config.json"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    (folder / CHECKSUM_NAME).write_text("".join(f"{hashes[n]}  {n}\n" for n in sorted(hashes)))


def test_path_escape_is_refused(copy):
    config = json.loads((copy / "config.json").read_text())
    config["files"]["../outside.onnx"] = "00" * 32
    (copy / "config.json").write_text(json.dumps(config))
    _reseal_by_hand_raw(copy)
    with pytest.raises(BundleError, match="invalid file name"):
        load_bundle(copy)


# --- the checksum file: config.json is covered too ------------------------------------------


def test_checksum_file_covers_config_and_every_file_and_names_the_bundle(bundle_dir):
    hashes, raw = read_checksums(bundle_dir)
    config = json.loads((bundle_dir / "config.json").read_text())
    assert set(hashes) == {"config.json", *config["files"]}
    for name, digest in hashes.items():
        assert digest == sha256_file(bundle_dir / name)
    assert load_bundle(bundle_dir).id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert load_bundle(bundle_dir).file_names[:2] == (CHECKSUM_NAME, "config.json")


@pytest.mark.parametrize("changes", [{"integration_steps": 0}, {"grid_shape": [16, 16, 16]},
                                     {"spacing": [3.0, 3.0, 3.0]}])
def test_edited_config_is_refused(copy, changes):
    _edit_config(copy, **changes)
    with pytest.raises(BundleError, match=r"config.json was modified: checksums.sha256 says sha256 [0-9a-f]{64}"):
        load_bundle(copy)


def test_whitespace_only_edit_of_config_is_refused(copy):
    path = copy / "config.json"
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(BundleError, match="config.json was modified"):
        load_bundle(copy)


def test_missing_checksum_file_is_refused(copy):
    (copy / CHECKSUM_NAME).unlink()
    with pytest.raises(BundleError, match=r"no checksums.sha256 \(it covers config.json and every file"):
        load_bundle(copy)


def test_changed_file_is_refused_even_when_config_is_resealed_by_hand(copy):
    """Change a graph and record its new hash in config.json and the checksum file consistently:
    that is a different bundle, so it loads only under its own, new id (never the old one)."""
    old_id = load_bundle(copy).id
    path = copy / "level2.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for 'level2.onnx'"):
        load_bundle(copy)
    config = json.loads((copy / "config.json").read_text())
    config["files"]["level2.onnx"] = sha256_file(path)
    (copy / "config.json").write_text(json.dumps(config, indent=1))
    _reseal_by_hand(copy)
    resealed = load_bundle(copy)
    assert resealed.id != old_id
    with pytest.raises(BundleError, match=f"is not the expected id, {old_id}"):
        load_bundle(copy, expected_id=old_id)


def test_checksum_file_and_config_must_list_the_same_files(copy):
    # A file covered by the checksum file but not listed in config.json (or the other way round).
    (copy / "extra.bin").write_bytes(b"not part of the model")
    hashes = dict(line.split("  ")[::-1] for line in (copy / CHECKSUM_NAME).read_text().splitlines())
    hashes["extra.bin"] = sha256_file(copy / "extra.bin")
    (copy / CHECKSUM_NAME).write_text("".join(f"{hashes[n]}  {n}\n" for n in sorted(hashes)))
    with pytest.raises(BundleError, match=r"checksums.sha256 and config.json 'files' disagree about \['extra.bin'\]"):
        load_bundle(copy)


@pytest.mark.parametrize("mangle", ["unsorted", "duplicate", "short hash", "no newline", "path"])
def test_malformed_checksum_file_is_refused(copy, mangle):
    lines = (copy / CHECKSUM_NAME).read_text().splitlines(keepends=True)
    if mangle == "unsorted":
        text = "".join(reversed(lines))
    elif mangle == "duplicate":
        text = "".join(sorted(lines + lines[:1]))
    elif mangle == "short hash":
        text = "".join([lines[0][:10] + lines[0][12:]] + lines[1:])
    elif mangle == "no newline":
        text = "".join(lines)[:-1]
    else:
        text = "".join(lines[:-1] + [lines[-1].replace("  ", "  ../")])
    (copy / CHECKSUM_NAME).write_text(text)
    with pytest.raises(BundleError, match="checksums.sha256"):
        load_bundle(copy)


def test_write_checksums_refuses_to_bless_a_modified_file(copy):
    path = copy / "level1.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match="checksum mismatch for 'level1.onnx'"):
        write_checksums(copy)


def test_deliberate_config_edit_sealed_with_export_checksums_gets_a_new_id(copy):
    """`python -m export checksums` seals a deliberately edited config.json: a new bundle, a new id."""
    import subprocess
    import sys
    from pathlib import Path

    old_id = load_bundle(copy).id
    _edit_config(copy, provenance={"source": "edited by hand"})
    done = subprocess.run([sys.executable, "-m", "export", "checksums", str(copy)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    bundle = load_bundle(copy)
    assert bundle.id != old_id and bundle.id in done.stdout
    assert bundle.config["provenance"] == {"source": "edited by hand"}


# --- the shipped default bundle: its id is pinned --------------------------------------------


def test_shipped_default_bundle_loads_with_its_pinned_id():
    bundle = load_bundle(models.default_bundle_path())
    assert bundle.id == models.DEFAULT_BUNDLE_ID
    assert set(read_checksums(models.default_bundle_path())[0]) == {"config.json", *bundle.config["files"]}


def test_consistently_resealed_default_bundle_is_refused(tmp_path, monkeypatch):
    """Edit the default's integration steps and rewrite every checksum consistently: the
    checksums all agree, but the default's id is pinned, so it is refused."""
    copy = tmp_path / "default"
    shutil.copytree(models.default_bundle_path(), copy)
    _edit_config(copy, integration_steps=0)
    new_id = write_checksums(copy)
    assert load_bundle(copy).id == new_id != models.DEFAULT_BUNDLE_ID  # elsewhere: just another bundle
    monkeypatch.setattr(models, "_DEFAULT", copy)  # the same folder installed as the default
    with pytest.raises(BundleError, match=f"bundle id {new_id} is not the id this smgic_rt release ships its default "
                                          f"bundle with, {models.DEFAULT_BUNDLE_ID}"):
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
