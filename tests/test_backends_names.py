"""backends.create: names and argument checks that need no model."""

import pytest

from smgic_rt import backends


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError) as info:
        backends.create("cudnn", None)
    for name in ("auto", "onnxruntime", "tensorrt", "torch"):
        assert repr(name) in str(info.value)


def test_create_needs_a_loaded_bundle(tmp_path):
    with pytest.raises(TypeError, match="load_bundle"):
        backends.create("onnxruntime", str(tmp_path))
