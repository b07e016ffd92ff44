"""Shared pytest setup: CUDA-marked tests run only where smgic_rt._C has CUDA and a GPU answers;
`package_file` finds a data package's file or skips the test; `nilearn_brain` a real brain on a
model grid."""

from pathlib import Path

import pytest


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package (`smgic_rt.demo.package_file`), or skip the test
    when the package or the file is absent (../shared/DATA.md lists them)."""
    from smgic_rt.demo import DemoDataError
    from smgic_rt.demo import package_file as find

    try:
        return find(package, relative)
    except DemoDataError as error:
        pytest.skip(str(error))


def nilearn_brain(shape, spacing):
    """The ICBM 2009a brain (nilearn) prepared on a `shape` model grid of `spacing` mm, as the
    refinement sees its images."""
    import nibabel as nib
    import numpy as np
    from smgic_rt.methods import preprocess

    image = nib.load(package_file("nilearn", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    return preprocess.prepare(np.asarray(image.dataobj, np.float32), image.affine, shape, spacing)[0]


def _cuda_available():
    try:
        from smgic_rt import _C
    except ImportError:
        return False
    return bool(_C.cuda_available())


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA build of smgic_rt._C and a GPU (cuda_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
