"""Atomic writing: the one place in the repository that renames files into place.

Every writer (runtime outputs, batch manifests and summaries, TensorRT engine caches, training
checkpoints, exported bundles, benchmark results) goes through this module, so that a crash,
a kill or a full disk never leaves a half-written file where a complete one is expected:

- `atomic_path(path)` yields a fresh temporary path beside `path` for any writer (``nib.save``,
  ``figure.savefig``, ``torch.save``) and renames it onto `path` only when the block succeeds;
- `write_bytes`, `write_text` and `write_json` are the common cases of it;
- `atomic_dir(folder)` does the same for a whole folder: a staging folder beside it, renamed
  into place at the end (an existing folder is replaced only with ``replace=True``).

Temporary files get the permissions a plain ``open(path, "w")`` would give and staging folders
those of a plain ``mkdir``; ``tempfile``'s private 0600/0700 modes would leave outputs
unreadable to the group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "atomic_dir", "rename_to_new", "chmod_like_mkdir",
           "sha256_file", "STAGING_MARKER", "read_staging_marker"]

# Written into every staging (and trash) folder while we work in it, removed just before the
# folder is renamed into place: a folder beside an output that holds it, naming a process that
# is gone, was left by a killed run of ours (smgic_rt.io.outputs removes those).
STAGING_MARKER = ".smgic-staging"


def _mark(folder: Path) -> None:
    (folder / STAGING_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}),
                                         encoding="utf-8")


def read_staging_marker(folder) -> dict | None:
    """``{"pid", "host"}`` of the run that made this staging folder, or None if it is not ours."""
    try:
        marker = json.loads((Path(folder) / STAGING_MARKER).read_text(encoding="utf-8"))
        return {"pid": int(marker["pid"]), "host": str(marker["host"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_like_mkdir(folder) -> None:
    """Give a ``tempfile.mkdtemp`` folder (mode 0700) the mode a plain ``mkdir`` would give."""
    os.chmod(folder, 0o777 & ~_current_umask())


def sha256_file(path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path, *, suffix: str | None = None):
    """Yield a new empty temporary file beside `path`; rename it onto `path` if the block succeeds.

    `suffix` (default: the target's own, e.g. ``.nii.gz``) lets writers that infer the format
    from the name (nibabel, matplotlib) see the right one. On any exception the temporary file
    is removed and `path` is left as it was.
    """
    path = Path(os.fspath(path))
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=str(path.parent))
    temp = Path(temp)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    finally:
        os.close(fd)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(os.fspath(path))


def write_text(path, text: str) -> Path:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(os.fspath(path))


def write_json(path, obj, *, indent: int = 2, sort_keys: bool = True) -> Path:
    """JSON with a trailing newline; NaN and infinity are refused (they are not JSON)."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


def rename_to_new(source, target) -> Path:
    """Rename `source` (a file or folder) to `target`, a name that must not exist: nothing is
    replaced (FileExistsError otherwise). For moving a folder out of the way, never over one."""
    source, target = Path(source), Path(target)
    if target.exists() or target.is_symlink():
        raise FileExistsError(f"'{target}' exists; refusing to rename '{source}' onto it")
    os.rename(source, target)
    return target


@contextlib.contextmanager
def atomic_dir(folder, *, replace: bool = False):
    """Yield a staging folder beside `folder`; on success it becomes `folder` by one rename.

    With ``replace=True`` an existing `folder` is moved aside first and removed after the new one
    is in place (the caller decides whether it may be replaced: see `smgic_rt.io.outputs`). Without
    it, a `folder` that appeared meanwhile is never replaced (FileExistsError). On any exception
    the staging folder is removed and `folder` is left as it was.
    """
    folder = Path(os.fspath(folder))
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=str(folder.parent)))
    try:
        _mark(staging)
        yield staging
        (staging / STAGING_MARKER).unlink()
        chmod_like_mkdir(staging)
        if folder.exists() or folder.is_symlink():
            if not replace:
                raise FileExistsError(f"'{folder}' appeared while we were working; not replacing it")
            trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=str(folder.parent)))
            _mark(trash)  # a kill before the next rename leaves the old folder here, marked
            os.replace(folder, trash / "old")
            os.replace(staging, folder)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
