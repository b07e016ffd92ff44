"""Output folders: smgic replaces only what it wrote, and never what it did not.

A registration's outputs go into one folder, written atomically (`smgic_rt.io.atomic.atomic_dir`)
with a manifest, ``manifest.json``, that lists every file in it with its size and sha256. An
existing folder is replaced (``overwrite=True`` / ``--overwrite``) only when

- it is a previous smgic output: its manifest is there, was written by smgic_rt, and every file
  it lists is there with that size and hash;
- it holds nothing else (no file, folder or link that the manifest does not list);
- it is not the current folder or an ancestor of it, not an input or a folder holding one,
  not the home folder, and not a filesystem root.

Otherwise `check_output_dir` refuses with the reason, before any work is done. Staging folders
left by a killed run of ours (recognised by the marker `smgic_rt.io.atomic` writes into them and
the dead process it names, never by their name alone) are removed at the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from .. import __version__
from . import atomic
from . import OutputExistsError

__all__ = ["MANIFEST_NAME", "check_output_dir", "check_output_file", "write_manifest", "read_manifest",
           "set_aside_changed_output", "remove_stale_staging", "OutputFolderError"]

MANIFEST_NAME = "manifest.json"
_WRITER = "smgic_rt"


class OutputFolderError(OutputExistsError):
    """An existing output folder that smgic may not replace; the message says why."""


_NOT_OUTPUTS = (MANIFEST_NAME, atomic.STAGING_MARKER)  # the marker leaves before the folder ships


def _manifest_entries(folder: Path) -> dict:
    return {p.name: {"size": p.stat().st_size, "sha256": atomic.sha256_file(p)}
            for p in sorted(folder.iterdir()) if p.name not in _NOT_OUTPUTS}


def write_manifest(folder, **extra) -> dict:
    """List every file of `folder` (size, sha256) in its ``manifest.json``; call it last, inside
    the staging folder, so the manifest ships with the outputs it describes."""
    folder = Path(folder)
    for entry in folder.iterdir():
        if entry.name not in _NOT_OUTPUTS and (entry.is_dir() or entry.is_symlink()):
            raise ValueError(f"output folder '{folder}' may hold only plain files, got '{entry.name}'")
    manifest = {"written_by": _WRITER, "version": __version__, "files": _manifest_entries(folder), **extra}
    atomic.write_json(folder / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(folder, *, allow_missing: bool = False) -> dict | None:
    """The manifest of `folder` if it is an intact smgic output folder (every listed file there
    with its size and hash, nothing else in it), else None. With `allow_missing`, files the
    manifest lists may be gone (the folder then still holds only what smgic wrote)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        if manifest.get("written_by") != _WRITER or not isinstance(manifest.get("files"), dict):
            return None
        present = {p.name for p in folder.iterdir()} - {MANIFEST_NAME}
        listed = set(manifest["files"])
        if not (present <= listed if allow_missing else present == listed):
            return None
        for name in present:
            expected = manifest["files"][name]
            path = folder / name
            if path.is_symlink() or not path.is_file() or path.stat().st_size != expected["size"]:
                return None
            if atomic.sha256_file(path) != expected["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def set_aside_changed_output(folder) -> Path | None:
    """Move an output folder of ours that was changed by hand out of the way, deleting nothing.

    A folder whose ``manifest.json`` smgic_rt wrote but whose files no longer match it (a file
    edited or added) cannot be replaced (`check_output_dir`); a cohort rerun redoes such a pair
    after renaming the folder to ``<name>.changed-<k>`` beside it. Returns that new path, or
    None when there is nothing to move (no folder, an intact one, or one that is not ours).
    """
    folder = Path(os.fspath(folder))
    if folder.is_symlink() or not folder.is_dir() or read_manifest(folder, allow_missing=True) is not None:
        return None
    try:
        ours = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("written_by") == _WRITER
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        return None
    k = 1
    while folder.with_name(f"{folder.name}.changed-{k}").exists():
        k += 1
    return atomic.rename_to_new(folder, folder.with_name(f"{folder.name}.changed-{k}"))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _refusal(outdir: Path, protected) -> str | None:
    """Why `outdir` (resolved) may never be replaced, or None."""
    if outdir.parent == outdir:
        return "it is a filesystem root"
    if outdir == Path.home().resolve():
        return "it is the home folder"
    cwd = Path.cwd().resolve()
    if _is_within(cwd, outdir):
        return "it is the current folder or holds it"
    for path in protected:
        if path is not None and _is_within(Path(os.fspath(path)).expanduser().resolve(), outdir):
            return f"it holds the input '{path}'"
    return None


def check_output_dir(outdir, *, overwrite: bool = False, protected=()) -> Path:
    """Fail before any work when `outdir` cannot be written, or replaced, by smgic.

    Returns the absolute path. `protected`: input paths that must never be inside a folder we
    replace. Raises OutputExistsError (`OutputFolderError` when replacing is refused),
    NotADirectoryError, FileNotFoundError or PermissionError, each saying why.
    """
    given = os.fspath(outdir)
    if not str(given).strip():
        raise ValueError("output directory must be a folder path, got an empty string")
    outdir = Path(given).expanduser().absolute()
    if outdir.exists() or outdir.is_symlink():
        if outdir.is_symlink() or not outdir.is_dir():
            raise NotADirectoryError(f"output directory '{outdir}' exists and is not a directory")
        if not overwrite:
            raise OutputExistsError(f"output directory '{outdir}' already exists (pass overwrite=True / --overwrite to replace it)")
        reason = _refusal(outdir.resolve(), protected)
        if reason is None and read_manifest(outdir, allow_missing=True) is None:
            reason = (f"it is not a smgic output folder holding only what smgic wrote (no {MANIFEST_NAME} of ours, "
                      "or it holds files the manifest does not list, or a listed file was changed)")
        if reason is not None:
            raise OutputFolderError(f"refusing to replace output directory '{outdir}': {reason}; "
                                    "--overwrite replaces only a folder smgic wrote, holding nothing else")
    parent = outdir.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot create output directory '{outdir}': parent folder '{parent}' does not exist")
    # os.access misses read-only mounts, so try the real operation we will need.
    _check_name_length(outdir)
    try:
        probe = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.probe-", dir=str(parent)))
    except OSError as error:
        raise PermissionError(f"cannot create output directory '{outdir}': parent folder '{parent}' is not writable "
                              f"({error.strerror})") from None
    probe.rmdir()
    remove_stale_staging(parent, [outdir.name])
    return outdir


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(output, *, overwrite: bool = False, protected=()) -> Path:
    """Fail before any work when the single file `output` cannot be written or replaced.

    `protected`: the run's input paths; an output that is one of them (the same path, a link to
    it or a hard link) is refused even with ``overwrite``: a writer never replaces its own input.
    Raises OutputFolderError, OutputExistsError or FileNotFoundError, each saying why.
    """
    output = Path(os.fspath(output)).expanduser().absolute()
    for path in protected:
        if path is not None and _same_file(output, Path(os.fspath(path)).expanduser()):
            raise OutputFolderError(f"refusing to write '{output}': it is the input '{path}' of this run "
                                    "(--overwrite never replaces an input); choose another output name")
    if output.exists() or output.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"output '{output}' already exists (pass --overwrite to replace it)")
        if output.is_dir():
            raise IsADirectoryError(f"output '{output}' is a folder, not a file")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder '{output.parent}' does not exist")
    return output


# Staging and probe folders beside an output are named ".<name>.<kind>-<8 random characters>".
_STAGING_EXTRA_BYTES = len(".") + len(".probe-") + 8


def _check_name_length(outdir: Path) -> None:
    """A folder name too long for the file system (with the staging folders' additions) is
    refused as such, not reported as an unwritable parent folder."""
    try:
        limit = os.pathconf(str(outdir.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    length = len(os.fsencode(outdir.name))
    if length + _STAGING_EXTRA_BYTES > limit:
        raise ValueError(f"output directory name '{outdir.name[:40]}...' is {length} bytes long; at most "
                         f"{limit - _STAGING_EXTRA_BYTES} fit (the file system allows {limit}, and the staging folder "
                         "beside it adds to the name)")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(parent, names) -> list[Path]:
    """Remove the staging and trash folders that killed runs of ours left in `parent` beside the
    output folders `names` (one scan of `parent`, however many names: a cohort's pairs).

    Only folders that hold `atomic.STAGING_MARKER` naming this host and a process that is gone
    are removed; anything else, whatever its name, is left alone. Returns what was removed.
    """
    prefixes = tuple(f".{name}." for name in names)
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not prefixes or not entry.name.startswith(prefixes) or entry.is_symlink() or not entry.is_dir():
            continue
        marker = atomic.read_staging_marker(entry)
        if marker is None or marker["host"] != socket.gethostname() or _process_alive(marker["pid"]):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
