"""The flat module names from before the layers (``smgic_rt.ops``, ``smgic_rt.refine``, ...),
still importable: each old name is the very module object of its new home, so code and pickles
written against them keep working (`smgic_rt/__init__.py` installs the finder)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old name -> new name, under smgic_rt
MOVED = {
    "atomic": "io.atomic", "outputs": "io.outputs", "bundle": "models.bundle",
    "ops": "geometry.ops", "transforms": "geometry.transforms", "_filters": "geometry.filters",
    "affine": "methods.affine", "preprocess": "methods.preprocess", "features": "methods.features",
    "network": "methods.network", "refine": "methods.refine", "quality": "presets",
    "qc_report": "qc.report", "flags": "qc.flags", "metrics": "qc.metrics",
    "job": "pipeline.job",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass  # already executed under its new name


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(".")
        if prefix != "smgic_rt" or old not in MOVED:
            return None
        new = f"smgic_rt.{MOVED[old]}"
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install():
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())  # before any finder of an older install
