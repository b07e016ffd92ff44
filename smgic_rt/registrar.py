"""`Registrar`: one call per image pair, from NIfTI in to ANTs-compatible transforms out.

    >>> from smgic_rt import Registrar
    >>> registrar = Registrar("path/to/bundle", backend="onnxruntime")      # doctest: +SKIP
    >>> result = registrar.register("fixed.nii.gz", "moving.nii.gz")       # doctest: +SKIP
    >>> result.save("out/")                                                # doctest: +SKIP

`Registrar` only composes the stages of `smgic_rt.pipeline` (load, affine, preprocess, network,
refine, integrate, fields, resample, quality) from its arguments and runs them on a per-pair
state; `RegistrationResult` holds what they made and writes it (ITK/ANTs files) on `save`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from . import __version__, io
from .io import atomic, outputs
from .geometry import transforms
from .models import default_bundle_path
from .options import BACKENDS, check_registrar_options, with_given
from .pipeline import (AffineStage, FieldsStage, IntegrateStage, LoadStage, NetworkStage, PairState, PreprocessOptions,
                       PreprocessStage, QualityStage, RefineStage, ResampleStage, run_stages, volume_or_load)

__all__ = ["Registrar", "RegistrationResult", "BACKENDS", "EXPORTS", "DEFAULT_BUNDLE_PATH", "NoDefaultBundleError"]

logger = logging.getLogger("smgic_rt")

EXPORTS = ("fsl", "lta")  # transforms for other tools that `RegistrationResult.save` may add
DEFAULT_BUNDLE_PATH = default_bundle_path()


class NoDefaultBundleError(FileNotFoundError):
    """Registrar() was called without a bundle and no default bundle is installed."""


@dataclass
class RegistrationResult:
    """Everything one registration produced.

    Inside, a transform is one thing: a RAS-mm displacement field ``(3, X, Y, Z)`` with the
    affine stage composed in, on a grid that covers the image it maps from (`forward_field`:
    fixed -> moving; `inverse_field`: moving -> fixed; each ``(displacement, grid affine)``, on
    the grids of `smgic_rt.pipeline.FieldsOptions`). ITK/ANTs images (LPS,
    ``X x Y x Z x 1 x 3``) are made from them only when asked for or written.

    Attributes
    ----------
    warped : nibabel.Nifti1Image
        The moving image resampled onto the fixed grid (float32).
    jacobian : nibabel.Nifti1Image
        det of the Jacobian of the fixed -> moving map on the fixed grid (float32).
    stats : dict
        Per stage ``stages[name] = {"mode", "ran", "seconds", "stats"}``, ``seconds`` per stage,
        folding, inverse consistency, backend, bundle id (what report.json holds).
    affine_matrix : numpy.ndarray or None
        4x4 fixed world -> moving world RAS matrix of the affine stage, when it ran.
    fixed, moving : io.Volume
        The images as loaded.
    forward_field, inverse_field : (numpy.ndarray, numpy.ndarray)
        The transforms, as above.
    forward_ras : numpy.ndarray
        The forward transform on the fixed image's own grid (what `apply` reads).
    threads : int or None
        CPU threads that `apply` and `save` use: the Registrar's ``threads`` (None: all cores).
    input_sources : tuple of str
        The files every input of the run (images and masks) was read from: `save` never
        replaces a folder holding one.
    """

    warped: nib.Nifti1Image
    jacobian: nib.Nifti1Image
    stats: dict
    affine_matrix: np.ndarray | None
    fixed: io.Volume = field(repr=False)
    moving: io.Volume = field(repr=False)
    forward_field: tuple = field(repr=False)
    inverse_field: tuple = field(repr=False)
    forward_ras: np.ndarray = field(repr=False)
    threads: int | None = field(default=None, repr=False)
    input_sources: tuple = field(default=(), repr=False)

    @property
    def forward_transform(self) -> nib.Nifti1Image:
        """ITK displacement field on the fixed grid mapping fixed world points to moving world
        points: what ``antsApplyTransforms -r fixed -i moving -t warp.nii.gz`` applies."""
        return transforms.displacement_to_itk_image(*self.forward_field)

    @property
    def inverse_transform(self) -> nib.Nifti1Image:
        """ITK displacement field on the moving grid mapping moving points to fixed points."""
        return transforms.displacement_to_itk_image(*self.inverse_field)

    @property
    def fixed_image(self) -> nib.Nifti1Image | None:
        return None if self.fixed is None else self.fixed.to_nifti()

    @property
    def moving_image(self) -> nib.Nifti1Image | None:
        return None if self.moving is None else self.moving.to_nifti()

    def apply(self, image, interpolation: str = "linear") -> nib.Nifti1Image:
        """Bring an image (or label map) from the moving space onto the fixed grid.

        `image` may lie on any grid that shares the moving image's world (e.g. a label map at
        another resolution). ``interpolation``: "linear" for intensities, "nearest" or "label"
        (generic label: each label's indicator resampled linearly, largest wins) for labels.
        """
        if interpolation not in transforms.INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(transforms.INTERPOLATIONS)}, got {interpolation!r}")
        from .geometry import ops

        volume = io.load_for_resampling(image, interpolation, name="input label map" if interpolation == "label" else "input image")
        with ops.cpu_threads(self.threads):
            data = transforms.warp_image(volume.data, volume.affine, self.forward_ras, self.fixed.affine, interpolation)
        return io.make_nifti(np.ascontiguousarray(data), self.fixed.affine)

    def assess(self, moving_labels=None) -> dict:
        """Flag this registration (`smgic_rt.qc.flags.assess`): sets ``stats["flag"]`` ("ok", "warn"
        or "fail"), ``stats["flag_reasons"]`` and ``stats["qc_measurements"]``; returns them."""
        import time

        from .qc import flags

        start = time.perf_counter()
        # A registration is measured once; labels given later add only their own measurements.
        verdict = flags.assess(self, moving_labels=moving_labels, measured=self.stats.get("qc_measurements"))
        self.stats.update(verdict)
        self.stats.setdefault("seconds", {})["flags"] = time.perf_counter() - start
        return verdict

    def save(self, outdir, *, overwrite: bool = False, moving_labels=None, qc: bool = False, export=()) -> Path:
        """Write all outputs into `outdir` atomically (a staging folder renamed into place).

        Files: warped.nii.gz, warp.nii.gz (fixed -> moving), inverse_warp.nii.gz,
        jacobian.nii.gz, report.json (with the QC flag), affine.mat (when the affine stage ran),
        warped_labels.nii.gz (with `moving_labels`), qc.png and qc.html with its pictures (with
        `qc`) and manifest.json (every file's size and sha256). Nothing is left behind when any
        step fails; `overwrite` replaces only a previous smgic output (`smgic_rt.io.outputs`).
        `export` adds files for other tools (`EXPORTS`): "fsl" warp_fsl.nii.gz and
        inverse_warp_fsl.nii.gz (applywarp --rel) and affine_flirt.mat, "lta" affine.lta.
        """
        unknown = sorted(set(export) - set(EXPORTS))
        if unknown:
            raise ValueError(f"export must name some of {list(EXPORTS)}, got {unknown}")
        from .geometry import ops

        with ops.cpu_threads(self.threads):  # the kernels that reading, measuring and writing call
            labels = None if moving_labels is None else volume_or_load(moving_labels, io.load_label_map,
                                                                         name="moving labels")
            if labels is not None:  # before any work: labels that miss their image would warp to nothing
                io.check_overlap(labels, self.moving, name="moving labels")
            # The flag judges what this save writes: the labels against their image, or no labels
            # (an earlier save's labels are not these outputs').
            self.assess(moving_labels=labels)
            sources = (*self.input_sources, self.fixed.source, self.moving.source,
                       None if labels is None else labels.source)
            outdir = outputs.check_output_dir(outdir, overwrite=overwrite, protected=sources)
            with atomic.atomic_dir(outdir, replace=overwrite) as staging:
                self._write_into(staging, labels, qc, tuple(export), title=outdir.name)
        return outdir

    def _write_into(self, folder: Path, labels: io.Volume | None, qc: bool, export: tuple = (),
                    title: str | None = None):
        import time

        files = {}

        def image(name, img):
            io.save_image_atomic(img, folder / name, threads=self.threads)
            files[name.split(".")[0]] = name

        image("warped.nii.gz", self.warped)
        image("warp.nii.gz", self.forward_transform)
        image("inverse_warp.nii.gz", self.inverse_transform)
        image("jacobian.nii.gz", self.jacobian)
        if self.affine_matrix is not None:
            transforms.write_itk_affine(self.affine_matrix, folder / "affine.mat")
            files["affine"] = "affine.mat"
        if export:
            from .io import transform_formats

            files.update(transform_formats.export_registration(self, folder, export, image))
        if labels is not None:
            start = time.perf_counter()
            image("warped_labels.nii.gz", self.apply(labels, interpolation="label"))
            self.stats.setdefault("seconds", {})["warp_labels"] = time.perf_counter() - start
        if qc:
            from .qc import picture as qc_module
            from .qc import report as qc_report

            qc_module.save_qc_png(
                folder / "qc.png", self.fixed_image, self.moving_image, self.warped, self.jacobian,
                title=f"bundle {self.stats.get('bundle_id')}\nbackend {self.stats.get('backend')}",  # one line overflowed
            )
            files["qc"] = "qc.png"
            files.update(qc_html=qc_report.PAGE_NAME, qc_overlay=qc_report.OVERLAY_NAME,
                         qc_jacobian=qc_report.JACOBIAN_NAME, qc_thumbnail=qc_report.THUMB_NAME)
        files["manifest"] = outputs.MANIFEST_NAME  # written last, over every other file
        report = dict(self.stats)
        report["files"] = files
        atomic.write_json(folder / "report.json", report)
        if qc:
            qc_report.write_pair_page(folder, self, title=title)  # the output's name, not the staging folder's
        outputs.write_manifest(folder)


class Registrar:
    """Deformable registration of 3-D brain MRI with an SM-GICNet model bundle.

    Parameters
    ----------
    bundle : str, os.PathLike, Bundle or None
        A model bundle folder/zip (``python -m export bundle``) or a loaded
        `smgic_rt.models.bundle.Bundle`; None loads the packaged default bundle.
    backend : {"auto", "onnxruntime", "tensorrt", "torch"}
        Inference engine for the network; "auto" picks the fastest that works here.
        `Registrar.backend` says which one runs (None when the network is off).
    quality : {"fast", "accurate"}
        A preset over the stages' options (`smgic_rt.presets.PRESETS`); options given here
        (``affine_options=``, ``refine_options=``) change only the fields they were given.
    affine, network, refine : {"auto", "on", "off"}
        Switch the global affine stage (`smgic_rt.methods.affine`), the network and the per-pair
        refinement (`smgic_rt.methods.refine`, warm-started from the network's velocity) on or off;
        "auto" lets each stage decide: the affine stage and the refinement run; the network runs
        the levels that the bundle's measured profile for this hardware says pay for their time
        (``Bundle.profile_levels``: "cuda" when a GPU is usable, else "cpu"; every level when the
        bundle has no profile), and none when that profile holds 0. "on" runs every level.
    affine_options : smgic_rt.methods.affine.AffineOptions, optional
    network_options : smgic_rt.pipeline.NetworkOptions, optional
    refine_options : smgic_rt.methods.refine.RefineOptions, optional
    fields_options : smgic_rt.pipeline.FieldsOptions, optional
        The stages' options (resolutions, iterations, the grids of the written fields, ...);
        None: their defaults.
    device : {"cpu", "cuda"}
        Where the pair's arrays live once loaded: "cuda" runs every stage on the current CUDA
        device (cupy arrays, on cupy's current stream), the host loading, saving, stepping the
        affine stage's optimiser (42 sums read back per evaluation) and handing the network
        backend its inputs; "cpu" (the default) keeps everything in numpy. The same code runs
        either way (`smgic_rt.geometry.ops.array_namespace`).
    metric : {"ncc", "mind"} or None
        What the affine stage and the refinement compare the images by
        (`smgic_rt.methods.similarity`): "ncc" (local normalised cross-correlation) for images of
        one contrast, "mind" (MIND-SSC descriptors) for different contrasts (a T2, PD, FLAIR or
        EPI image onto a T1). None: the stages' options say (NCC by default). Registering with
        NCC a pair whose intensities say the contrasts differ logs a warning and records it in
        ``stats["warnings"]``.
    threads : positive int or None
        CPU threads for one registration: the network on onnxruntime or torch, and the `_C`
        kernels that `register` calls (for the calling thread only, so several Registrars may
        run side by side in threads; not so the torch backend, whose ``torch.set_num_threads``
        holds for the whole process). None: onnxruntime's and OpenMP's defaults (all cores,
        or ``OMP_NUM_THREADS``).
    """

    def __init__(self, bundle=None, backend: str = "auto", *, quality: str = "fast", affine="auto", network="auto",
                 refine="auto", affine_options=None, network_options=None, refine_options=None, fields_options=None,
                 threads=None, device: str = "cpu", metric: str | None = None):
        checked = check_registrar_options(backend=backend, quality=quality, affine=affine, network=network,
                                          refine=refine, threads=threads, metric=metric)
        self.threads = threads
        self.device = device
        self._xp = _array_module(device)
        from .presets import stage_options

        if metric is not None:  # given here, it is given to both stages' options
            from .methods.affine import AffineOptions
            from .methods.refine import RefineOptions

            affine_options = _with_metric(affine_options, AffineOptions, metric, "affine_options")
            refine_options = _with_metric(refine_options, RefineOptions, metric, "refine_options")
        preset = stage_options(quality, affine_options=affine_options, refine_options=refine_options)
        self.quality = quality
        self.bundle = self._load_bundle(bundle)
        from .geometry import ops

        def make_backend():
            from . import backends

            # TensorRT runs on the GPU; every other backend may fall back to (or run on) the CPU.
            cpu_options = {} if threads is None or backend == "tensorrt" else {"threads": threads}
            return backends.create(backend, self.bundle, **cpu_options)

        refine_stage = RefineStage(checked["refine"], preset["refine_options"])
        # the refinement's images when it runs (the network asks for its own, as trained)
        antialias = refine_stage.options.antialias if refine_stage.enabled else 1.0
        # "auto" runs the levels the bundle's profile for this hardware measured to pay for
        # themselves (all where it has none); "on" runs every level.
        network_stage = NetworkStage(checked["network"], network_options, bundle=self.bundle,
                                     profile="cuda" if ops.cuda_available() else "cpu", make_backend=make_backend)
        self._backend = network_stage.backend
        self.backend = None if self._backend is None else str(getattr(self._backend, "name", backend))
        # The stages, in pipeline order (smgic_rt.pipeline.STAGE_ORDER).
        self.stages = (
            LoadStage(),
            AffineStage(checked["affine"], preset["affine_options"]),
            PreprocessStage(options=PreprocessOptions(antialias=antialias),
                            normalization=self.bundle.config.get("normalization")),
            network_stage,
            refine_stage,
            IntegrateStage(),
            FieldsStage(options=fields_options),
            ResampleStage(),
            QualityStage(),
        )

    @staticmethod
    def _load_bundle(bundle):
        if bundle is None and not (DEFAULT_BUNDLE_PATH / "config.json").is_file():
            raise NoDefaultBundleError(
                f"no default model bundle is installed (looked in '{DEFAULT_BUNDLE_PATH}'); "
                "pass bundle=PATH (CLI: --bundle PATH) with a bundle made by `python -m export bundle`"
            )
        from .models import bundle as bundle_module

        if bundle is None:
            return bundle_module.load_bundle(DEFAULT_BUNDLE_PATH)
        if isinstance(bundle, (str, os.PathLike)):
            return bundle_module.load_bundle(bundle)
        if isinstance(bundle, bundle_module.Bundle):
            return bundle
        raise TypeError(f"bundle must be a path, a Bundle or None, got {type(bundle).__name__}")

    def stage(self, name: str):
        """The stage called `name` (`smgic_rt.pipeline.STAGE_ORDER`)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; the stages are {[stage.name for stage in self.stages]}")

    @property
    def stage_modes(self) -> dict:
        """Each stage's mode ("auto", "on" or "off"), in pipeline order."""
        return {stage.name: stage.mode for stage in self.stages}

    @property
    def metric(self) -> dict:
        """The metric of the affine stage and of the refinement (their options')."""
        return {name: self.stage(name).options.metric for name in ("affine", "refine")}

    def register(self, fixed, moving, *, fixed_mask=None, moving_mask=None, initial=None, fixed_exclude=None,
                 moving_exclude=None) -> RegistrationResult:
        """Register `moving` onto `fixed`.

        Each image is a path (.nii, .nii.gz, .mgz), a nibabel image, an (array, affine) pair or
        an already loaded `smgic_rt.io.Volume`, in any orientation, voxel size and field of
        view; the two may differ. Masks (same grid as their image, nonzero = brain) restrict
        what the stages see. `initial`: an alignment made elsewhere, a 4x4 RAS fixed -> moving
        matrix or an affine file (ITK/ANTs .mat/.txt, FSL FLIRT .mat of ``-in moving -ref
        fixed``, FreeSurfer .lta, 4x4 RAS text; `smgic_rt.io.transform_formats`, or ``(path,
        format)``); the affine stage starts from it, or, switched off, uses it as it is.
        `fixed_exclude`, `moving_exclude`: cost-function masks on their image's grid (nonzero =
        exclude: a lesion, an artefact): both stages leave those voxels out of the similarity,
        while the regulariser keeps the transform smooth across them.
        """
        from .geometry import ops

        state = PairState(inputs={"fixed": fixed, "moving": moving, "fixed_mask": fixed_mask, "moving_mask": moving_mask,
                                  "fixed_exclude": fixed_exclude, "moving_exclude": moving_exclude, "initial": initial},
                          grid_shape=tuple(int(n) for n in self.bundle.grid_shape),
                          spacing=tuple(float(s) for s in self.bundle.spacing),
                          integration_steps=int(self.bundle.steps), xp=self._xp)
        with ops.cpu_threads(self.threads):
            records = run_stages(self.stages, state)
            result = self._result(state, records)
            self._check_contrast(state, result.stats)
            result.assess()
        return result

    def _result(self, state: PairState, records: dict) -> RegistrationResult:
        seconds = {name: record["seconds"] for name, record in records.items() if record["ran"]}
        stats = {
            "smgic_rt_version": __version__,
            "backend": self.backend,
            "bundle_id": str(self.bundle.id),
            "quality": self.quality,
            "metric": self.metric,
            "stages": records,
            "stages_run": [name for name, record in records.items() if record["ran"]],
            "seconds": seconds,
            "seconds_total": float(sum(seconds.values())),
            **records["quality"]["stats"],
            "integration_steps": state.velocity_grid.integration_steps,
            "model_grid": {"shape": list(state.velocity_grid.shape),
                           "affine": np.asarray(state.velocity_grid.affine).tolist()},
            "fixed": _describe(state.fixed),
            "moving": _describe(state.moving),
            "affine_matrix": None if state.world_matrix is None else state.world_matrix.tolist(),
        }
        logger.info("registered in %.2f s: folding %.5f, inverse consistency %.3f voxels",
                    stats["seconds_total"], stats["folding_fraction"], stats["inverse_consistency_voxels_mean"])
        # The host saves: what a device run made comes back here, once.
        from .geometry.ops import to_host

        return RegistrationResult(
            warped=io.make_nifti(to_host(state.warped).astype(np.float32, copy=False), state.fixed.affine),
            jacobian=io.make_nifti(to_host(state.jacobian), state.fixed.affine),
            stats=stats,
            affine_matrix=state.world_matrix,
            fixed=state.fixed,
            moving=state.moving,
            forward_field=(to_host(state.forward_field[0]), state.forward_field[1]),
            inverse_field=(to_host(state.inverse_field[0]), state.inverse_field[1]),
            forward_ras=to_host(state.forward_ras),
            threads=self.threads,
            input_sources=tuple(v.source for v in (state.fixed, state.moving, state.fixed_mask, state.moving_mask,
                                                    state.fixed_exclude, state.moving_exclude)
                                if v is not None and v.source is not None),
        )

    def _check_contrast(self, state: PairState, stats: dict) -> None:
        """Record whether the pair's intensities say the contrasts differ
        (`similarity.contrast_check`, after the affine stage, on the model grid), and warn (log
        and ``stats["warnings"]``) when a stage that ran compared such a pair by NCC."""
        from .methods.similarity import contrast_check

        if state.model_grid is None:
            return
        check = stats["contrast_check"] = contrast_check(*state.images(state.model_grid, state.antialias))
        ncc_stages = [name for name in ("affine", "refine") if name in stats["stages_run"]
                      and stats["metric"][name] == "ncc"]
        if check["differ"] and ncc_stages:
            message = (f"the images' intensities say their contrasts differ (moving-image means over the fixed "
                       f"image's intensity quartiles {check['quartile_means']}: not rising as for one contrast), "
                       f"yet the {' and '.join(ncc_stages)} compared them by NCC; use metric='mind' "
                       f"(--metric mind)")
            logger.warning(message)
            stats.setdefault("warnings", []).append(message)


def _with_metric(options, cls, metric: str, name: str):
    """`options` (None: none) with `metric` given; refused when they name another metric."""
    from .options import given_fields

    if options is not None and "metric" in given_fields(options) and options.metric != metric:
        raise ValueError(f"metric={metric!r} and {name}=...(metric={options.metric!r}) disagree; give one")
    return with_given(options, cls, metric=metric)


DEVICES = ("cpu", "cuda")


def _array_module(device: str):
    """numpy for "cpu"; cupy for "cuda", once it is sure to run (a clear error otherwise)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if device == "cpu":
        return np
    from .geometry import ops

    if not ops.build_info()["cuda"]:
        raise RuntimeError("device='cuda' needs smgic_rt._C built with CUDA (nvcc found at install time)")
    if not ops.cuda_available():
        raise RuntimeError("device='cuda' needs a CUDA GPU, and none answers here (ops.cuda_available() is False)")
    try:
        import cupy
    except ImportError as error:
        raise RuntimeError("device='cuda' keeps the pair's arrays in cupy: pip install cupy-cuda12x "
                           "(or the build for this machine's CUDA)") from error
    return cupy


def _describe(volume: io.Volume) -> dict:
    return {
        "source": volume.source,
        "shape": list(volume.shape),
        "voxel_sizes_mm": io.voxel_sizes(volume.affine).round(6).tolist(),
        "orientation": "".join(nib.aff2axcodes(volume.affine)),
    }
