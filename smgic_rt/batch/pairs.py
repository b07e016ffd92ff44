"""The pairs table of ``smgic-batch``: CSV rows (or Python items) to `Pair`s with stable ids."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io import image_stem

__all__ = ["PAIR_COLUMNS", "RESERVED_NAMES", "Pair", "PairsFileError", "read_pairs"]

PAIR_COLUMNS = ("fixed", "moving", "moving_labels", "fixed_mask", "moving_mask", "fixed_exclude", "moving_exclude", "id")
# Names in OUTROOT that belong to smgic-batch itself, never a pair's id.
RESERVED_NAMES = (".smgic-batch", "summary.csv", "summary.json", "report.html", ".smgic-report")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class PairsFileError(ValueError):
    """The pairs table (CSV or list) is malformed; the message names the row and the problem."""


@dataclass(frozen=True)
class Pair:
    """One registration: `moving` onto `fixed`, outputs in ``OUTROOT/<id>/``. Paths are absolute."""

    id: str
    fixed: str
    moving: str
    moving_labels: str | None = None
    fixed_mask: str | None = None
    moving_mask: str | None = None
    fixed_exclude: str | None = None
    moving_exclude: str | None = None


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "pair"


def read_pairs(pairs) -> list[Pair]:
    """Pairs from a CSV path, or from an iterable of `Pair`, dicts (CSV column names as keys) or
    ``(fixed, moving)`` tuples.

    Ids default to the moving image's file name; when those collide, to ``<row>-<name>`` for
    every pair, so ids stay stable from run to run. Given ids must be unique file names.
    """
    if isinstance(pairs, (str, os.PathLike)):
        rows, base, where = _read_csv(Path(os.fspath(pairs)).expanduser())
    else:
        rows, base, where = [], Path.cwd(), "pairs"
        for number, item in enumerate(pairs, start=1):
            if isinstance(item, Pair):
                item = asdict(item)
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                item = {"fixed": item[0], "moving": item[1]}
            elif not isinstance(item, dict):
                raise PairsFileError(f"pairs item {number}: expected a Pair, a dict or a (fixed, moving) tuple, got {type(item).__name__}")
            unknown = sorted(set(item) - set(PAIR_COLUMNS))
            if unknown:
                raise PairsFileError(f"pairs item {number}: unknown keys {unknown}; expected some of {list(PAIR_COLUMNS)}")
            rows.append((number, {k: (None if v is None else os.fspath(v)) for k, v in item.items()}))
    if not rows:
        raise PairsFileError(f"{where}: expected at least one pair, got none")

    def absolute(value):
        value = (value or "").strip()
        return str((base / Path(value).expanduser()).absolute()) if value else None

    resolved = []
    for number, row in rows:
        for column in ("fixed", "moving"):
            if not (row.get(column) or "").strip():
                raise PairsFileError(f"{where} row {number}: expected a '{column}' path, got an empty value")
        resolved.append((number, {column: absolute(row.get(column)) for column in PAIR_COLUMNS if column != "id"}, (row.get("id") or "").strip()))

    given_ids = [given for _, _, given in resolved if given]
    defaults = [_safe_id(image_stem(values["moving"])) for _, values, given in resolved if not given]
    collide = len(set(defaults)) < len(defaults) or bool(set(defaults) & set(given_ids))
    result, seen = [], {}
    for number, values, given in resolved:
        default = _safe_id(image_stem(values["moving"]))
        pair_id = given or (f"{number:05d}-{default}" if collide else default)
        if not _ID_PATTERN.match(pair_id) or pair_id in (".", ".."):
            raise PairsFileError(f"{where} row {number}: id must be a plain file name (letters, digits, '._-', not starting with '.'), got {pair_id!r}")
        if pair_id in RESERVED_NAMES:
            raise PairsFileError(f"{where} row {number}: id {pair_id!r} is reserved for smgic-batch's own files")
        if pair_id in seen:
            raise PairsFileError(f"{where} rows {seen[pair_id]} and {number}: ids must be unique, got {pair_id!r} twice")
        seen[pair_id] = number
        result.append(Pair(id=pair_id, **values))
    return result


def _read_csv(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"pairs file: no such file: '{path}'")
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [c for c in ("fixed", "moving") if c not in header]
        unknown = [c for c in header if c not in PAIR_COLUMNS]
        if missing or unknown:
            raise PairsFileError(
                f"{path}: expected columns fixed,moving[,{','.join(c for c in PAIR_COLUMNS if c not in ('fixed', 'moving'))}], "
                f"got header {header}"
                + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else "")
            )
        reader.fieldnames = header
        # Row numbers as a spreadsheet shows them: the header is row 1.
        rows = []
        for number, row in enumerate(reader, start=2):
            extra = row.pop(None, None)  # csv puts fields beyond the header under the key None
            if extra and any((v or "").strip() for v in extra):
                raise PairsFileError(f"{path} row {number}: expected {len(header)} fields ({','.join(header)}), "
                                     f"got {len(header) + len(extra)}: extra {extra}")
            if any((v or "").strip() for v in row.values()):
                rows.append((number, row))
    return rows, path.parent.absolute(), str(path)
