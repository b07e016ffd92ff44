"""Shared pytest setup: CUDA-marked tests run only where smgic_rt._C has CUDA and a GPU answers."""

import pytest


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
