"""Shared helpers for the registrar / CLI / ANTs tests (no tests of its own).

Real brains come from the data packages listed in DATA.md, found without importing them;
bundles are made by the project's exporter with random weights (a real ONNX graph per level).
"""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from smgic_rt.io import make_nifti

from conftest import package_file  # noqa: F401  (the tests' one data-file helper, re-exported)


def block_downsample(image, factor: int):
    """Mean of factor^3 blocks, keeping the file's orientation; the affine follows exactly."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    shape = [n // factor * factor for n in data.shape[:3]]
    data = data[: shape[0], : shape[1], : shape[2]]
    blocks = data.reshape(shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor)
    # The coarse voxel i covers fine voxels factor*i .. factor*i + factor-1: centre at factor*i + (factor-1)/2.
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2.0
    return make_nifti(blocks.mean(axis=(1, 3, 5)), image.affine @ scale)


_BUNDLES = {}


def make_tiny_bundle(folder: Path) -> Path:
    """A small random-weight bundle written by the project's exporter (export.write_random_bundle:
    32^3 grid at 6 mm, real ONNX graphs), made once per test process and shared."""
    if "random" not in _BUNDLES:
        import export

        _BUNDLES["random"] = Path(export.write_random_bundle(Path(folder) / "bundle", seed=0))
    return _BUNDLES["random"]


def zero_network_bundle(source: Path, folder: Path) -> Path:
    """A copy of `source` whose convolution weights are all 0: each level's residual vanishes
    and it returns its input velocity, so the network predicts v = 0 (identity transform).
    Used to test geometry exactly; the checksums in config.json are recomputed. Callers check
    that the network really returns zero (tests/test_registrar_geometry.py)."""
    import onnx
    from onnx import numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    for name in config["files"]:
        if name.endswith(".onnx"):
            model = onnx.load(str(source / name))
            weights = {
                weight for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                for weight in node.input[1:]
            }
            for initializer in model.graph.initializer:
                if initializer.name not in weights:
                    continue
                array = numpy_helper.to_array(initializer)
                if array.dtype.kind == "f":
                    initializer.CopyFrom(numpy_helper.from_array(np.zeros_like(array), initializer.name))
            onnx.save(model, str(folder / name))
        else:
            (folder / name).write_bytes((source / name).read_bytes())
        config["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    from smgic_rt.models.bundle import write_checksums

    write_checksums(folder)  # an edited bundle is another bundle: seal it as such
    return folder


def rotation_degrees(degrees) -> np.ndarray:
    """`smgic_rt.methods.affine.rotation_matrix` of angles given in degrees."""
    from smgic_rt.methods.affine import rotation_matrix

    return rotation_matrix(np.deg2rad(degrees))


def unwritable_folder(tmp_path) -> Path:
    """A folder this process cannot create entries in: chmod 500 for users, /sys for root
    (skips when even /sys takes a new entry)."""
    import os
    import tempfile

    if os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    try:
        os.rmdir(tempfile.mkdtemp(dir="/sys"))
    except OSError:
        return Path("/sys")
    pytest.skip("no unwritable folder available to this (root) process")
