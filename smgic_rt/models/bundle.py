"""The model bundle: per-level ONNX graphs plus a self-describing, checksummed ``config.json``.

A bundle is a folder (or a zip of that folder's contents) written by ``python -m export bundle``::

    checksums.sha256 the sha256 of config.json and of every file config.json lists, one
                     ``<hex>  <name>`` line each (``sha256sum -c checksums.sha256`` checks a bundle
                     by hand); the bundle id is ``sha256:`` + the sha256 of this file
    config.json      schema version, model config, grid, spacing, steps, normalisation,
                     per-level input/output names and shapes, provenance, exporter versions,
                     and the sha256 of every other file
    level1.onnx ... level4.onnx
    weights.pt       (optional) the state_dict, for the torch reference backend

`load_bundle` verifies the checksum file (present, well formed, covering exactly config.json
and the files config.json lists, agreeing with config.json's own list), config.json's hash
before its content is trusted, the schema version and every file's hash before anything runs,
and refuses a tampered, truncated or incompatible bundle with `BundleError`. The id therefore
names every byte of the bundle, config.json included: an edited config.json (integration steps,
grid) is refused unless its checksum file is rewritten, and then the bundle has a new id. The
shipped default bundle's id is pinned in `smgic_rt.models.DEFAULT_BUNDLE_ID`, so even a
consistently re-hashed default is refused; `load_bundle(path, expected_id=...)` pins any other.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..io.atomic import sha256_file
from ..options import is_int, is_number

__all__ = [
    "BundleError",
    "Bundle",
    "load_bundle",
    "sha256_file",
    "SCHEMA_VERSION",
    "BUNDLE_FORMAT",
    "CONFIG_NAME",
    "CHECKSUM_NAME",
    "write_checksums",
    "read_checksums",
    "LEVEL_INPUT_NAMES",
    "LEVEL_OUTPUT_NAME",
]

# Bumped whenever config.json changes in a way an older runtime would misread.
SCHEMA_VERSION = 1
BUNDLE_FORMAT = "smgic_rt-model-bundle"
CONFIG_NAME = "config.json"
CHECKSUM_NAME = "checksums.sha256"
# ONNX forbids a graph output with the same name as an input, so the level's output
# velocity is "velocity_out" while its input is "velocity".
LEVEL_INPUT_NAMES = ("fixed", "moving", "velocity")
LEVEL_OUTPUT_NAME = "velocity_out"
# Devices a bundle's optional "profiles" entry may name (see Bundle.profile_levels).
PROFILE_DEVICES = ("cpu", "cuda")

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
        ``"sha256:<hex>"`` of ``checksums.sha256``'s bytes; since that file holds the sha256 of
        config.json and of every other file, the id names the exact bundle content.
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

    def profile_levels(self, device: str) -> int:
        """How many levels (1..k, coarsest first) ``network="auto"`` runs on `device` ("cpu" or
        "cuda"): config.json's measured ``profiles[device]["levels"]``, every level where the
        bundle records no profile. 0: on that device the network does not pay for its time."""
        if device not in PROFILE_DEVICES:
            raise ValueError(f"device must be one of {list(PROFILE_DEVICES)}, got {device!r}")
        profile = (self.config.get("profiles") or {}).get(device)
        return self.num_levels if profile is None else int(profile["levels"])

    def profile_skips_covered(self, device: str) -> bool:
        """Whether, on `device`, the refinement skips its levels that the network's last level
        already covers (config.json's measured ``profiles[device]["skip_covered"]``; False
        where the bundle records none)."""
        if device not in PROFILE_DEVICES:
            raise ValueError(f"device must be one of {list(PROFILE_DEVICES)}, got {device!r}")
        profile = (self.config.get("profiles") or {}).get(device)
        return bool(profile.get("skip_covered", False)) if profile is not None else False

    @property
    def level_paths(self) -> tuple[Path, ...]:
        """Paths of the ONNX graphs, level 1 (coarsest) first."""
        return tuple(self.path / name for name in self._level_files)

    def level_entry(self, level: int) -> dict:
        """The config entry of `level` (1-based)."""
        if not is_int(level) or not 1 <= level <= self.num_levels:
            raise ValueError(f"level must be an int in 1..{self.num_levels}, got {level!r}")
        return self.config["levels"][level - 1]

    @property
    def file_names(self) -> tuple[str, ...]:
        """Every file of the bundle (checksum file, config.json, the listed files): what a copy
        of the bundle must hold to load elsewhere."""
        return (CHECKSUM_NAME, CONFIG_NAME, *sorted(set(self.config["files"]) - {CONFIG_NAME, CHECKSUM_NAME}))

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
                and all(is_number(v) and v > 0 for v in value)):
            raise _fail_shape(key, value)
    steps = config["integration_steps"]
    if not is_int(steps) or steps < 0:
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
    profiles = config.get("profiles", {})
    if not isinstance(profiles, dict) or set(profiles) - set(PROFILE_DEVICES):
        raise BundleError(f"{source}: config.json 'profiles' must map devices {list(PROFILE_DEVICES)} to profiles, "
                          f"got {profiles!r}")
    for device, profile in profiles.items():
        count = profile.get("levels") if isinstance(profile, dict) else None
        if not is_int(count) or not 0 <= count <= len(levels):
            raise BundleError(f"{source}: config.json profiles[{device!r}]['levels'] must be an int in "
                              f"0..{len(levels)}, got {count!r}")
        if not isinstance(profile.get("skip_covered", False), bool):
            raise BundleError(f"{source}: config.json profiles[{device!r}]['skip_covered'] must be true or false, "
                              f"got {profile['skip_covered']!r}")
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


_HEX = frozenset("0123456789abcdef")


def _plain_name(name: str) -> bool:
    return bool(name) and name == Path(name).name and name not in (".", "..")


def _checksum_text(hashes: dict) -> str:
    return "".join(f"{hashes[name]}  {name}\n" for name in sorted(hashes))


def read_checksums(folder, source=None) -> tuple[dict, bytes]:
    """Parse ``checksums.sha256`` of a bundle folder: ({file name: sha256 hex}, raw bytes).

    Raises BundleError when it is missing or not exactly ``<64 hex>  <plain name>`` lines in
    sorted order without duplicates (what `write_checksums` writes: one canonical form per
    content, so one id per content).
    """
    folder = Path(folder)
    source = source or folder
    path = folder / CHECKSUM_NAME
    if not path.is_file():
        raise BundleError(
            f"{source}: no {CHECKSUM_NAME} (it covers config.json and every file; bundles from before it existed "
            "must be re-exported with `python -m export bundle`, or re-sealed with `python -m export checksums`)"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BundleError(f"{source}: {CHECKSUM_NAME} is not ASCII text") from None
    hashes = {}
    lines = text.split("\n")
    if lines[-1] != "":
        raise BundleError(f"{source}: {CHECKSUM_NAME} must end with a newline")
    for number, line in enumerate(lines[:-1], start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not set(digest) <= _HEX or not _plain_name(name):
            raise BundleError(f"{source}: {CHECKSUM_NAME} line {number} is not '<sha256 hex>  <file name>': {line!r}")
        if name in hashes:
            raise BundleError(f"{source}: {CHECKSUM_NAME} lists {name!r} twice")
        hashes[name] = digest
    if _checksum_text(hashes).encode("ascii") != raw:
        raise BundleError(f"{source}: {CHECKSUM_NAME} lines must be sorted by file name (as write_checksums writes them)")
    return hashes, raw


def _bundle_id(raw_checksums: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw_checksums).hexdigest()


def write_checksums(folder) -> str:
    """Write ``checksums.sha256`` for a bundle folder and return the bundle id it gives.

    It covers config.json and every file config.json lists, after checking that each listed
    file still has the sha256 config.json records: sealing never blesses a damaged or modified
    model file, only config.json as it now stands. Used by the exporter (and `python -m export
    checksums`) on a finished bundle folder.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise BundleError(f"{folder}: no {CONFIG_NAME} (not a model bundle)")
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{folder}: {CONFIG_NAME} is not valid JSON ({error})") from error
    _validate_config(config, folder)
    _verify_files(folder, config["files"], folder)
    hashes = dict(config["files"])
    hashes[CONFIG_NAME] = sha256_file(config_path)
    text = _checksum_text(hashes)
    from ..io import atomic

    atomic.write_text(folder / CHECKSUM_NAME, text)
    return _bundle_id(text.encode("ascii"))


_extracted_dirs: list[str] = []


def _cleanup_extracted() -> None:
    for folder in _extracted_dirs:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_cleanup_extracted)


def _extraction_prefix() -> str:
    """Extraction folders are named ``smgic_bundle_<host hash>_<pid>_...``: a run killed before
    its atexit cleanup leaves one, which the next extraction on this host removes."""
    import socket
    import zlib

    return f"smgic_bundle_{zlib.crc32(socket.gethostname().encode()):08x}_"


def _remove_stale_extractions() -> None:
    from ..io.outputs import _process_alive

    prefix = _extraction_prefix()
    for entry in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = entry.name[len(prefix):].split("_", 1)[0]
        if entry.is_dir() and not entry.is_symlink() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


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
        _remove_stale_extractions()
        target = Path(tempfile.mkdtemp(prefix=f"{_extraction_prefix()}{os.getpid()}_"))
        _extracted_dirs.append(str(target))
        try:
            for info in members:
                with archive.open(info) as src, open(target / Path(info.filename).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise BundleError(f"{path}: zip bundle is damaged ({error})") from error
    return target


def load_bundle(path, *, expected_id: str | None = None) -> Bundle:
    """Open and verify a model bundle.

    Parameters
    ----------
    path : str or Path
        A bundle folder, or a zip of one.
    expected_id : str, optional
        Refuse the bundle unless its id is this (``"sha256:<hex>"``). The shipped default
        bundle is always held to `smgic_rt.models.DEFAULT_BUNDLE_ID`.

    Returns
    -------
    Bundle

    Raises
    ------
    FileNotFoundError
        `path` does not exist.
    BundleError
        ``checksums.sha256`` or ``config.json`` missing or unreadable, config.json not matching
        its checksum, the checksum file and config.json listing different files or hashes,
        schema version not supported, a listed file missing, a file whose sha256 differs from
        the one recorded, or an id other than the one expected.

    Examples
    --------
    >>> bundle = load_bundle("models/default")          # doctest: +SKIP
    >>> bundle.grid_shape, bundle.steps                 # doctest: +SKIP
    ((80, 96, 80), 7)
    """
    from .. import models

    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"bundle path {str(source)!r} does not exist")
    folder = _extract_zip(source) if source.is_file() else source
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise BundleError(f"{source}: no {CONFIG_NAME} (not a model bundle)")
    hashes, raw_checksums = read_checksums(folder, source)
    raw = config_path.read_bytes()
    # config.json's own hash first: nothing it says is trusted before that.
    config_hash = hashlib.sha256(raw).hexdigest()
    if CONFIG_NAME not in hashes:
        raise BundleError(f"{source}: {CHECKSUM_NAME} does not cover {CONFIG_NAME}")
    if hashes[CONFIG_NAME] != config_hash:
        raise BundleError(
            f"{source}: {CONFIG_NAME} was modified: {CHECKSUM_NAME} says sha256 {hashes[CONFIG_NAME]}, the file has "
            f"{config_hash} (an edited config.json, e.g. integration steps or grid, is refused; re-export the bundle)"
        )
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{source}: {CONFIG_NAME} is not valid JSON ({error})") from error
    level_files = _validate_config(config, source)
    listed = dict(config["files"])
    covered = {name: digest for name, digest in hashes.items() if name != CONFIG_NAME}
    if covered != listed:
        differ = sorted(name for name in set(covered) | set(listed) if covered.get(name) != listed.get(name))
        raise BundleError(
            f"{source}: {CHECKSUM_NAME} and {CONFIG_NAME} 'files' disagree about {differ} (every file must be covered "
            "by both with the same sha256)"
        )
    _verify_files(folder, listed, source)
    bundle_id = _bundle_id(raw_checksums)
    pinned = []
    if expected_id is not None:
        pinned.append((str(expected_id), "the expected id"))
    if _same_folder(folder, models.default_bundle_path()):
        pinned.append((models.DEFAULT_BUNDLE_ID, "the id this smgic_rt release ships its default bundle with"))
    for expected, what in pinned:
        if bundle_id != expected:
            raise BundleError(
                f"{source}: bundle id {bundle_id} is not {what}, {expected}: its files were changed "
                "(reinstall smgic_rt for the default, or pass the bundle you mean)"
            )
    return Bundle(path=folder, source=source, config=config, id=bundle_id, _level_files=level_files)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
