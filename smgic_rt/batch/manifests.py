"""Completeness of a pair in a cohort run: a manifest per pair, written after its outputs.

``OUTROOT/.smgic-batch/<id>.json`` records the options and the inputs' size and mtime that
produced ``OUTROOT/<id>/``, and that folder's own manifest (`smgic_rt.io.outputs`, every file's
size and sha256). A rerun skips exactly the pairs whose records still match what is on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import atomic, outputs
from .pairs import PAIR_COLUMNS, RESERVED_NAMES, Pair

__all__ = ["MANIFEST_DIR", "pair_is_complete", "inputs_identity", "write_pair_manifest"]

MANIFEST_DIR = RESERVED_NAMES[0]


def inputs_identity(pair: Pair) -> dict:
    """Size and mtime of each input: a changed input makes the old outputs stale."""
    identity = {}
    for column in PAIR_COLUMNS[:-1]:
        path = getattr(pair, column)
        if path is None:
            continue
        try:
            stat = os.stat(path)
        except OSError:  # the loader reports a missing file in smgic-register's words
            identity[column] = {"path": path, "size": None, "mtime_ns": None}
            continue
        identity[column] = {"path": path, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identity


def _manifest_path(out_root: Path, pair_id: str) -> Path:
    return out_root / MANIFEST_DIR / f"{pair_id}.json"


def pair_is_complete(out_root, pair: Pair, options: dict) -> dict | None:
    """The manifest of `pair` when its outputs in `out_root` are complete and current, else None.

    Complete means: the manifest exists, was made with the same `options` from inputs of the same
    size and mtime, and ``OUTROOT/<id>/`` is the intact output folder it recorded (every file
    with its size and sha256, nothing else).
    """
    out_root = Path(os.fspath(out_root))
    try:
        manifest = json.loads(_manifest_path(out_root, pair.id).read_text(encoding="utf-8"))
        if manifest.get("options") != options or manifest.get("inputs") != inputs_identity(pair):
            return None
        folder_manifest = outputs.read_manifest(out_root / pair.id)
        if folder_manifest is None or folder_manifest["files"] != manifest["files"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable manifest/outputs: not complete
    return manifest


def write_pair_manifest(out_root: Path, pair: Pair, options: dict, inputs: dict, record: dict) -> None:
    folder_manifest = outputs.read_manifest(out_root / pair.id)
    if folder_manifest is None:
        raise RuntimeError(f"output folder '{out_root / pair.id}' changed while its manifest was being written")
    (out_root / MANIFEST_DIR).mkdir(exist_ok=True)
    atomic.write_json(_manifest_path(out_root, pair.id), {"id": pair.id, "options": options, "inputs": inputs,
                                                          "files": folder_manifest["files"], "record": record})
