"""Engine-file headers: round trip, and refusal of engines built for another GPU/TensorRT/bundle.

These run everywhere (pure Python); building/running engines is in test_backends_tensorrt.py
and needs TensorRT and a GPU.
"""

import struct

import pytest

from smgic_rt.backends.tensorrt import (ENGINE_MAGIC, EngineHeaderError, check_engine_header,
                                        read_engine_file, read_engine_header, write_engine_file)

HEADER = {
    "header_version": 1,
    "tensorrt_version": "10.9.0.34",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "precision": "fp16",
    "bundle_id": "sha256:" + "ab" * 32,
    "level": 2,
    "onnx_sha256": "cd" * 32,
    "profile": {"fixed": {"min": [1, 2, 8, 8, 8], "opt": [1, 2, 8, 8, 8], "max": [1, 2, 8, 8, 8]}},
}
ENGINE = bytes(range(256)) * 40


def test_header_round_trip(tmp_path):
    path = write_engine_file(tmp_path / "level2.fp16.engine", HEADER, ENGINE)
    header, engine = read_engine_file(path)
    assert header == HEADER
    assert engine == ENGINE
    assert read_engine_header(path) == HEADER
    assert path.read_bytes().startswith(ENGINE_MAGIC)
    # Atomic writer: no temporary files left beside the engine.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["level2.fp16.engine"]


def test_matching_header_passes():
    check_engine_header(HEADER, dict(HEADER))


@pytest.mark.parametrize("field,value", [
    ("gpu_name", "NVIDIA A100-SXM4-40GB"),
    ("compute_capability", "8.0"),
    ("tensorrt_version", "10.3.0"),
    ("precision", "fp32"),
    ("bundle_id", "sha256:" + "00" * 32),
    ("onnx_sha256", "ef" * 32),
])
def test_engine_for_another_platform_is_refused(field, value):
    running = dict(HEADER, **{field: value})
    with pytest.raises(EngineHeaderError) as info:
        check_engine_header(HEADER, running, path="level2.fp16.engine")
    message = str(info.value)
    assert field in message and repr(value) in message and repr(HEADER[field]) in message


def test_foreign_and_truncated_files_are_refused(tmp_path):
    foreign = tmp_path / "plain.engine"
    foreign.write_bytes(b"\x00\x01 raw trtexec engine bytes")
    with pytest.raises(EngineHeaderError, match="not a smgic_rt engine"):
        read_engine_header(foreign)

    good = write_engine_file(tmp_path / "good.engine", HEADER, ENGINE)
    data = good.read_bytes()
    (size,) = struct.unpack("<I", data[8:12])
    truncated = tmp_path / "truncated.engine"
    truncated.write_bytes(data[: 12 + size // 2])
    with pytest.raises(EngineHeaderError, match="truncated"):
        read_engine_header(truncated)
    no_engine = tmp_path / "no_engine.engine"
    no_engine.write_bytes(data[: 12 + size])
    assert read_engine_header(no_engine) == HEADER
    with pytest.raises(EngineHeaderError, match="no engine"):
        read_engine_file(no_engine)
    bad_json = tmp_path / "bad_json.engine"
    body = b"{not json"
    bad_json.write_bytes(ENGINE_MAGIC + struct.pack("<I", len(body)) + body + ENGINE)
    with pytest.raises(EngineHeaderError, match="not valid JSON"):
        read_engine_header(bad_json)


def test_tensorrt_import_error_is_clear():
    pytest.importorskip("smgic_rt.backends.tensorrt")
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        from smgic_rt.backends.tensorrt import import_tensorrt

        with pytest.raises(ImportError, match="TensorRT"):
            import_tensorrt()
    else:
        pytest.skip("tensorrt is installed here")


# ------------------------------------------------------------------ where engines are cached


def _default_bundle_files():
    from smgic_rt.registrar import DEFAULT_BUNDLE_PATH

    return sorted(p for p in DEFAULT_BUNDLE_PATH.iterdir() if p.is_file() and not p.name.startswith("__"))


def test_zipped_bundle_engines_go_to_a_persistent_cache_keyed_by_bundle_id(tmp_path, monkeypatch):
    """A zipped bundle is extracted to a new temporary folder per process (deleted at exit):
    engines must not be cached there, or every process rebuilds them."""
    import zipfile

    from smgic_rt.backends.tensorrt import engine_dir_for
    from smgic_rt.models.bundle import load_bundle

    monkeypatch.delenv("SMGIC_ENGINE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in _default_bundle_files():
            handle.write(path, path.name)
    first, second = load_bundle(archive), load_bundle(archive)
    assert first.path != second.path  # two extractions, as in two processes
    expected = tmp_path / "xdg" / "smgic_rt" / "engines" / first.id.replace(":", "-")
    assert engine_dir_for(first) == engine_dir_for(second) == expected
    assert not str(engine_dir_for(first)).startswith(str(first.path))


def test_bundle_folder_with_engines_uses_them_else_the_cache(tmp_path, monkeypatch):
    import shutil

    from smgic_rt.backends.tensorrt import engine_dir_for
    from smgic_rt.models.bundle import load_bundle

    monkeypatch.setenv("SMGIC_ENGINE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "bundle"
    folder.mkdir()
    for path in _default_bundle_files():
        shutil.copy(path, folder / path.name)
    bundle = load_bundle(folder)
    assert engine_dir_for(bundle) == tmp_path / "cache" / bundle.id.replace(":", "-")
    (folder / "engines").mkdir()
    assert engine_dir_for(load_bundle(folder)) == folder / "engines"
