"""The model bundle: per-level ONNX graphs plus a self-describing, checksummed ``config.json``.

A bundle is a folder (or a zip of that folder's contents) written by ``python -m export bundle``::

    config.json      schema version, model config, grid, spacing, steps, normalisation,
                     per-level input/output names and shapes, provenance, exporter versions,
                     and the sha256 of every other file
    level1.onnx ... level4.onnx
    weights.pt       (optional) the state_dict, for the torch reference backend

`load_bundle` verifies the schema version and every checksum before anything runs, and
refuses a tampered, truncated or incompatible bundle with `BundleError`.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import sha256_file

__all__ = [
    "BundleError",
    "Bundle",
    "load_bundle",
    "sha256_file",
    "SCHEMA_VERSION",
    "BUNDLE_FORMAT",
    "CONFIG_NAME",
    "LEVEL_INPUT_NAMES",
    "LEVEL_OUTPUT_NAME",
]

# Bumped whenever config.json changes in a way an older runtime would misread.
SCHEMA_VERSION = 1
BUNDLE_FORMAT = "smgic_rt-model-bundle"
CONFIG_NAME = "config.json"
# ONNX forbids a graph output with the same name as an input, so the level's output
# velocity is "velocity_out" while its input is "velocity".
LEVEL_INPUT_NAMES = ("fixed", "moving", "velocity")
LEVEL_OUTPUT_NAME = "velocity_out"

_REQUIRED_KEYS = (
    "schema_version",
    "format",
    "model_config",
    "grid_shape",
    "spacing",
    "integration_steps",
    "normalization",
    "levels",
    "provenance",
    "exporter",
    "files",
)


class BundleError(ValueError):
    """A model bundle is missing, damaged, tampered with, or of an incompatible schema."""


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle.

    Attributes
    ----------
    path : Path
        Folder holding the (verified) files; for a zip, the folder it was extracted to.
    source : Path
        What the caller passed (folder or zip).
    config : dict
        ``config.json`` as parsed.
    id : str
        ``"sha256:<hex>"`` of ``config.json``'s bytes; since config.json holds the sha256 of
        every other file, the id names the exact bundle content.
    """

    path: Path
    source: Path
    config: dict = field(repr=False)
    id: str
    _level_files: tuple = field(repr=False, default=())

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.config["grid_shape"])

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.config["spacing"])

    @property
    def steps(self) -> int:
        return int(self.config["integration_steps"])

    @property
    def levels(self) -> list[dict]:
        """Per-level entries (level number, file, input/output names and shapes), coarse first."""
        return list(self.config["levels"])

    @property
    def num_levels(self) -> int:
        return len(self.config["levels"])

    @property
    def level_paths(self) -> tuple[Path, ...]:
        """Paths of the ONNX graphs, level 1 (coarsest) first."""
        return tuple(self.path / name for name in self._level_files)

    def level_entry(self, level: int) -> dict:
        """The config entry of `level` (1-based)."""
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= self.num_levels:
            raise ValueError(f"level must be an int in 1..{self.num_levels}, got {level!r}")
        return self.config["levels"][level - 1]

    def file_path(self, name: str) -> Path | None:
        """Path of an optional checksummed file (e.g. ``weights.pt``), or None if absent."""
        if name in self.config["files"]:
            return self.path / name
        return None


def _fail_shape(where: str, value) -> BundleError:
    return BundleError(f"config.json: {where} must be a list of 3 positive numbers, got {value!r}")


def _validate_config(config, source) -> tuple[str, ...]:
    """Check config.json's structure; return the level file names, coarse first."""
    if not isinstance(config, dict):
        raise BundleError(f"{source}: config.json must hold a JSON object, got {type(config).__name__}")
    missing = [key for key in _REQUIRED_KEYS if key not in config]
    if missing:
        raise BundleError(f"{source}: config.json lacks required keys {missing}")
    if config["format"] != BUNDLE_FORMAT:
        raise BundleError(
            f"{source}: config.json format must be {BUNDLE_FORMAT!r}, got {config['format']!r}"
        )
    version = config["schema_version"]
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{source}: bundle schema version {version!r} is not supported by this runtime "
            f"(expected {SCHEMA_VERSION}); re-export the bundle with this version's "
            "`python -m export bundle`"
        )
    for key in ("grid_shape", "spacing"):
        value = config[key]
        if not (isinstance(value, list) and len(value) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)):
            raise _fail_shape(key, value)
    steps = config["integration_steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise BundleError(f"config.json: integration_steps must be an int >= 0, got {steps!r}")
    files = config["files"]
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{source}: config.json 'files' must map file names to sha256, got {files!r}")
    levels = config["levels"]
    if not isinstance(levels, list) or not levels:
        raise BundleError(f"{source}: config.json 'levels' must be a non-empty list, got {levels!r}")
    names = []
    for index, entry in enumerate(levels, start=1):
        if not isinstance(entry, dict) or entry.get("level") != index:
            raise BundleError(f"{source}: config.json levels[{index - 1}] must describe level {index}, got {entry!r}")
        for key in ("file", "inputs", "outputs"):
            if key not in entry:
                raise BundleError(f"{source}: config.json levels[{index - 1}] lacks {key!r}")
        if entry["file"] not in files:
            raise BundleError(
                f"{source}: level {index} graph {entry['file']!r} has no checksum in config.json 'files'"
            )
        inputs = entry["inputs"]
        if not isinstance(inputs, dict) or tuple(inputs) != LEVEL_INPUT_NAMES:
            raise BundleError(
                f"{source}: level {index} inputs must be {list(LEVEL_INPUT_NAMES)}, got "
                f"{list(inputs) if isinstance(inputs, dict) else inputs!r}"
            )
        names.append(entry["file"])
    for name in files:
        # Only plain names: a bundle must never point outside its own folder.
        if not isinstance(name, str) or name != Path(name).name or name in ("", ".", ".."):
            raise BundleError(f"{source}: config.json 'files' holds an invalid file name {name!r}")
    return tuple(names)


def _verify_files(folder: Path, files: dict, source) -> None:
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{source}: file {name!r} listed in config.json is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{source}: checksum mismatch for {name!r}: config.json says sha256 {expected}, "
                f"the file has {actual} (damaged, truncated or modified; re-export the bundle)"
            )


_extracted_dirs: list[str] = []


def _cleanup_extracted() -> None:
    for folder in _extracted_dirs:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_cleanup_extracted)


def _extract_zip(path: Path) -> Path:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise BundleError(f"{path}: not a readable zip bundle ({error})") from error
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        names = [info.filename for info in members]
        # Accept either the files at the top or all inside one folder (zip of the folder).
        prefixes = {name.rsplit("/", 1)[0] if "/" in name else "" for name in names}
        if len(prefixes) != 1:
            raise BundleError(f"{path}: zip bundle must hold one flat folder of files, got {names}")
        if any(".." in Path(name).parts or Path(name).is_absolute() for name in names):
            raise BundleError(f"{path}: zip bundle holds unsafe paths {names}")
        target = Path(tempfile.mkdtemp(prefix="smgic_bundle_"))
        _extracted_dirs.append(str(target))
        try:
            for info in members:
                with archive.open(info) as src, open(target / Path(info.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise BundleError(f"{path}: zip bundle is damaged ({error})") from error
    return target


def load_bundle(path) -> Bundle:
    """Open and verify a model bundle.

    Parameters
    ----------
    path : str or Path
        A bundle folder, or a zip of one.

    Returns
    -------
    Bundle

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    BundleError
        ``config.json`` missing or unreadable, schema version not supported, a listed file
        missing, or a file whose sha256 differs from the one recorded.

    Examples
    --------
    >>> bundle = load_bundle("models/default")          # doctest: +SKIP
    >>> bundle.grid_shape, bundle.steps                 # doctest: +SKIP
    ((80, 96, 80), 7)
    """
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"bundle path {str(source)!r} does not exist")
    folder = _extract_zip(source) if source.is_file() else source
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise BundleError(f"{source}: no {CONFIG_NAME} (not a model bundle)")
    raw = config_path.read_bytes()
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{source}: {CONFIG_NAME} is not valid JSON ({error})") from error
    level_files = _validate_config(config, source)
    _verify_files(folder, config["files"], source)
    bundle_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    return Bundle(path=folder, source=source, config=config, id=bundle_id, _level_files=level_files)
