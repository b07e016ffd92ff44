"""smgic_rt.io.atomic: the one module that renames files into place."""

import os

import pytest

from smgic_rt.io import atomic


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with atomic.atomic_path(target) as temp:
        assert temp.parent == tmp_path and temp.name.endswith(".nii.gz") and temp != target
        temp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_atomic_dir_marks_staging_and_never_replaces_without_permission(tmp_path):
    target = tmp_path / "results"
    with atomic.atomic_dir(target) as staging:
        assert (staging / atomic.STAGING_MARKER).is_file()  # a killed run is recognisable
        (staging / "a.txt").write_text("a")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # the marker does not ship
    with pytest.raises(FileExistsError):
        with atomic.atomic_dir(target) as staging:
            (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic.atomic_dir(target, replace=True) as staging:
        (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no staging or trash left


def test_write_json_refuses_nan_and_sha256_matches_hashlib(tmp_path):
    import hashlib

    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "r.json", {"x": float("nan")})
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.iterdir())
    path = atomic.write_json(tmp_path / "r.json", {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert atomic.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
