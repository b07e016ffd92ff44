"""The generated tables in docs/ are what benchmarks/results/ holds, and the refinement variants
(data, benchmarks/variants.json) build the presets they name."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_docs_tables_are_generated_from_the_results():
    import make_tables

    assert make_tables.main(["--check"]) == 0
    assert "| fast |" in make_tables.accuracy_table()


def test_the_variants_file_builds_the_presets_and_their_changes():
    import refine_sweep

    from smgic_rt.methods.refine import RefineOptions
    from smgic_rt.presets import PRESETS

    variants = refine_sweep.load_variants()
    assert variants["fast"] == PRESETS["fast"]["refine_options"]
    assert variants["accurate"] == PRESETS["accurate"]["refine_options"]
    assert variants["defaults"] == RefineOptions()
    changed = variants["fast_reg003_last"]
    assert changed.levels[-1].reg == 0.03 and changed.levels[:-1] == PRESETS["fast"]["refine_options"].levels[:-1]
    assert [level.factor for level in variants["fast_fine10_16_reg002"].levels] == [4, 2, 1, 0.5]
