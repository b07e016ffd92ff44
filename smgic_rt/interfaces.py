"""Nipype interfaces: smgic registration and transform application as pipeline nodes.

    >>> from nipype import Node, Workflow                                         # doctest: +SKIP
    >>> from smgic_rt.interfaces import Register, ApplyTransforms                 # doctest: +SKIP
    >>> register = Node(Register(fixed_image="T1.nii.gz", moving_image="MNI.nii.gz"), "register")  # doctest: +SKIP
    >>> apply = Node(ApplyTransforms(reference_image="T1.nii.gz", input_image="atlas.nii.gz",
    ...                              interpolation="label"), "apply")             # doctest: +SKIP
    >>> workflow = Workflow("smgic")                                              # doctest: +SKIP
    >>> workflow.connect(register, "forward_transforms", apply, "transforms")     # doctest: +SKIP

Like nipype's ANTs interfaces: `Register` writes smgic-register's outputs into the node's folder
and hands on the transforms; `ApplyTransforms` takes transforms in ANTs' order, with
``invert_transform_flags`` for ``[T,1]`` (`smgic_rt.apply`). Importing this module needs nipype
(``pip install nipype``); the rest of smgic_rt never imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface,
                                        TraitedSpec, isdefined, traits)
except ImportError as error:  # pragma: no cover - exercised only without nipype
    raise ImportError("smgic_rt.interfaces needs nipype: pip install nipype") from error

__all__ = ["Register", "ApplyTransforms"]

_MODES = ("auto", "on", "off")


class _RegisterInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True, desc="fixed image: the output grid")
    moving_image = File(exists=True, mandatory=True, desc="moving image")
    moving_labels = File(exists=True, desc="label map in the moving space, warped with generic-label interpolation")
    initial_transform = File(exists=True, desc="fixed -> moving affine to start from (ITK, FSL FLIRT, LTA, RAS text)")
    initial_format = traits.Enum("itk", "fsl", "lta", "ras", desc="format of initial_transform (default: detected)")
    bundle = traits.Str(desc="model bundle folder or zip (default: the installed one)")
    backend = traits.Enum("auto", "onnxruntime", "tensorrt", "torch", usedefault=True)
    quality = traits.Enum("fast", "accurate", usedefault=True)
    affine = traits.Enum(*_MODES, usedefault=True, desc="affine stage")
    network = traits.Enum(*_MODES, usedefault=True, desc="network stage")
    refine = traits.Enum(*_MODES, usedefault=True, desc="refinement")
    num_threads = traits.Int(desc="CPU threads (default: all cores)")
    output_folder = traits.Str("smgic", usedefault=True, desc="folder for the outputs, inside the node's directory")


class _RegisterOutputSpec(TraitedSpec):
    warped_image = File(exists=True, desc="moving image on the fixed grid")
    forward_transforms = InputMultiObject(File(exists=True), desc="[warp.nii.gz]: fixed -> moving, ANTs' order")
    reverse_transforms = InputMultiObject(File(exists=True), desc="[inverse_warp.nii.gz]: moving -> fixed")
    affine_transform = File(desc="affine.mat (ITK) when an affine was used")
    jacobian = File(exists=True)
    warped_labels = File(desc="warped_labels.nii.gz, with moving_labels")
    report_file = File(exists=True, desc="report.json (with the QC flag)")
    output_folder = traits.Directory(exists=True)


class Register(SimpleInterface):
    """smgic-register as a Nipype node (`smgic_rt.Registrar`, `smgic_rt.job.run_pair`)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from . import job
        from .registrar import Registrar
        from .io.transform_formats import read_affine

        inputs = self.inputs
        pair = job.load_pair(inputs.fixed_image, inputs.moving_image,
                             moving_labels=inputs.moving_labels if isdefined(inputs.moving_labels) else None)
        initial = None
        if isdefined(inputs.initial_transform):
            initial = read_affine(inputs.initial_transform, fixed=pair.fixed, moving=pair.moving,
                                  fmt=inputs.initial_format if isdefined(inputs.initial_format) else None)
        outdir = job.check_output(pair, Path(runtime.cwd) / inputs.output_folder, overwrite=True)
        registrar = Registrar(inputs.bundle if isdefined(inputs.bundle) else None, backend=inputs.backend,
                              quality=inputs.quality, affine=inputs.affine, network=inputs.network, refine=inputs.refine,
                              threads=inputs.num_threads if isdefined(inputs.num_threads) else None)
        job.run_pair(registrar, pair, outdir, overwrite=True, initial=initial)
        files = {name: str(outdir / name) for name in os.listdir(outdir)}
        self._results.update(
            warped_image=files["warped.nii.gz"], forward_transforms=[files["warp.nii.gz"]],
            reverse_transforms=[files["inverse_warp.nii.gz"]], jacobian=files["jacobian.nii.gz"],
            report_file=files["report.json"], output_folder=str(outdir))
        for output, name in (("affine_transform", "affine.mat"), ("warped_labels", "warped_labels.nii.gz")):
            if name in files:
                self._results[output] = files[name]
        return runtime


class _ApplyInputSpec(BaseInterfaceInputSpec):
    transforms = InputMultiObject(File(exists=True), mandatory=True, desc="transforms in ANTs' order")
    invert_transform_flags = InputMultiObject(traits.Bool(), desc="per transform: use its inverse ([T,1])")
    reference_image = File(exists=True, desc="output grid (required for images and .trk outputs)")
    input_image = File(exists=True, mandatory=True, desc="image, label map, 4-D series, .csv points, .trk/.tck")
    interpolation = traits.Enum("linear", "nearest", "label", usedefault=True)
    points_space = traits.Enum("lps", "ras", usedefault=True, desc="coordinates of .csv points")
    output_image = traits.Str(desc="output file name (default: the input's name with _trans)")
    num_threads = traits.Int(desc="CPU threads (default: all cores)")


class _ApplyOutputSpec(TraitedSpec):
    output_image = File(exists=True)


def _default_output(source: str) -> str:
    name = Path(source).name
    for suffix in (".nii.gz", ".nii", ".mgz", ".csv", ".trk", ".tck"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            return f"{stem}_trans{'.nii.gz' if suffix == '.mgz' else suffix}"
    return name + "_trans.nii.gz"


class ApplyTransforms(SimpleInterface):
    """smgic-apply as a Nipype node (`smgic_rt.apply`), with nipype's ANTs ApplyTransforms names."""

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec

    def _run_interface(self, runtime):
        from . import apply

        inputs = self.inputs
        flags = list(inputs.invert_transform_flags) if isdefined(inputs.invert_transform_flags) else []
        if flags and len(flags) != len(inputs.transforms):
            raise ValueError(f"invert_transform_flags must have one flag per transform ({len(inputs.transforms)}), "
                             f"got {len(flags)}")
        chain = apply.load_chain([(path, bool(flags[n]) if flags else False) for n, path in enumerate(inputs.transforms)])
        name = inputs.output_image if isdefined(inputs.output_image) else _default_output(inputs.input_image)
        output = Path(runtime.cwd) / name
        apply.apply_to_file(chain, inputs.input_image, output,
                            reference=inputs.reference_image if isdefined(inputs.reference_image) else None,
                            interpolation=inputs.interpolation, points_space=inputs.points_space,
                            threads=inputs.num_threads if isdefined(inputs.num_threads) else None)
        self._results["output_image"] = str(output)
        return runtime
