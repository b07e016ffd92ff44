"""The README is an entry point: short, install first, and its layout table is the tree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _layout_paths() -> list:
    table = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [path for row in rows for path in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_the_readme_is_short_and_starts_with_the_install():
    lines = README.splitlines()
    assert len(lines) <= 250
    install = next(i for i, line in enumerate(lines) if line.startswith('pip install -e ".[qc]"'))
    tests = next(i for i, line in enumerate(lines) if line.startswith('pip install -e ".[test]"'))
    assert install < 40 and tests < 40


def test_the_layout_table_matches_the_tree():
    listed = _layout_paths()
    for path in listed:
        assert (ROOT / path).exists(), f"README's layout names {path}, which is not in the tree"
    # every module and folder of the package, and every top-level folder that git tracks, is listed
    package = ROOT / "smgic_rt"
    wanted = {f"smgic_rt/{p.name}" + ("/" if p.is_dir() else "") for p in package.iterdir()
              if not p.name.startswith(("_", ".")) and (p.is_dir() or p.suffix == ".py")}
    wanted |= {f"{name}/" for name in ("csrc", "training", "export", "benchmarks", "docs", "tests")
               if (ROOT / name).is_dir()}
    missing = sorted(path for path in wanted if path not in listed)
    assert not missing, f"README's layout misses {missing}"
